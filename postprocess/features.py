"""Feature spaces for the neighbour search: raw values, or an open_clip image encoder (pooled or mean patch).

Zhao & Schwing find the mean of an encoder's patch tokens the best space for images (DINOv2 on
CIFAR-10), ahead of the pooled token and raw pixels. Any open_clip vision transformer gives both here.
Features are computed in batches (with a progress callback) and can be cached on disk under a key
hashed from everything they depend on (`cached`), so a rerun or another process skips the encoder.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..guidance.losses import prepare

POOLS = ("pooled", "mean-patch")


def cache_key(*parts) -> str:
    """sha256 over the parts: tensors by their float32 bytes and shape, anything else by its JSON."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            x = part.detach().float().contiguous().cpu()
            h.update(json.dumps(list(x.shape)).encode())
            h.update(x.numpy().reshape(-1).view(np.uint8))
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached(folder: Path | None, key: str, compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """(features, were cached): `folder`/KEY.npy when it exists, else compute() written there (None: no cache)."""
    if folder is None:
        return compute(), False
    path = Path(folder) / f"{key}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path, allow_pickle=False)), True
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{key}.{os.getpid()}.tmp.npy")
    np.save(tmp, out.detach().float().cpu().numpy(), allow_pickle=False)
    os.replace(tmp, path)
    return out, False


def raw_features(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).float()


@torch.no_grad()
def open_clip_features(visual: torch.nn.Module, images: torch.Tensor, image_size: tuple[int, int],
                       mean: tuple, std: tuple, pool: str = "mean-patch", batch: int = 64,
                       progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Features (N, D) of images (N, 3, H, W) in [0, 1] from an open_clip vision tower, `batch` images at a time;
    `progress(n)` after each batch with the n images it held."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if pool == "mean-patch" and not hasattr(visual, "output_tokens"):
        raise ValueError(f"{type(visual).__name__} has no patch tokens; use pool='pooled' "
                         "or a vision transformer (ViT-*)")
    device = next(visual.parameters()).device
    previous = getattr(visual, "output_tokens", None)
    out = []
    try:
        if previous is not None:
            visual.output_tokens = pool == "mean-patch"
        for i in range(0, images.shape[0], batch):
            y = visual(prepare(images[i:i + batch].to(device).float().clamp(0, 1), image_size, mean, std))
            out.append((y[1].mean(dim=1) if pool == "mean-patch" else y).float().cpu())
            if progress is not None:
                progress(out[-1].shape[0])
    finally:
        if previous is not None:
            visual.output_tokens = previous
    return torch.cat(out)
