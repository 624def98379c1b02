"""The MNIST demo model as a DiT: ComfyUI's own Qwen-Image transformer (joint text-image attention).

Same data layout and class token as the UNet demo model (`demo_mnist`): ComfyUI's pixel-space latent (3 equal
channels in [-1, 1], 28×28 digits padded to 32×32), the digit a single text token (one-hot over 10 digits + the
null slot, so joint_attention_dim 11), the denoised prediction projected onto grey images. Patch 2 makes a 16×16
grid of 256 image tokens (12 input features per token). Rectified flow as Qwen-Image is trained: x_σ = (1 − σ)·x0
+ σ·n, σ in [0, 1], timestep = σ (Qwen-Image scales it by 1000 itself), model output the velocity n − x0
(ComfyUI's ModelType.FLOW / CONST). Qwen-Image takes video-shaped latents (B, C, T, H, W); the subclass below
gives image latents a frame axis for the call, nothing else.
"""
from __future__ import annotations

import comfy.ldm.qwen_image.model
import comfy.model_base
import torch

from . import demo_mnist

KIND = "guidekit-mnist-dit"
CONFIG_KEY = "guidekit.dit_config"
# 8 dual-stream blocks, width 128 = 2 heads of 64 (4 heads of 32 ran 2× slower on 2 CPU cores), rotary axes
# (frame, h, w) summing to the head dim; 4.8 M parameters.
MNIST_DIT: dict = {
    "image_model": "qwen_image", "patch_size": 2, "in_channels": 12, "out_channels": 3, "num_layers": 8,
    "attention_head_dim": 64, "num_attention_heads": 2, "joint_attention_dim": demo_mnist.CONTEXT_DIM,
    "pooled_projection_dim": demo_mnist.CONTEXT_DIM, "axes_dims_rope": [16, 24, 24],
}


class MNISTQwenImage(comfy.ldm.qwen_image.model.QwenImageTransformer2DModel):
    """Qwen-Image's transformer on image latents (B, C, H, W): a frame axis of 1 for the call."""

    def forward(self, x, timestep, context, *args, **kwargs):
        if x.ndim == 4:
            return super().forward(x.unsqueeze(2), timestep, context, *args, **kwargs).squeeze(2)
        return super().forward(x, timestep, context, *args, **kwargs)


class MNISTDiTConfig(demo_mnist.MNISTDemoConfig):
    """Rectified flow with σ = timestep in [0, 1] (multiplier 1, no shift)."""
    sampling_settings = {"multiplier": 1.0, "shift": 1.0}


class MNISTDiTModel(demo_mnist.MNISTDemoModel):
    """The DiT inside ComfyUI's BaseModel (FLOW), with the demo model's grey projection of the denoised image."""

    def __init__(self, model_config, device=None):
        super().__init__(model_config, model_type=comfy.model_base.ModelType.FLOW, device=device,
                         unet_model=MNISTQwenImage)


def build_model(dit_config: dict | None = None, device: torch.device | None = None) -> MNISTDiTModel:
    """The MNIST DiT inside ComfyUI's model wrapper (weights uninitialised: load or initialise them)."""
    config = MNISTDiTConfig({**MNIST_DIT, **(dit_config or {}), "dtype": torch.float32})
    config.set_inference_dtype(torch.float32, None)
    return MNISTDiTModel(config, device=device or torch.device("cpu"))
