"""The training-free loss-guidance methods as one table: what each differentiates, and how it moves x_{t−1}.

Every method is TFG's unified step (Ye et al., NeurIPS 2024) with two choices: the gradient is taken
against x_t through the denoiser (FreeDoM, UG, LGD-MC, DPS) or against x0|t alone (MPGD), and the update
turns that gradient and the step size ρ into a change of x_{t−1} in VP units (vp.py). The objective is
what gets differentiated: the loss itself, its square root (DPS) or a Monte-Carlo soft minimum (LGD-MC).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .vp import next_sample_change

if TYPE_CHECKING:
    from .loss_guidance import LossGuidanceConfig

Loss = Callable[[torch.Tensor], torch.Tensor]          # x0 (latent) → loss per image, shape (B,)


@dataclass(frozen=True)
class StepContext:
    """What an objective or update may use besides x0|t, the gradient and ρ."""
    loss_fn: Loss
    denoised: torch.Tensor       # x0|t of the model (detached)
    ab: torch.Tensor             # ᾱ_t
    ab_next: torch.Tensor        # ᾱ_{t−1}
    config: LossGuidanceConfig
    gen: torch.Generator


Objective = Callable[[torch.Tensor, StepContext], tuple[torch.Tensor, torch.Tensor]]   # x0|t → (objective, loss)
Update = Callable[[torch.Tensor, torch.Tensor, StepContext], torch.Tensor]            # (∇, ρ) → Δx_{t−1} (VP)


@dataclass(frozen=True)
class Method:
    name: str                    # the node's combo entry
    equation: str                # the paper's update this method computes
    through_denoiser: bool       # ∇ against x_t through the denoiser (True) or against x0|t only (False: MPGD)
    objective: Objective         # what is differentiated, and the loss reported per image
    update: Update               # the change of x_{t−1} in VP units from the gradient and the step size


# Objectives ---------------------------------------------------------------------------------------------------

def loss_objective(x0: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of the predicted clean image itself."""
    loss = ctx.loss_fn(x0)
    return loss, loss


def dps_objective(loss: torch.Tensor) -> torch.Tensor:
    """‖y − A(x0|t)‖₂ from a squared-residual loss: DPS steps on the norm (guided_diffusion PosteriorSampling)."""
    return loss.clamp(min=0).sqrt()


def residual_norm_objective(x0: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """DPS: the gradient of the residual norm (not its square); the squared loss is reported."""
    loss = ctx.loss_fn(x0)
    return dps_objective(loss), loss


def lgd_mc_objective(loss_fn: Loss, x0: torch.Tensor, ab: torch.Tensor, samples: int,
                     gen: torch.Generator) -> torch.Tensor:
    """Song et al. eq. 9: −log (1/n)Σᵢ exp(−ℓ(x0|t + r_t·εᵢ)), r_t = √(1 − ᾱ_t) (= σ/√(1 + σ²)); per image."""
    r = (1 - ab).sqrt()
    losses = []
    for _ in range(samples):
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        losses.append(loss_fn(x0 + r * noise))
    return -(torch.logsumexp(-torch.stack(losses), dim=0) - math.log(samples))


def monte_carlo_objective(x0: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """LGD-MC: the Monte-Carlo loss over x0|t + r_t·εᵢ, a softer guess of p(y | x_t); it is also the loss reported."""
    objective = lgd_mc_objective(ctx.loss_fn, x0, ctx.ab, ctx.config.mc_samples, ctx.gen)
    return objective, objective.detach()


# Universal Guidance's pieces (Bansal et al., 2023): forward guidance on ε, backward guidance on x0 ------------

def forward_eps_change(grad_xt: torch.Tensor, s: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Bansal et al. eq. 6: ε̂ = ε + s·√(1 − ᾱ_t)·∇_{x_t} ℓ(x0|t); returns ε̂ − ε."""
    return s * (1 - ab).sqrt() * grad_xt


def backward_x0_change(loss_fn: Loss, x0: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
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


# Updates ------------------------------------------------------------------------------------------------------

def descend_x_next(grad_xt: torch.Tensor, rho: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """x_{t−1} = sampler_step(x_t) − ρ·∇_{x_t}(objective); returns the change of x_{t−1} (TFG methods/lgd.py)."""
    return -rho * grad_xt


def descend_x0(grad_x0: torch.Tensor, rho: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """x0|t ← x0|t − ρ·∇_{x0} ℓ(x0|t), then the DDIM step from the new x0: x_{t−1} moves by √ᾱ_{t−1}·Δx0."""
    return next_sample_change(ctx.ab_next, d_x0=-rho * grad_x0)


def universal_update(grad_xt: torch.Tensor, s: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Forward guidance on ε (eq. 6) and, with backward steps, Δx0 (eq. 8) folded into ε̂ (eq. 9), then DDIM."""
    d_eps = forward_eps_change(grad_xt, s, ctx.ab)
    d_x0 = x0_change_of_eps(d_eps, ctx.ab)
    if ctx.config.backward_steps > 0:
        delta = backward_x0_change(ctx.loss_fn, ctx.denoised + d_x0, ctx.config.backward_steps, ctx.config.backward_lr)
        d_eps, d_x0 = d_eps + eps_change_of_x0(delta, ctx.ab), d_x0 + delta
    return next_sample_change(ctx.ab_next, d_x0=d_x0, d_eps=d_eps)


# The table, in the node's combo order -------------------------------------------------------------------------

LOSS_METHODS: dict[str, Method] = {m.name: m for m in (
    Method("FreeDoM", "Yu et al. ICCV 2023 eq. 10: x_{t−1} = sampler_step(x_t) − ρ_t·∇_{x_t} L(x0|t(x_t))",
           through_denoiser=True, objective=loss_objective, update=descend_x_next),
    Method("UG", "Bansal et al. 2023 eqs. 6, 8, 9: ε̂ = ε + s·√(1 − ᾱ_t)·∇_{x_t} ℓ(x0|t), ε̂ −= √(ᾱ_t/(1 − ᾱ_t))·Δx0",
           through_denoiser=True, objective=loss_objective, update=universal_update),
    Method("LGD-MC", "Song et al. ICML 2023 eq. 9: x_{t−1} −= ρ·∇_{x_t} −log (1/n)Σᵢ exp(−ℓ(x0|t + r_t·εᵢ))",
           through_denoiser=True, objective=monte_carlo_objective, update=descend_x_next),
    Method("MPGD", "He et al. ICLR 2024 eq. 8: x0|t ← x0|t − ρ_t·∇_{x0} ℓ(x0|t), then the DDIM step from the new x0",
           through_denoiser=False, objective=loss_objective, update=descend_x0),
    Method("DPS", "Chung et al. ICLR 2023 Alg. 1: x_{t−1} = DDPM_step(x_t) − ζ·∇_{x_t}‖y − A(x0|t)‖",
           through_denoiser=True, objective=residual_norm_objective, update=descend_x_next),
)}
