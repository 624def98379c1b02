"""Random augmentation of the guidance network's input (Shen et al. 2024, after DiffAugment, Zhao et al. 2020).

Differentiable colour / translation / resize / cutout on [0, 1] images; the guidance loss is averaged over
the copies so its gradient follows what the copies agree on, not one network's adversarial direction.
Magnitudes are the official ones (brightness ±0.5 and the others on [−1, 1] images).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "resize", "cutout")


def _uniform(n: int, low: float, high: float, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return (torch.rand(n, 1, 1, 1, generator=gen) * (high - low) + low).to(like)


def color(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Brightness ±0.5, saturation ×[0, 2], contrast ×[0.5, 1.5] (DiffAugment on [−1, 1] images)."""
    n = x.shape[0]
    y = x * 2 - 1
    y = y + _uniform(n, -0.5, 0.5, gen, y)
    mean = y.mean(1, keepdim=True)
    y = (y - mean) * _uniform(n, 0.0, 2.0, gen, y) + mean
    mean = y.mean((1, 2, 3), keepdim=True)
    y = (y - mean) * _uniform(n, 0.5, 1.5, gen, y) + mean
    return (y + 1) / 2


def affine(x: torch.Tensor, gen: torch.Generator, shift: float, zoom: tuple[float, float]) -> torch.Tensor:
    """Translation by up to `shift` of the size and resize by a factor in `zoom`, zero outside (bilinear)."""
    n = x.shape[0]
    s = torch.empty(n).uniform_(*zoom, generator=gen)
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift * 2       # grid units: the image spans [−1, 1]
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([1 / s, zero, t[:, 0]], 1), torch.stack([zero, 1 / s, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of `ratio` of the size per image (DiffAugment cutout)."""
    n, _, h, w = x.shape
    ch, cw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    top = torch.randint(0, h - ch + 1, (n,), generator=gen)
    left = torch.randint(0, w - cw + 1, (n,), generator=gen)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    hole = ((rows >= top.view(n, 1, 1)) & (rows < (top + ch).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1)) & (cols < (left + cw).view(n, 1, 1)))
    return x * (~hole).unsqueeze(1).to(x)


def augment(images: torch.Tensor, copies: int, gen: torch.Generator,
            policy: tuple[str, ...] = POLICIES) -> torch.Tensor:
    """`copies` augmented copies of each image, copy-major: (copies·B, C, H, W)."""
    unknown = set(policy) - set(POLICIES)
    if unknown:
        raise ValueError(f"unknown augmentation {sorted(unknown)}; choose from {POLICIES}")
    x = images.repeat(copies, 1, 1, 1)
    if "color" in policy:
        x = color(x, gen)
    if "translation" in policy or "resize" in policy:
        x = affine(x, gen, 1 / 8 if "translation" in policy else 0.0, (0.8, 1.2) if "resize" in policy else (1.0, 1.0))
    if "cutout" in policy:
        x = cutout(x, gen)
    return x


def mean_over_copies(losses: torch.Tensor, copies: int) -> torch.Tensor:
    """Per-image loss from the losses of its copies (copy-major layout of `augment`)."""
    return losses.reshape(copies, -1).mean(0)
