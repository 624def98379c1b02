"""Demo nodes: GuideKit's own MNIST diffusion model (trained on CPU, shipped in the pack).

The model is ComfyUI's UNet (self- and cross-attention blocks, so every attention hook applies) in
ComfyUI's pixel-space latent layout (3 equal channels in [-1, 1], as Chroma Radiance), EPS prediction
with SD's discrete schedule. The class reaches it through cross-attention on one token: a one-hot over
10 digits + a null slot (a one-hot times the learned key/value projections is a learned class
embedding, the null column the learned unconditional token). ComfyUI's checkpoint loaders cannot
detect such a model, hence this loader; everything else in a workflow stays standard ComfyUI.
"""
from __future__ import annotations

import json
from pathlib import Path

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import torch
from comfy_api.latest import io

from . import files
from .base import GuideKitNode

CATEGORY = "GuideKit/demo"
LOADER_NODE = "GuideKit MNIST Demo Loader"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "weights"
KIND = "guidekit-mnist-unet"
NULL = 10                       # index of the unconditional token in the one-hot
CONTEXT_DIM = 11

MNIST_UNET: dict = {
    "use_checkpoint": False, "image_size": 16, "use_spatial_transformer": True, "legacy": False,
    "in_channels": 3, "out_channels": 3, "adm_in_channels": None, "use_temporal_attention": False,
    "use_temporal_resblock": False, "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1],
    "transformer_depth": [0, 1], "transformer_depth_middle": 1, "transformer_depth_output": [0, 0, 1, 1],
    "context_dim": CONTEXT_DIM, "num_head_channels": 32, "use_linear_in_transformer": True,
}
# The native-resolution variant (28×28 digits padded to 32×32): one more level, so self-attention runs on
# 16×16 and 8×8 grids (and the middle block at 8×8). ComfyUI pops transformer_depth_output from its end.
NATIVE_UNET: dict = {
    "image_size": 32, "channel_mult": [1, 2, 2], "num_res_blocks": [1, 1, 1], "transformer_depth": [0, 1, 1],
    "transformer_depth_output": [0, 0, 1, 1, 1, 1],
}


class MNISTDemoConfig(comfy.supported_models_base.BASE):
    """Model config for ComfyUI's BaseModel: pixel-space latent, default EPS discrete schedule."""
    unet_config: dict = {}
    unet_extra_config: dict = {}
    latent_format = comfy.latent_formats.ChromaRadiance
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.float32]


class MNISTDemoModel(comfy.model_base.BaseModel):
    """ComfyUI's BaseModel whose denoised prediction is projected onto grey images (equal channels).

    The digits are grey, so E[x0|x] has equal channels; the mean over channels of the network's
    estimate is closer to it than the estimate itself (a projection onto a set holding the truth).
    Without it the three channels drift apart from independent per-channel noise (colour casts).
    Training (benchmarks/train_mnist.py) switches it off and fits the plain UNet output.
    """
    project_to_grey = True

    def _apply_model(self, x, t, *args, **kwargs):
        denoised = super()._apply_model(x, t, *args, **kwargs)
        return denoised.mean(1, keepdim=True).expand_as(denoised) if self.project_to_grey else denoised


def build_model(unet_config: dict | None = None, device: torch.device | None = None) -> MNISTDemoModel:
    """The MNIST UNet inside ComfyUI's model wrapper (weights uninitialised: load or initialise them)."""
    config = MNISTDemoConfig({**MNIST_UNET, **(unet_config or {}), "dtype": torch.float32})
    config.set_inference_dtype(torch.float32, None)
    return MNISTDemoModel(config, device=device or torch.device("cpu"))


def read_metadata(path: Path) -> dict:
    """A safetensors file's metadata (GuideKit weights record their config and provenance there)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def model_kinds() -> dict:
    """metadata kind → (what it is, the metadata key of its config, its build function): the UNet and the DiT."""
    from . import demo_mnist_dit  # the DiT variant (ComfyUI's Qwen-Image transformer)
    return {KIND: ("UNet", "guidekit.unet_config", build_model),
            demo_mnist_dit.KIND: ("DiT", demo_mnist_dit.CONFIG_KEY, demo_mnist_dit.build_model)}


def load_patcher(path: Path, node: str = "GuideKit MNIST Demo Loader", input_name: str = "weights"):
    """A ModelPatcher for a GuideKit MNIST weights file, UNet or DiT (its kind and config are in its metadata)."""
    meta = files.metadata_of(path, node, input_name, path.name)
    kinds = model_kinds()
    if meta.get("guidekit.kind") not in kinds:
        raise ValueError(f"{node}: input '{input_name}' = {path.name!r} is not a GuideKit MNIST UNet or DiT "
                         f"(metadata kind {meta.get('guidekit.kind')!r}; expected one of {sorted(kinds)})")
    what, key, build = kinds[meta["guidekit.kind"]]
    try:
        config = json.loads(meta.get(key, "{}"))
        if not isinstance(config, dict):
            raise TypeError(f"a JSON object expected, got {type(config).__name__}")
        model = build(config, device=comfy.model_management.unet_offload_device())
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{node}: input '{input_name}' = {path.name!r}: its '{key}' metadata does "
                         f"not build the MNIST {what} ({e})") from e
    state = files.tensors_of(path, node, input_name, path.name)
    try:
        missing, unexpected = model.diffusion_model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        missing, unexpected = [str(e).splitlines()[-1].strip()[:200]], []
    if missing or unexpected:
        raise ValueError(f"{node}: input '{input_name}' = {path.name!r}: weights do not fit the {what} config "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def pixel_space_vae():
    """ComfyUI's pixel-space 'VAE' (identity; decode maps [-1, 1] to [0, 1] images)."""
    return comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})


def digit_context(labels: list[int]) -> torch.Tensor:
    """Digits 0-9 or NULL → the one-hot cross-attention context (B, 1, 11)."""
    return torch.nn.functional.one_hot(torch.tensor(labels, dtype=torch.int64), CONTEXT_DIM).float().unsqueeze(1)


DEFAULT_WEIGHTS = "mnist-main-28.safetensors"    # the loader's default (first) option: the native 28×28 model


def weight_files() -> list[str]:
    """The MNIST UNets in the pack's weights folder, the default first (a combo's first option is its default)."""
    names = sorted(p.name for p in WEIGHTS_DIR.glob("mnist-*.safetensors")
                   if not p.name.startswith("mnist-classifier")) if WEIGHTS_DIR.is_dir() else []
    return sorted(names, key=lambda name: name != DEFAULT_WEIGHTS)


def parse_digits(node: str, text: str) -> list[int]:
    """'0123456789' → one digit per sample; 'none' → the unconditional (null) token."""
    cleaned = text.replace(" ", "").replace(",", "").lower()
    if cleaned in ("none", "null", "uncond"):
        return [NULL]
    if not cleaned or not cleaned.isdigit():
        raise ValueError(f"{node}: input 'digits' = {text!r} is not a list of digits; write e.g. '7' or "
                         "'0123456789' (one digit per image of the batch) or 'none' for the unconditional token")
    return [int(c) for c in cleaned]


class MNISTDemoLoader(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitMNISTLoader", display_name=LOADER_NODE, category=CATEGORY,
            description="Loads GuideKit's own class-conditional MNIST diffusion model (pixel space, trained on CPU "
                        "by benchmarks/train_mnist.py) and the pixel-space VAE. Use with "
                        "EmptyChromaRadianceLatentImage (32×32 for the files named -28, -28-s1 and -28-s2: the native "
                        "28×28 digits padded; 16×16 for the others) and GuideKit MNIST Digits.",
            inputs=[io.Combo.Input("weights", options=weight_files() or [DEFAULT_WEIGHTS],
                                   tooltip="A weights file from the pack's benchmarks/weights folder: "
                                           "mnist-main-28 (default), its companions mnist-weak-28 / -uncond-28 / "
                                           "-sims-28 and the DiTs mnist-dit-28 / -28-s1 / -28-s2 (Qwen-Image "
                                           "architecture) take 32×32 latents; mnist-main and its mnist-weak / "
                                           "-uncond / -sims take 16×16.")],
            outputs=[io.Model.Output(tooltip="The MNIST diffusion model."),
                     io.Vae.Output(tooltip="The pixel-space VAE (grey digits as RGB).")],
        )

    @classmethod
    def execute(cls, weights: str) -> io.NodeOutput:
        path = files.pack_file(WEIGHTS_DIR, weight_files(), weights, LOADER_NODE, "weights")
        return io.NodeOutput(load_patcher(path), pixel_space_vae())


class MNISTDigits(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitMNISTDigits", display_name="GuideKit MNIST Digits", category=CATEGORY,
            description="Class conditioning for the MNIST demo model: one digit per image of the batch "
                        "(repeated to fill it), or 'none' for the learned unconditional token (the negative).",
            inputs=[io.String.Input("digits", default="0123456789",
                                    tooltip="Digits, one per image ('7', '0123456789'), or 'none' = unconditional.")],
            outputs=[io.Conditioning.Output(tooltip="One digit token per image, for KSampler.")],
        )

    @classmethod
    def execute(cls, digits: str) -> io.NodeOutput:
        labels = parse_digits("GuideKit MNIST Digits", digits)
        return io.NodeOutput([[digit_context(labels), {}]])
