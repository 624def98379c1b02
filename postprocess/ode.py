"""Integrate dx/dt = v(x, t) from t = 0 to t_end: Euler, Heun, or adaptive Dormand–Prince (Dopri5).

The refiner flows a generated sample (t = 0) towards its real neighbours (t = 1); t_end < 1 stops part
of the way (the node's strength). Each solver is a few lines: x is a batch, t a float.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
SOLVERS = ("euler", "heun", "dopri5")

# Dormand & Prince (1980), the RK5(4)7M pair: nodes c, stages a, 5th-order weights b, 4th-order weights b*.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = ((),
      (1 / 5,),
      (3 / 40, 9 / 40),
      (44 / 45, -56 / 15, 32 / 9),
      (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
      (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
      (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def euler(v: Velocity, x: torch.Tensor, t_end: float, steps: int) -> torch.Tensor:
    h = t_end / steps
    for i in range(steps):
        x = x + h * v(x, i * h)
    return x


def heun(v: Velocity, x: torch.Tensor, t_end: float, steps: int) -> torch.Tensor:
    """Heun's second-order method (trapezoidal predictor–corrector): 2 evaluations per step."""
    h = t_end / steps
    for i in range(steps):
        k1 = v(x, i * h)
        k2 = v(x + h * k1, (i + 1) * h)
        x = x + h / 2 * (k1 + k2)
    return x


def dopri5(v: Velocity, x: torch.Tensor, t_end: float, first_step: float, rtol: float = 1e-3, atol: float = 1e-4,
           max_steps: int = 1000) -> torch.Tensor:
    """Adaptive RK45 with the standard error control: accept when the scaled RMS error is ≤ 1."""
    t, h = 0.0, min(first_step, t_end)
    k_first = v(x, t)
    for _ in range(max_steps):
        if t >= t_end - 1e-9:
            return x
        h = min(h, t_end - t)
        ks = [k_first]
        for stage in range(1, 7):
            xs = x + h * sum(a * k for a, k in zip(_A[stage], ks) if a)
            ks.append(v(xs, t + _C[stage] * h))
        x_new = xs                                           # stage 7 is evaluated at the 5th-order solution
        error = h * sum((b - b4) * k for b, b4, k in zip(_B, _B4, ks) if b != b4)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        err = (error / scale).pow(2).mean().sqrt().item()
        if err <= 1.0:
            t, x, k_first = t + h, x_new, ks[-1]            # first-same-as-last
        h *= min(5.0, max(0.2, 0.9 * (err if err > 0 else 1e-10) ** -0.2))
    raise RuntimeError(f"dopri5 did not reach t = {t_end} in {max_steps} steps (stopped at t = {t:.4f}); "
                       "loosen rtol/atol")


def integrate(v: Velocity, x: torch.Tensor, t_end: float = 1.0, steps: int = 8, solver: str = "euler",
              rtol: float = 1e-3, atol: float = 1e-4) -> torch.Tensor:
    """x(t_end) from x(0) = x; `steps` is the step count (Euler, Heun) or the first step 1/steps (Dopri5)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if t_end <= 0:
        return x
    if solver == "euler":
        return euler(v, x, t_end, steps)
    if solver == "heun":
        return heun(v, x, t_end, steps)
    return dopri5(v, x, t_end, t_end / steps, rtol, atol)


def refine(refiner: torch.nn.Module, x: torch.Tensor, t_end: float = 1.0, steps: int = 8, solver: str = "euler",
           batch: int = 256) -> torch.Tensor:
    """Flow samples x (N, ...) with the refiner's ODE from t = 0 to t_end, in batches, without gradients."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out.append(integrate(refiner, x[i:i + batch], t_end, steps, solver))
    return torch.cat(out) if out else x
