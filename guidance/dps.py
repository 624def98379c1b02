"""DPS (Chung et al., ICLR 2023): gradient of the residual norm (not its square) through the denoiser."""
from __future__ import annotations

import torch


def dps_objective(loss: torch.Tensor) -> torch.Tensor:
    """‖y − A(x0|t)‖₂ from a squared-residual loss: DPS steps on the norm (guided_diffusion PosteriorSampling)."""
    return loss.clamp(min=0).sqrt()


def dps_change(grad_xt: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """Chung et al. Alg. 1: x_{t−1} = DDPM_step(x_t) − ζ·∇_{x_t}‖y − A(x0|t)‖; returns the change of x_{t−1}."""
    return -zeta * grad_xt
