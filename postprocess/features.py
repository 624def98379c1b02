"""Feature spaces for the neighbour search: raw values, or an open_clip image encoder (pooled or mean patch).

Zhao & Schwing find the mean of an encoder's patch tokens the best space for images (DINOv2 on
CIFAR-10), ahead of the pooled token and raw pixels. Any open_clip vision transformer gives both here.
"""
from __future__ import annotations

import torch

from ..guidance.losses import prepare

POOLS = ("pooled", "mean-patch")


def raw_features(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).float()


@torch.no_grad()
def open_clip_features(visual: torch.nn.Module, images: torch.Tensor, image_size: tuple[int, int],
                       mean: tuple, std: tuple, pool: str = "mean-patch", batch: int = 64) -> torch.Tensor:
    """Features (N, D) of images (N, 3, H, W) in [0, 1] from an open_clip vision tower."""
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
    finally:
        if previous is not None:
            visual.output_tokens = previous
    return torch.cat(out)
