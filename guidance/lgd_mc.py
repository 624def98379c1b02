"""LGD-MC (Song et al., ICML 2023): Monte-Carlo loss over x0|t + r_t·ε_i, a softer guess of p(y | x_t)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


def lgd_mc_objective(loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, ab: torch.Tensor, samples: int,
                     gen: torch.Generator) -> torch.Tensor:
    """Song et al. eq. 9: −log (1/n)Σᵢ exp(−ℓ(x0|t + r_t·εᵢ)), r_t = √(1 − ᾱ_t) (= σ/√(1 + σ²)); per image."""
    r = (1 - ab).sqrt()
    losses = []
    for _ in range(samples):
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        losses.append(loss_fn(x0 + r * noise))
    return -(torch.logsumexp(-torch.stack(losses), dim=0) - math.log(samples))


def lgd_change(grad_xt: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """The Monte-Carlo objective's gradient step on x_{t−1} (as DPS/FreeDoM, TFG methods/lgd.py)."""
    return -rho * grad_xt
