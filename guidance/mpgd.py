"""MPGD (He et al., ICLR 2024): a gradient step on x0|t alone, no backpropagation through the denoiser."""
from __future__ import annotations

import torch


def mpgd_x0_change(grad_x0: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """He et al. eq. 8: x0|t ← x0|t − ρ_t·∇_{x0} ℓ(x0|t), then the DDIM step from the new x0."""
    return -rho * grad_x0
