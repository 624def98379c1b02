"""Universal Guidance (Bansal et al., 2023): forward guidance on ε, backward guidance on x0, recurrence."""
from __future__ import annotations

from collections.abc import Callable

import torch


def forward_eps_change(grad_xt: torch.Tensor, s: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Bansal et al. eq. 6: ε̂ = ε + s·√(1 − ᾱ_t)·∇_{x_t} ℓ(x0|t); returns ε̂ − ε."""
    return s * (1 - ab).sqrt() * grad_xt


def backward_x0_change(loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, steps: int,
                       lr: float) -> torch.Tensor:
    """Bansal et al. eq. 8: Δx0 from `steps` gradient-descent steps on ℓ(x0|t + Δ), Δ starting at 0."""
    delta = torch.zeros_like(x0, requires_grad=True)
    for _ in range(steps):
        loss = loss_fn(x0.detach() + delta)
        (grad,) = torch.autograd.grad(torch.nan_to_num(loss).sum(), delta)
        delta = (delta - lr * grad).detach().requires_grad_(True)
    return delta.detach()


def eps_change_of_x0(delta_x0: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Bansal et al. eq. 9: ε̂ −= √(ᾱ_t/(1 − ᾱ_t))·Δx0."""
    return -(ab / (1 - ab)).sqrt() * delta_x0


def x0_change_of_eps(d_eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """x0|t = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t, so a change of ε moves x0 by −√((1−ᾱ_t)/ᾱ_t)·Δε."""
    return -((1 - ab) / ab).sqrt() * d_eps
