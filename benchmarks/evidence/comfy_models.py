"""Host side of the harness: import ComfyUI in-process and wrap the trained denoisers as ModelPatchers."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from guidekit.cli.inprocess import import_comfy  # noqa: E402

import_comfy()
import comfy.latent_formats  # noqa: E402
import comfy.model_base  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models_base  # noqa: E402
import comfy.utils  # noqa: E402

from guidekit.nodes import demo_mnist  # noqa: E402  (the pack, linked by scripts/host.py)

from .networks import TOY_CONTEXT, ToyDenoiser  # noqa: E402

TOY_SIGMA = {"sigma_min": 0.002, "sigma_max": 10.0, "sigma_data": 0.5}   # EDM toy (σ_data 0.5)


class PointLatent(comfy.latent_formats.LatentFormat):
    """2D points as a (N, 2, 1, 1) latent, unscaled."""
    latent_channels = 2
    scale_factor = 1.0


class ToyConfig(comfy.supported_models_base.BASE):
    unet_config: dict = {}
    unet_extra_config: dict = {}
    latent_format = PointLatent
    sampling_settings = TOY_SIGMA
    supported_inference_dtypes = [torch.float32]


def toy_base_model(hidden: int, layers: int, context: int = TOY_CONTEXT):
    """ComfyUI's BaseModel (EDM preconditioning, σ_data 0.5) around a ToyDenoiser (context 0: no class input)."""
    config = ToyConfig({"hidden": hidden, "layers": layers, "context": context})
    config.set_inference_dtype(torch.float32, None)
    return comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EDM,
                                      device=torch.device("cpu"), unet_model=ToyDenoiser)


def toy_patcher(path: Path):
    """ModelPatcher for a trained 2D denoiser file (its width, depth and class input are in its metadata)."""
    arch = json.loads(demo_mnist.read_metadata(path)["guidekit.arch"])
    model = toy_base_model(arch["hidden"], arch["layers"], arch.get("context", TOY_CONTEXT))
    model.diffusion_model.load_state_dict(comfy.utils.load_torch_file(str(path)))
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def mnist_patcher(path: Path):
    return demo_mnist.load_patcher(path)
