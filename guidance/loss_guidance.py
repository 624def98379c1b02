"""One loss-guided denoising step for every training-free method, in ComfyUI's x = x0 + σ·ε coordinates.

The five methods are special cases of TFG's unified step (Ye et al., NeurIPS 2024): FreeDoM, DPS and
LGD-MC move x_{t−1} along ∇_{x_t} of a loss of x0|t (backpropagated through the denoiser); MPGD moves
x0|t along ∇_{x0} only; Universal Guidance corrects ε (forward) and x0 (backward). The methods are the
table in loss_methods.py and the step sizes the table step_size.RULES; guidance_step looks both up.
Each method's change is computed in the papers' VP coordinates and handed to the sampler as a corrected
denoised image, exact for a first-order deterministic step (Euler = DDIM η = 0): D' = D + Δx_{t−1}/(1 − σ'/σ).
Time-travel (recurrence) takes that step, re-noises back to σ and repeats (FreeDoM eq. 12).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import step_size
from .loss_methods import LOSS_METHODS, Loss, StepContext
from .vp import alpha_bar

METHODS = tuple(LOSS_METHODS)                          # FreeDoM, UG, LGD-MC, MPGD, DPS (loss_methods.py)
STEP_RULES = tuple(step_size.RULES)                    # polyak, rms, fixed

Denoiser = Callable[[torch.Tensor], torch.Tensor]      # x_t (requires grad or not) → x0|t


@dataclass(frozen=True)
class LossGuidanceConfig:
    method: str = "FreeDoM"
    step_rule: str = "polyak"
    scale: float = 1.0
    mc_samples: int = 4          # LGD-MC: n
    backward_steps: int = 0      # UG: m gradient steps on x0 (0 = forward guidance only)
    backward_lr: float = 0.1     # UG: step of those gradient steps

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"unknown step rule {self.step_rule!r}; choose from {STEP_RULES}")


@dataclass
class StepResult:
    denoised: torch.Tensor       # x0|t of the model (detached)
    change: torch.Tensor         # change of the next sample x_{t−1}, in x = x0 + σ·ε units
    loss: torch.Tensor           # the guidance loss at x0|t, per image
    skipped: torch.Tensor        # images whose loss or gradient was not finite (no correction applied)


def _finite_rows(*tensors: torch.Tensor) -> torch.Tensor:
    ok = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t.reshape(t.shape[0], -1)).all(1)
    return ok


def guidance_step(denoise: Denoiser, loss_fn: Loss, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                  config: LossGuidanceConfig, gen: torch.Generator) -> StepResult:
    """One step of `config.method` at x (σ → σ_next); no re-noising."""
    view = (-1,) + (1,) * (x.ndim - 1)
    sigma = sigma.reshape(view).to(x)
    ab, ab_next = alpha_bar(sigma), alpha_bar(sigma_next.reshape(view).to(x))
    method = LOSS_METHODS[config.method]
    if method.through_denoiser:
        x_in = x.detach().clone().requires_grad_(True)
        out = denoise(x_in)
        denoised = out.detach()
    else:                                                           # no backprop through the denoiser
        with torch.no_grad():
            denoised = denoise(x).detach()
        x_in = out = denoised.clone().requires_grad_(True)
    ctx = StepContext(loss_fn, denoised, ab, ab_next, config, gen)
    objective, loss = method.objective(out, ctx)
    (grad,) = torch.autograd.grad(torch.nan_to_num(objective).sum(), x_in)
    if method.through_denoiser:
        grad = grad / ab.sqrt()                                     # ∇ w.r.t. the VP x_t = √ᾱ·x
    eps = (x - denoised) / sigma
    rho = step_size.RULES[config.step_rule](config.scale, eps, grad, ab, ab_next, not method.through_denoiser)
    change_vp = method.update(grad, rho, ctx)
    change = change_vp / ab_next.sqrt()                              # back to x = x0 + σ·ε units
    ok = _finite_rows(loss.reshape(-1, 1), change)
    change = torch.where(ok.reshape(view), torch.nan_to_num(change), torch.zeros_like(change))
    return StepResult(denoised, change.detach(), loss.detach(), ~ok)


def loss_guided_denoise(denoise: Denoiser, loss_fn: Loss, x: torch.Tensor, sigma: torch.Tensor,
                        sigma_next: torch.Tensor, config: LossGuidanceConfig, gen: torch.Generator,
                        recurrence: int = 1) -> tuple[torch.Tensor, StepResult]:
    """The denoised image to hand the sampler so that its step σ → σ_next is the guided step.

    With recurrence r > 1 the guided step is taken, re-noised back to σ (x_σ = x_σ' + √(σ² − σ'²)·z) and
    repeated r times; the last step starts from the re-noised x, folded into the returned image.
    """
    view = (-1,) + (1,) * (x.ndim - 1)
    s = sigma.reshape(view).to(x)
    s_next = sigma_next.reshape(view).to(x)
    ratio = (s_next / s).clamp(max=0.999)
    current = x
    for k in range(max(1, recurrence)):
        result = guidance_step(denoise, loss_fn, current, sigma, sigma_next, config, gen)
        if k == max(1, recurrence) - 1:
            break
        stepped = result.denoised + ratio * (current - result.denoised) + result.change
        noise = torch.randn(x.shape, generator=gen).to(x)
        current = stepped + (s ** 2 - s_next ** 2).clamp(min=0).sqrt() * noise
    guided = result.denoised + (result.change + ratio * (current - x)) / (1 - ratio)
    return guided, result
