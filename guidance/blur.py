"""Separable Gaussian blur over 2D grids, and the token-grid shape of an attention layer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel_1d(size: int, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised Gaussian sampled at the integer offsets linspace(-(k-1)/2, (k-1)/2, k)."""
    half = (size - 1) / 2
    x = torch.linspace(-half, half, size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return (pdf / pdf.sum()).to(dtype)


def gaussian_blur_2d(img: torch.Tensor, kernel_h: int, kernel_w: int, sigma: float) -> torch.Tensor:
    """Blur (B, C, H, W) with a separable Gaussian, reflect padding, odd kernel sizes ≤ 2·side − 1."""
    if kernel_h % 2 == 0 or kernel_w % 2 == 0:
        raise ValueError(f"kernel sizes must be odd, got {kernel_h}×{kernel_w}")
    channels = img.shape[1]
    kh = gaussian_kernel_1d(kernel_h, sigma, img.dtype).to(img.device).view(1, 1, kernel_h, 1)
    kw = gaussian_kernel_1d(kernel_w, sigma, img.dtype).to(img.device).view(1, 1, 1, kernel_w)
    ph, pw = kernel_h // 2, kernel_w // 2
    out = F.pad(img, (pw, pw, ph, ph), mode="reflect") if (ph or pw) else img
    out = F.conv2d(out, kh.expand(channels, 1, kernel_h, 1), groups=channels)
    return F.conv2d(out, kw.expand(channels, 1, 1, kernel_w), groups=channels)


def token_grid(n_tokens: int, latent_h: int, latent_w: int) -> tuple[int, int]:
    """(h, w) of an attention layer's token grid: the latent halved k times (rounding up), h·w = n_tokens.

    Exact for UNet levels (stride-2 convs pad odd sides) and for patch-2 DiTs; works for any aspect ratio.
    """
    for k in range(8):
        h, w = math.ceil(latent_h / 2 ** k), math.ceil(latent_w / 2 ** k)
        if h * w == n_tokens:
            return h, w
    raise ValueError(f"{n_tokens} tokens do not form a grid of a {latent_h}×{latent_w} latent halved 0-7 times")
