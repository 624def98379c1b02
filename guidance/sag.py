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
    return saliency_mask(attn.mean(dim=1).sum(dim=1), height, width, threshold)


def saliency_mask(column_sum: torch.Tensor, height: int, width: int, threshold: float = 1.0,
                  frames: int = 1) -> torch.Tensor:
    """(B, N) key saliency (attention received, mean over heads) → mask of keys above threshold:
    (B, 1, h, w), or (B, 1, frames, h, w) for a video grid."""
    b, n = column_sum.shape
    if n != frames * height * width:
        raise ValueError(f"{n} attention tokens do not fill a {frames}×{height}×{width} grid")
    shape = (b, 1, height, width) if frames == 1 else (b, 1, frames, height, width)
    return (column_sum > threshold).to(column_sum.dtype).reshape(shape)


def key_saliency(q: torch.Tensor, k: torch.Tensor, n_image: int, chunk: int = 1024) -> torch.Tensor:
    """Column sums of the image→image attention map, mean over heads: (B, heads, L, d) → (B, n_image).

    The image tokens are the last n_image; each image query's attention over image keys is renormalised
    to sum to 1, so the mean column sum is 1 as in pure self-attention (where this is the plain map).
    Queries are processed in chunks, so the N×N map is never held whole.
    """
    scale = q.shape[-1] ** -0.5
    q_img = q[:, :, -n_image:].float()
    k_img = k[:, :, -n_image:].float().transpose(-1, -2)
    total = torch.zeros(q.shape[0], q.shape[1], n_image, dtype=torch.float32, device=q.device)
    for start in range(0, n_image, chunk):
        total += ((q_img[:, :, start:start + chunk] @ k_img) * scale).softmax(dim=-1).sum(dim=2)
    return total.mean(dim=1)


def degrade(x0: torch.Tensor, mask: torch.Tensor, blur_sigma: float, kernel: int = 9) -> torch.Tensor:
    """x̄0 = blur(x0)·M + x0·(1 − M), M upsampled (nearest) to x0's size (ADM `attention_masking`).

    Video x0 (B, C, T, H, W) is blurred frame by frame with a (B, 1, t, h, w) mask. The kernel shrinks on
    sides too small for it, so tiny latents degrade instead of failing.
    """
    if x0.ndim == 5:
        b, c, frames, h, w = x0.shape
        mask = mask if mask.ndim == 5 else mask.unsqueeze(2)         # one frame (image models with 5-D latents)
        m = F.interpolate(mask, size=(frames, h, w), mode="nearest").to(x0.dtype)
        per_frame = x0.transpose(1, 2).reshape(b * frames, c, h, w)
        blurred = gaussian_blur_2d(per_frame, min(kernel, 2 * h - 1), min(kernel, 2 * w - 1), blur_sigma)
        blurred = blurred.reshape(b, frames, c, h, w).transpose(1, 2)
        return blurred * m + x0 * (1 - m)
    h, w = x0.shape[-2:]
    m = F.interpolate(mask, size=(h, w), mode="nearest").to(x0.dtype)
    blurred = gaussian_blur_2d(x0, min(kernel, 2 * h - 1), min(kernel, 2 * w - 1), blur_sigma)
    return blurred * m + x0 * (1 - m)
