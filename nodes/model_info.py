"""What the frontend needs to know about a model file without loading its weights.

The layer picker and the schedule view ask about the checkpoint (or diffusion model, or MNIST demo
weights) that feeds a GuideKit node. The file's safetensors header gives every tensor's name and shape;
ComfyUI's own model detection reads those, and the diffusion model is built on the meta device (no
memory, no weights), so the attention layers and the noise schedule are the real ones of that file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import comfy.model_detection
import comfy.samplers
import torch
from safetensors import safe_open

from . import files
from .layers import Architecture, architecture_of, format_layers, is_default, parse_layers
from .registrar import sigma_range_of

NODE = "GuideKit model info"
MAX_SIGMAS = 1000               # the schedule view draws at most this many steps (0.06 s for 'normal' on 2 cores)
# loader node → (model folder, widget holding the file name); the frontend walks MODEL links up to one
LOADERS = {"CheckpointLoaderSimple": ("checkpoints", "ckpt_name"),
           "CheckpointLoader": ("checkpoints", "ckpt_name"),
           "UNETLoader": ("diffusion_models", "unet_name"),
           "GuideKitMNISTLoader": ("guidekit_mnist", "weights")}
FOLDERS = {folder for folder, _ in LOADERS.values()} | {"unet"}      # "unet": the legacy diffusion_models name
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@dataclass(frozen=True)
class ModelDescription:
    family: str                  # "unet" | "flux" | "mmdit" | "none" (no reachable self-attention)
    model_type: str              # the diffusion model's class
    layers: tuple[str, ...]      # every self-attention layer, each in the layer syntax
    default_layers: str
    default_sag_layer: str
    model_sampling: object       # ComfyUI's model_sampling of this model (schedule, percent_to_sigma)
    arch: Architecture | None = None

    def node_defaults(self) -> dict[str, str]:
        """What 'default' means in each node whose default is not PAG's (TPG, STG: the references'; NAG: all; SEG,
        Degraded Model: the reference's layer or the middle block)."""
        if self.arch is None:
            return {}
        from .stg import default_layers as stg_default
        from .tpg import default_layers as tpg_default
        return {"GuideKitTPG": tpg_default(self.arch), "GuideKitSTG": stg_default(self.arch),
                "GuideKitNAG": format_layers(self.arch.layers), "GuideKitSEG": self.arch.default_block,
                "GuideKitDegradedModel": self.arch.default_block}

    def to_json(self) -> dict:
        return {"family": self.family, "model_type": self.model_type, "layers": list(self.layers),
                "default_layers": self.default_layers, "default_sag_layer": self.default_sag_layer,
                "node_defaults": self.node_defaults(),
                "sigma_min": float(self.model_sampling.sigma_min), "sigma_max": float(self.model_sampling.sigma_max)}

    def selection(self, text: str, node: str = "") -> dict:
        """What a layers widget's text selects on this model (the nodes' own parser), or its error; `node`
        (a node id) says whose 'default' it is."""
        if self.arch is None:
            return {"selected": [], "selected_error": f"{self.model_type} has no self-attention GuideKit can reach"}
        if is_default(text) and node in self.node_defaults():
            text = self.node_defaults()[node]
        try:
            chosen = parse_layers(text, self.arch, "layers")
        except ValueError as err:
            return {"selected": [], "selected_error": str(err)}
        return {"selected": [format_layers([layer]) for layer in chosen], "selected_text": format_layers(chosen)}


def resolve(folder: str, name: str) -> Path:
    """The file a loader's widget names, or ValueError (the same for a missing and a forbidden name)."""
    if folder == "guidekit_mnist":
        from .demo_mnist import WEIGHTS_DIR, weight_files
        return files.pack_file(WEIGHTS_DIR, weight_files(), name, NODE, "name")
    if folder not in FOLDERS:
        raise ValueError(f"{NODE}: folder {folder!r} is not one GuideKit describes; use one of {sorted(FOLDERS)}")
    return files.model_file(folder, name, NODE, "name")


def meta_state_dict(path: Path) -> tuple[dict, dict]:
    """Every tensor of a safetensors file as an empty meta tensor of its shape and dtype, plus the metadata."""
    if path.suffix not in (".safetensors", ".sft"):
        raise ValueError(f"{NODE}: {path.name} is not a safetensors file; only those can be described "
                         "without loading them")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            sd = {}
            for key in f.keys():
                piece = f.get_slice(key)
                sd[key] = torch.empty(piece.get_shape(), dtype=DTYPES.get(piece.get_dtype(), torch.float32),
                                      device="meta")
    except Exception as e:                      # the deserializer's own error types differ by version
        raise files.unreadable(NODE, "name", path.name, e) from e
    return sd, metadata


def describe_module(dm, model_sampling) -> ModelDescription:
    try:
        arch: Architecture | None = architecture_of(dm, NODE)
    except ValueError:
        arch = None
    if arch is None:
        return ModelDescription("none", type(dm).__name__, (), "", "", model_sampling)
    return ModelDescription(arch.family, arch.model_type, tuple(format_layers([layer]) for layer in arch.layers),
                            arch.default_layers, arch.default_sag_layer, model_sampling, arch)


@lru_cache(maxsize=16)
def _describe(path: str, mtime: float, folder: str) -> ModelDescription:
    if folder == "guidekit_mnist":         # weights on the meta device; the schedule is real (it holds numbers)
        from .demo_mnist import KIND, model_kinds
        meta = files.metadata_of(Path(path), NODE, "name", Path(path).name)
        _, key, build = model_kinds().get(meta.get("guidekit.kind"), model_kinds()[KIND])    # UNet or DiT
        model = build(json.loads(meta.get(key, "{}")), device=torch.device("meta"))
        return describe_module(model.diffusion_model, model.model_sampling)
    sd, metadata = meta_state_dict(Path(path))
    prefix = "" if folder in ("diffusion_models", "unet") else comfy.model_detection.unet_prefix_from_state_dict(sd)
    return describe_state_dict(sd, metadata, prefix, Path(path).name)


def describe_state_dict(sd: dict, metadata: dict, prefix: str, name: str) -> ModelDescription:
    """ComfyUI's detection on a (meta) state dict, and the detected model built on the meta device."""
    config = comfy.model_detection.model_config_from_unet(sd, prefix, use_base_if_no_match=True,
                                                          metadata=metadata)  # base: unknown widths, same blocks
    if config is None:
        raise ValueError(f"{NODE}: ComfyUI does not recognise the model in {name}")
    model = config.get_model(sd, prefix, device=torch.device("meta"))
    return describe_module(model.diffusion_model, model.model_sampling)


def describe(folder: str, name: str) -> ModelDescription:
    """The description of a model file in a ComfyUI model folder (cached per file and modification time)."""
    path = resolve(folder, name)
    return _describe(str(path), os.path.getmtime(path), folder)


def default_model_sampling():
    """SD1.5's schedule, shown when no loader is found upstream of the node."""
    import comfy.model_sampling

    class EpsDiscrete(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass
    return EpsDiscrete()


def schedule(model_sampling, scheduler: str, sampler: str, steps: int, denoise: float,
             start_percent: float, end_percent: float, sigma_start: float = -1.0, sigma_end: float = -1.0,
             node: str = NODE) -> dict:
    """The sampler's σ for each step, as KSampler computes them, and which steps the node's range covers."""
    if scheduler not in comfy.samplers.SCHEDULER_HANDLERS:
        raise ValueError(f"{node}: unknown scheduler {scheduler[:40]!r}; "
                         f"one of {list(comfy.samplers.SCHEDULER_HANDLERS)}")
    if sampler not in comfy.samplers.KSampler.SAMPLERS:
        raise ValueError(f"{node}: unknown sampler {sampler[:40]!r}; one of {comfy.samplers.KSampler.SAMPLERS}")
    if not 1 <= steps <= MAX_SIGMAS:
        raise ValueError(f"{node}: steps must be between 1 and {MAX_SIGMAS}, got {steps}")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"{node}: denoise must be above 0 and at most 1, got {denoise}")
    if not (0.0 <= start_percent <= 1.0 and 0.0 <= end_percent <= 1.0):
        raise ValueError(f"{node}: start_percent and end_percent must be between 0 and 1")
    total = steps if denoise > 0.9999 else int(steps / denoise)
    if total > MAX_SIGMAS:
        raise ValueError(f"{node}: steps / denoise = {total} schedule steps; the schedule view computes at most "
                         f"{MAX_SIGMAS} (raise denoise or lower steps)")
    discard = sampler in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, total + int(discard))
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    sigmas = sigmas[-(steps + 1):]
    active_range = sigma_range_of(model_sampling, node, start_percent, end_percent, sigma_start, sigma_end)
    step_sigmas = [float(s) for s in sigmas[:-1]]        # the σ each step evaluates the model at
    return {"sigmas": [float(s) for s in sigmas], "active": [active_range.active(s) for s in step_sigmas],
            "sigma_high": min(active_range.sigma_high, 1e30), "sigma_low": active_range.sigma_low}
