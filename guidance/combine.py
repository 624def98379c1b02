"""The one rule most guidance methods share, in denoised (x0) space (see ARCHITECTURE.md).

    out = base + Σ_i s_i · (D_pos_i − D_neg_i)

CFG, PAG, SEG, SAG, ICG, TSG, Autoguidance and SIMS differ only in how the negative branch D_neg is
produced; the scale convention is the additive one (s = 0 means no guidance; the "1+s" papers use
g = 1 + s). For an eps-model D = x − σ·eps, so the same rule holds term by term in eps space.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

Term = tuple[float, torch.Tensor, torch.Tensor]   # (scale, D_pos, D_neg)


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: D_u + w·(D_c − D_u) (Ho & Salimans 2022, eq. 6)."""
    return uncond + scale * (cond - uncond)


def extrapolate(base: torch.Tensor, terms: Sequence[Term]) -> torch.Tensor:
    """base + Σ s·(pos − neg); a term whose scale is 0 costs nothing and changes nothing."""
    out = base
    for scale, pos, neg in terms:
        if scale != 0.0:
            out = out + scale * (pos - neg)
    return out


def rescale(guided: torch.Tensor, reference: torch.Tensor, phi: float) -> torch.Tensor:
    """Match guided's per-sample std to reference's, blended by phi (Lin et al. 2023, Alg. 2, eq. 15-16).

    Pass D-space tensors relative to the input (x − D), as diffusers and ComfyUI's RescaleCFG do with eps.
    """
    if phi == 0.0:
        return guided
    dims = tuple(range(1, guided.ndim))
    std_ref = reference.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True).clamp_min(torch.finfo(guided.dtype).tiny)
    return phi * guided * (std_ref / std_guided) + (1.0 - phi) * guided
