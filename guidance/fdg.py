"""Frequency-Decoupled Guidance (Sadat et al. 2025, arXiv 2506.19713): CFG per level of a Laplacian pyramid.

The conditional and unconditional predictions are split into frequency bands; each band gets its own
guidance scale (large for the high frequencies, which carry detail; small for the low ones, which carry
colour and layout and lose diversity and saturate under strong CFG); the pyramid is then rebuilt. The
pyramid is kornia's (5×5 binomial blur, reflect border, bilinear resampling), which the paper's Algorithm 2
and diffusers' guider use; written out here so the pack needs no kornia. Video latents (B, C, T, H, W) are
split frame by frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _blur(x: torch.Tensor) -> torch.Tensor:
    """5×5 binomial blur (the outer product of [1 4 6 4 1]/16) with reflected borders, per channel."""
    b, c, h, w = x.shape
    kernel = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device) / 16.0
    flat = x.reshape(b * c, 1, h, w)
    mode = "reflect" if min(h, w) > 2 else "replicate"          # reflect needs a border of 2 inside the image
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode=mode), kernel.view(1, 1, 1, 5))
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode=mode), kernel.view(1, 1, 5, 1))
    return flat.reshape(b, c, h, w)


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(_blur(x), size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear", align_corners=False)


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear to `size` (twice the size for even sides, as kornia's pyrup), then the blur."""
    return _blur(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Bands from the highest frequency to the lowest; the last is the coarsest Gaussian level itself."""
    gaussian = [x]
    for _ in range(levels - 1):
        gaussian.append(_down(gaussian[-1]))
    bands = [fine - _up(coarse, fine.shape[-2:]) for fine, coarse in zip(gaussian, gaussian[1:])]
    return [*bands, gaussian[-1]]


def rebuild(bands: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of laplacian_pyramid (exact: each band is the residual against the same upsampling)."""
    out = bands[-1]
    for band in reversed(bands[:-1]):
        out = _up(out, band.shape[-2:]) + band
    return out


def max_levels(height: int, width: int) -> int:
    """The most levels a (height, width) grid supports: the coarsest level keeps at least 2×2."""
    levels = 1
    while min(height, width) >> levels >= 2:
        levels += 1
    return levels


def level_scales(high: float, low: float, levels: int) -> list[float]:
    """One scale per band, highest frequency first: `high`, then linearly down to `low` at the coarsest."""
    if levels == 1:
        return [low]
    return [high + (low - high) * i / (levels - 1) for i in range(levels)]


def _parallel_weighted(shift: torch.Tensor, cond: torch.Tensor, weight: float) -> torch.Tensor:
    """weight·(shift ∥ cond) + (shift ⟂ cond), per sample, in float64 (the paper's Algorithm 2 projection)."""
    dims = tuple(range(1, shift.ndim))
    unit = F.normalize(cond.double().flatten(1), dim=1).reshape(cond.shape)
    parallel = (shift.double() * unit).sum(dim=dims, keepdim=True) * unit
    return (weight * parallel + (shift.double() - parallel)).to(shift.dtype)


def fdg(cond: torch.Tensor, uncond: torch.Tensor, scales: list[float], parallel_weight: float = 1.0) -> torch.Tensor:
    """u_i + w_i·(c_i − u_i) on every band i of the two predictions' pyramids, rebuilt (scales high → low)."""
    # Sadat et al. 2025, Algorithm 2: pred = Σ_i up(u_i + w_i·Δ_i), Δ_i = c_i − u_i (optionally parallel-weighted)
    if cond.ndim == 5:                                        # (B, C, T, H, W): each frame on its own
        b, c, t, h, w = cond.shape
        flat = [p.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) for p in (cond, uncond)]
        return fdg(*flat, scales, parallel_weight).reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)
    guided = []
    for c_band, u_band, w in zip(laplacian_pyramid(cond, len(scales)), laplacian_pyramid(uncond, len(scales)), scales):
        shift = c_band - u_band
        if parallel_weight != 1.0:
            shift = _parallel_weighted(shift, c_band, parallel_weight)
        guided.append(u_band + w * shift)
    return rebuild(guided)
