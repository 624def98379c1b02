"""Smoothed Energy Guidance (Hong, NeurIPS 2024, arXiv 2408.00760): blur the self-attention queries.

Blurring the attention logits (G * QKᵀ) equals blurring the queries ((G * Q)Kᵀ) because the blur is
linear (Prop. 3.1), which avoids the O(N²) map. σ → ∞ replaces every query by the spatial mean, the
maximal-smoothing limit (Lemma 3.2). Guidance then uses the blurred pass as the negative branch.
"""
from __future__ import annotations

import math

import torch

from .blur import gaussian_blur_2d

INFINITE_SIGMA = 9999.0     # the official code's threshold: σ ≥ 9999 (and here σ ≤ 0) means σ → ∞


def is_infinite(sigma: float) -> bool:
    return sigma <= 0 or sigma >= INFINITE_SIGMA


def kernel_size(sigma: float, side: int) -> int:
    """Smallest odd integer ≥ 6σ + 1, clipped so reflect padding fits the side (official pipeline_seg.py)."""
    k = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    return min(k, side - (side % 2 - 1))


def blur_queries(q: torch.Tensor, height: int, width: int, sigma: float, frames: int = 1,
                 temporal_sigma: float = 0.0) -> torch.Tensor:
    """Blur queries (B, N, C) of a frames×h×w token grid over space, each frame on its own, and over time when
    `temporal_sigma` > 0; σ → ∞ gives each frame's spatial mean (with an infinite temporal σ, the clip's)."""
    b, n, c = q.shape
    if n != frames * height * width:
        raise ValueError(f"{n} query tokens do not fill a {frames}×{height}×{width} grid")
    if frames == 1 and not temporal_sigma:
        if is_infinite(sigma):
            return q.mean(dim=1, keepdim=True).expand(b, n, c)
        grid = q.transpose(1, 2).reshape(b, c, height, width)
        blurred = gaussian_blur_2d(grid, kernel_size(sigma, height), kernel_size(sigma, width), sigma)
        return blurred.reshape(b, c, n).transpose(1, 2)
    x = q.reshape(b * frames, height * width, c)
    x = blur_queries(x, height, width, sigma).reshape(b, frames, height * width, c)
    if temporal_sigma and frames > 1:                    # the same Gaussian along the frame axis
        if is_infinite(temporal_sigma):
            x = x.mean(dim=1, keepdim=True).expand_as(x)
        else:
            size = kernel_size(temporal_sigma, frames)
            seq = x.permute(0, 2, 3, 1).reshape(b, height * width * c, frames, 1)
            x = gaussian_blur_2d(seq, size, 1, temporal_sigma).reshape(b, height * width, c, frames).permute(0, 3, 1, 2)
    return x.reshape(b, n, c)


def blur_image_queries(q: torch.Tensor, height: int, width: int, sigma: float, frames: int = 1,
                       temporal_sigma: float = 0.0) -> torch.Tensor:
    """SEG on (B, heads, L, d) queries whose last frames·h·w tokens are the image grid (joint DiT attention).

    Only image queries are blurred, each head's channels separately; text queries are left as they are.
    """
    b, heads, length, d = q.shape
    n = frames * height * width
    image = q[:, :, length - n:].permute(0, 2, 1, 3).reshape(b, n, heads * d)
    blurred = blur_queries(image, height, width, sigma, frames, temporal_sigma)
    blurred = blurred.reshape(b, n, heads, d).permute(0, 2, 1, 3)
    return torch.cat([q[:, :, :length - n], blurred], dim=2)
