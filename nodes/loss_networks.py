"""Guidance networks for the loss nodes: open_clip models and user networks, from safetensors in model folders.

Everything loads outside inference mode, so the weights are ordinary tensors autograd can save: loss
guidance backpropagates through these networks while ComfyUI runs the prompt under torch.inference_mode.
Model folders: models/open_clip (open_clip checkpoints) and models/guidekit_networks (classifiers,
segmentation and sketch networks; the pack's demo MNIST classifier, benchmarks/weights/networks, is listed
there too).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import torch

from ..guidance import losses
from ..guidance.networks import BUILTIN
from . import files
from .demo_mnist import WEIGHTS_DIR

OPEN_CLIP_FOLDER = "open_clip"
NETWORK_FOLDER = "guidekit_networks"
NORMALIZATIONS = {"imagenet": (losses.IMAGENET_MEAN, losses.IMAGENET_STD), "clip": (losses.CLIP_MEAN, losses.CLIP_STD),
                  "[0,1]": ((0.0,), (1.0,)), "[-1,1]": ((0.5,), (0.5,))}


def register_model_folders() -> None:
    """models/open_clip and models/guidekit_networks (+ the pack's demo network), safetensors only."""
    for name, extra in ((OPEN_CLIP_FOLDER, None), (NETWORK_FOLDER, WEIGHTS_DIR / "networks")):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        if extra is not None and extra.is_dir():
            folder_paths.add_model_folder_path(name, str(extra))
        folder_paths.folder_names_and_paths[name][1].add(".safetensors")


def model_files(folder: str) -> list[str]:
    try:
        return folder_paths.get_filename_list(folder)
    except KeyError:
        return []


def _load_state(path: Path, node: str, input_name: str, name: str) -> dict:
    return files.tensors_of(path, node, input_name, name)


def _strict_load(module: torch.nn.Module, state: dict, node: str, input_name: str, name: str, arch: str) -> None:
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:                       # shapes that differ from the architecture's
        raise ValueError(f"{node}: input '{input_name}' = {name!r} does not fit architecture {arch!r} "
                         f"({str(e).splitlines()[-1].strip()[:200]}); pick the architecture the weights were "
                         "trained with") from e
    if missing or unexpected:
        raise ValueError(f"{node}: input '{input_name}' = {name!r} does not fit architecture {arch!r} "
                         f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}); pick the "
                         "architecture the weights were trained with")


def moved_outside_inference(module: torch.nn.Module, *to_args) -> torch.nn.Module:
    """module.to(*to_args) with inference mode off: ComfyUI runs nodes under torch.inference_mode, and a move
    made there (to the GPU: a real copy) turns the weights into inference tensors that autograd cannot save,
    so loss guidance would fail on the GPU only."""
    with torch.inference_mode(False):
        return module.to(*to_args)


# --------------------------------------------------------------------------------------------- open_clip

@dataclass
class OpenClip:
    """An open_clip model with its tokenizer and image preprocessing (size, mean, std)."""
    model: torch.nn.Module
    tokenizer: object
    image_size: tuple[int, int]
    mean: tuple
    std: tuple
    name: str

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        device = comfy.model_management.get_torch_device()
        moved_outside_inference(self.model, device)
        with torch.inference_mode(False), torch.no_grad():
            return self.model.encode_text(self.tokenizer(texts).to(device)).float()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] → embeddings; differentiable."""
        moved_outside_inference(self.model, images.device)
        x = losses.prepare(images, self.image_size, self.mean, self.std)
        return self.model.encode_image(x.to(next(self.model.parameters()).dtype)).float()


def _open_clip_arch(path: Path, architecture: str, node: str, name: str) -> tuple[str, dict | None]:
    import open_clip
    meta = files.metadata_of(path, node, "clip_name", name)
    if architecture.strip() and architecture.strip().lower() != "auto":
        return architecture.strip(), None
    if "open_clip.config" in meta:
        try:
            config = json.loads(meta["open_clip.config"])
        except ValueError as e:
            raise ValueError(f"{node}: input 'clip_name' = {name!r}: its 'open_clip.config' metadata is not JSON "
                             f"({e}); save the file again") from e
        if not isinstance(config, dict):
            raise ValueError(f"{node}: input 'clip_name' = {name!r}: its 'open_clip.config' metadata is not a "
                             "config object; save the file again")
        return meta.get("open_clip.arch", path.stem), config
    if "open_clip.arch" in meta:
        return meta["open_clip.arch"], None
    known = sorted((m for m in open_clip.list_models() if m.lower() in path.stem.lower()), key=len, reverse=True)
    if known:
        return known[0], None
    raise ValueError(f"{node}: cannot tell the open_clip architecture of {path.name!r} (no 'open_clip.arch' metadata, "
                     "no architecture name in the file name); set input 'architecture', e.g. 'ViT-B-16'")


def load_open_clip(name: str, architecture: str, node: str = "GuideKit OpenCLIP Loader") -> OpenClip:
    """Build the architecture (by open_clip name, or from a config in the file's metadata) and load the file."""
    import open_clip
    path = files.model_file(OPEN_CLIP_FOLDER, name, node, "clip_name")
    arch, config = _open_clip_arch(path, architecture, node, name)
    with torch.inference_mode(False):
        try:
            if config is not None:
                if "hf_model_name" in config.get("text_cfg", {}) or "timm_model_name" in config.get("vision_cfg", {}):
                    raise ValueError(f"{node}: {name!r} needs a Hugging Face / timm tower ({arch}), which a model "
                                     "folder cannot provide offline; use an open_clip CLIP architecture (ViT-*, RN*)")
                model = open_clip.CLIP(**config)
            else:
                model = open_clip.create_model(arch, pretrained=None, device="cpu")
        except (RuntimeError, TypeError, KeyError, AttributeError) as e:
            if config is not None:
                raise ValueError(f"{node}: input 'clip_name' = {name!r}: the open_clip config in its metadata does "
                                 f"not build a model ({e}); save the file again") from e
            raise ValueError(f"{node}: input 'architecture' = {arch!r} is not an open_clip model ({e}); "
                             "see open_clip.list_models()") from e
        _strict_load(model, _load_state(path, node, "clip_name", name), node, "clip_name", name, arch)
        model.eval().requires_grad_(False)
    context = (config or {}).get("text_cfg", {}).get("context_length", getattr(model, "context_length", 77))
    try:
        tokenizer = (open_clip.get_tokenizer(arch) if config is None
                     else open_clip.SimpleTokenizer(context_length=context))
    except Exception as e:  # HF tokenizers need a download, which a model folder cannot provide
        raise ValueError(f"{node}: the tokenizer of {arch!r} is not available offline ({e}); use an architecture "
                         "with open_clip's built-in tokenizer (ViT-*, RN*, convnext_*)") from e
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    return OpenClip(model, tokenizer, size, tuple(cfg.get("mean", losses.CLIP_MEAN)),
                    tuple(cfg.get("std", losses.CLIP_STD)), arch)


# ------------------------------------------------------------------------------------- user networks

@dataclass
class GuidanceNetwork:
    """A network on images: logits for classifiers / segmentation, a map for sketch extractors."""
    module: torch.nn.Module
    size: tuple[int, int] | None
    mean: tuple
    std: tuple
    channels: int
    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] → the network's main output; differentiable."""
        moved_outside_inference(self.module, images.device)
        out = self.module(losses.prepare(images, self.size, self.mean, self.std, self.channels))
        if isinstance(out, dict):                         # torchvision segmentation models
            out = out["out"]
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out


def _build(arch: str, num_classes: int | None, aux_loss: bool = False):
    kind, _, name = arch.partition(":")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if kind == "torchvision":
        import torchvision
        segmentation = name in torchvision.models.list_models(torchvision.models.segmentation)
        extra = {"weights_backbone": None, **({"aux_loss": True} if aux_loss else {})} if segmentation else {}
        return torchvision.models.get_model(name, weights=None, **extra, **kwargs)
    if kind == "timm":
        import timm
        return timm.create_model(name, pretrained=False, **kwargs)
    if kind == "guidekit" and name in BUILTIN:
        return BUILTIN[name](**kwargs)
    raise ValueError(f"unknown architecture {arch!r}")


def _head_size(module: torch.nn.Module, state: dict) -> int | None:
    """Classes of a checkpoint whose head differs from the default build (first dim of the mismatched tensors)."""
    own = module.state_dict()
    sizes = {v.shape[0] for k, v in state.items() if k in own and own[k].shape != v.shape and v.ndim >= 1}
    return sizes.pop() if len(sizes) == 1 else None


def _first_in_channels(module: torch.nn.Module) -> int:
    for sub in module.modules():
        if isinstance(sub, torch.nn.Conv2d):
            return sub.in_channels
    return 3


def load_network(name: str, architecture: str, normalization: str, input_size: int,
                 node: str = "GuideKit Guidance Network Loader") -> GuidanceNetwork:
    """Build the named architecture (torchvision:…, timm:…, guidekit:…), fit its head to the file, load it."""
    path = files.model_file(NETWORK_FOLDER, name, node, "network_name")
    meta = files.metadata_of(path, node, "network_name", name)
    if meta.get("guidekit.kind", "").endswith("unet") or "guidekit.unet_config" in meta:
        raise ValueError(f"{node}: input 'network_name' = {name!r} is a diffusion model, not a guidance network")
    arch = architecture.strip() if architecture.strip().lower() not in ("", "auto") else meta.get("guidekit.arch", "")
    if not arch:
        raise ValueError(f"{node}: {name!r} has no 'guidekit.arch' metadata; set input 'architecture' to e.g. "
                         "'torchvision:resnet18', 'torchvision:lraspp_mobilenet_v3_large', 'timm:efficientnet_b0' "
                         "or 'guidekit:digit-cnn'")
    with torch.inference_mode(False):
        state = _load_state(path, node, "network_name", name)
        try:
            aux = any(k.startswith("aux_classifier.") for k in state)     # torchvision DeepLabV3 / FCN files
            module = _build(arch, None, aux)
            classes = _head_size(module, state)
            if classes is not None:
                module = _build(arch, classes, aux)
        except (ValueError, RuntimeError, KeyError) as e:
            raise ValueError(f"{node}: input 'architecture' = {arch!r} cannot be built ({e}); use "
                             "torchvision:<name>, timm:<name> or guidekit:digit-cnn") from e
        _strict_load(module, state, node, "network_name", name, arch)
        module.eval().requires_grad_(False)
    norm = normalization if normalization != "auto" else meta.get("guidekit.normalization", "imagenet")
    if norm not in NORMALIZATIONS:
        raise ValueError(f"{node}: input 'normalization' = {norm!r}; choose from {sorted(NORMALIZATIONS)}")
    size = input_size or int(meta.get("guidekit.input_size", 0)) or None
    mean, std = NORMALIZATIONS[norm]
    channels = _first_in_channels(module)
    if channels not in (1, 3):
        raise ValueError(f"{node}: {name!r} takes {channels} input channels; guidance networks take grey (1) or "
                         "RGB (3) images")
    return GuidanceNetwork(module, (size, size) if size else None, mean, std, 1 if channels == 1 else 3, name)
