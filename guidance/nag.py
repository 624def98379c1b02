"""Normalized Attention Guidance (Chen et al. 2025, arXiv 2505.21179): a negative prompt in attention space.

For every image token, the attention output under the positive context Z⁺ is extrapolated away from the
output under the negative context Z⁻, its L1 norm is capped at τ times Z⁺'s, and the result is blended back
into Z⁺. It works where CFG cannot: distilled and few-step models at cfg 1.
"""
from __future__ import annotations

import torch


def nag(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float) -> torch.Tensor:
    """(…, C) attention outputs → α·Ẑ + (1 − α)·Z⁺, Ẑ = Z̃·min(1, τ/r), Z̃ = s·Z⁺ − (s − 1)·Z⁻, r = ‖Z̃‖₁/‖Z⁺‖₁.

    `scale` is the official code's s (its φ + 1): s = 1 leaves Z⁺ unchanged. Norms are per token, over channels.
    """
    # Chen et al. 2025, Algorithm 1; ChenDarYen/ComfyUI-NAG utils.nag: z_pos·s − z_neg·(s − 1), L1 ratio capped at τ
    guided = z_pos * scale - z_neg * (scale - 1.0)
    norm_pos = z_pos.norm(p=1, dim=-1, keepdim=True).clamp_min(1e-6)
    norm_guided = guided.norm(p=1, dim=-1, keepdim=True).clamp_min(1e-6)
    ratio = norm_guided / norm_pos
    guided = guided * torch.where(ratio > tau, tau / ratio, torch.ones_like(ratio))
    return guided * alpha + z_pos * (1.0 - alpha)
