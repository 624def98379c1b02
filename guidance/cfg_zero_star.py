"""CFG-Zero* (Fan et al. 2025, arXiv 2503.18886): CFG with an optimized scale of the unconditional velocity,
and zero-init (the first steps of the ODE solver do not move the sample).

The paper and its code (github.com/WeichenFan/CFG-Zero-star) work on velocities v; ComfyUI's samplers on
denoised predictions D, where v ∝ x − D (flow: v = (x − D)/σ; the factor cancels below). So the rule is
applied to x − D and mapped back, never to D itself.
"""
from __future__ import annotations

import torch


def optimized_scale(v_cond: torch.Tensor, v_uncond: torch.Tensor) -> torch.Tensor:
    """s* = ⟨v_c, v_u⟩ / ‖v_u‖² per sample: the paper's optimized scale (its code adds 1e-8 to the norm)."""
    c, u = v_cond.flatten(1), v_uncond.flatten(1)
    scale = (c * u).sum(1) / (u.pow(2).sum(1) + 1e-8)
    return scale.reshape(-1, *[1] * (v_cond.ndim - 1))


def cfg_zero_star(v_cond: torch.Tensor, v_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """v = s*·v_u + w·(v_c − s*·v_u): CFG around the optimized unconditional velocity."""
    # Fan et al. 2025: noise_pred = uncond·s* + w·(cond − uncond·s*) (CFG-Zero-star, models/wan/wan_pipeline.py)
    scaled = optimized_scale(v_cond, v_uncond) * v_uncond
    return scaled + w * (v_cond - scaled)


def denoised_cfg_zero_star(x: torch.Tensor, d_cond: torch.Tensor, d_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """The same rule for denoised predictions: D = x − CFG-Zero*(x − D_c, x − D_u)."""
    return x - cfg_zero_star(x - d_cond, x - d_uncond, w)
