"""FreeDoM (Yu et al., ICCV 2023): a gradient step on x_t of the loss of the predicted clean image."""
from __future__ import annotations

import torch


def freedom_change(grad_xt: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Yu et al. eq. 10: x_{t−1} = sampler_step(x_t) − ρ_t·∇_{x_t} L(x0|t(x_t)); returns the change of x_{t−1}."""
    return -rho * grad_xt
