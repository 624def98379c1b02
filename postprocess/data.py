"""Training data from disk: a folder of images, or a tensor file (safetensors, ComfyUI's .latent included)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
TENSOR_SUFFIXES = {".safetensors", ".latent"}


def center_crop_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) → (N, C, *size): crop the centre to the target aspect, then an antialiased resize."""
    h, w = x.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if h * tw > w * th:                        # too tall
        ch = round(w * th / tw)
        x = x[..., (h - ch) // 2:(h - ch) // 2 + ch, :]
    elif h * tw < w * th:                      # too wide
        cw = round(h * tw / th)
        x = x[..., (w - cw) // 2:(w - cw) // 2 + cw]
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def load_image_folder(folder: Path, size: tuple[int, int] | None = None, limit: int | None = None) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1], sorted by name; `size` centre-crops and resizes every image to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return load_images(files, size)


def load_images(paths: list[Path], size: tuple[int, int] | None = None) -> torch.Tensor:
    """These image files as (N, 3, H, W) in [0, 1]; `size` (default: the first image's) by centre crop + resize."""
    images = []
    for path in paths:
        with Image.open(path) as im:
            x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        if size is None:
            size = tuple(x.shape[-2:])
        images.append(center_crop_resize(x, size))
    return torch.cat(images)


def load_tensor_file(path: Path) -> torch.Tensor:
    """The one tensor of a safetensors file, or 'latent_tensor' of a ComfyUI .latent (Save Latent node)."""
    state = load_file(str(path))
    if "latent_tensor" in state:
        return state["latent_tensor"].float()
    if len(state) != 1:
        raise ValueError(f"{path} holds {len(state)} tensors ({', '.join(list(state)[:4])}); "
                         "save the samples as one tensor")
    return next(iter(state.values())).float()


def load_samples(path: Path, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, bool]:
    """(samples, are_images): a folder → images in [0, 1]; a tensor file → its tensor as stored."""
    path = Path(path)
    if path.is_dir():
        return load_image_folder(path, size), True
    if path.suffix.lower() in TENSOR_SUFFIXES:
        return load_tensor_file(path), False
    raise ValueError(f"{path}: expected a folder of images or a tensor file ({', '.join(sorted(TENSOR_SUFFIXES))})")
