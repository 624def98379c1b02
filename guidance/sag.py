"""Self-Attention Guidance (Hong et al., ICCV 2023, arXiv 2210.00939): blur what attention focuses on.

The mask keeps keys that receive more than average attention (column sums of a row-stochastic map
average exactly 1); only there is the predicted x0 blurred, then re-noised and denoised again as the
negative branch (paper §4, eq. 25 with CFG: attention and degradation from the unconditional pass).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .blur import gaussian_blur_2d


def attention_mask(attn: torch.Tensor, height: int, width: int, threshold: float = 1.0) -> torch.Tensor:
    """(B, heads, N, N) attention → (B, 1, h, w) float mask of keys with mean-over-heads column sum > threshold."""
    b, _, n, _ = attn.shape
    if n != height * width:
        raise ValueError(f"{n} attention tokens do not fill a {height}×{width} grid")
    column_sum = attn.mean(dim=1).sum(dim=1)                        # (B, N keys)
    return (column_sum > threshold).to(attn.dtype).reshape(b, 1, height, width)


def degrade(x0: torch.Tensor, mask: torch.Tensor, blur_sigma: float, kernel: int = 9) -> torch.Tensor:
    """x̄0 = blur(x0)·M + x0·(1 − M), M upsampled (nearest) to x0's size (ADM `attention_masking`).

    The kernel shrinks on sides too small for it, so tiny latents degrade instead of failing.
    """
    h, w = x0.shape[-2:]
    m = F.interpolate(mask, size=(h, w), mode="nearest").to(x0.dtype)
    blurred = gaussian_blur_2d(x0, min(kernel, 2 * h - 1), min(kernel, 2 * w - 1), blur_sigma)
    return blurred * m + x0 * (1 - m)
