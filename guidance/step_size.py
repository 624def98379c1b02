"""Step sizes ρ of the loss-guidance update x_{t−1} −= ρ·∇L: fixed, FreeDoM's rms rule, Polyak (Shen et al.).

All norms are per image (over every dimension but the batch), so a batch gives each image its own step.
RULES names each rule for the node's `step_rule` input, all called alike.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .vp import ddim_noise_coefficient

TINY_GRADIENT = 1e-6     # Polyak step is 0 below this gradient norm (Shen et al.'s code)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def rms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).pow(2).mean(1).sqrt()


def norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def fixed(scale: float, grad: torch.Tensor) -> torch.Tensor:
    """ρ = scale."""
    return torch.full_like(_per_image(rms(grad), grad), scale)


def rms_rule(scale: float, eps: torch.Tensor, grad: torch.Tensor, ab: torch.Tensor,
             ab_next: torch.Tensor) -> torch.Tensor:
    """FreeDoM's CLIP rule (Face-GD clip_ddim): ρ = scale·rms(ε)·√(1−ᾱ_t)/√ᾱ_t·c1/rms(∇), c1 of DDIM η = 1."""
    c1 = ddim_noise_coefficient(ab, ab_next, eta=1.0)
    rho = scale * rms(eps) * ((1 - ab) / ab).sqrt().flatten() * c1.flatten() / rms(grad).clamp(min=1e-12)
    return _per_image(rho, grad)


def polyak(scale: float, eps: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Shen et al. 2024 (improved=True): ρ = scale·‖ε_θ(x_t, t)‖₂/‖∇_{x_t}L‖₂², 0 when ‖∇L‖ < 1e-6."""
    g = norm(grad)
    rho = torch.where(g < TINY_GRADIENT, torch.zeros_like(g), scale * norm(eps) / g.clamp(min=TINY_GRADIENT) ** 2)
    return _per_image(rho, grad)


# (scale, ε, ∇, ᾱ_t, ᾱ_{t−1}, on_x0) → ρ per image; on_x0: the gradient is against x0|t (MPGD), not x_t
StepRule = Callable[[float, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]


def _polyak_rule(scale, eps, grad, ab, ab_next, on_x0):
    return polyak(scale, eps, grad)


def _rms_rule(scale, eps, grad, ab, ab_next, on_x0):
    rho = rms_rule(scale, eps, grad, ab, ab_next)
    return rho / ab_next.sqrt() if on_x0 else rho          # MPGD's rule divides by √ᾱ_{t−1}


def _fixed_rule(scale, eps, grad, ab, ab_next, on_x0):
    return fixed(scale, grad)


RULES: dict[str, StepRule] = {"polyak": _polyak_rule, "rms": _rms_rule, "fixed": _fixed_rule}
