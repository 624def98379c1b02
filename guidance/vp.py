"""Variance-preserving coordinates, the notation of the loss-guidance papers (DDIM, Song et al. 2021).

ComfyUI samples x = x0 + σ·ε (EDM form); the papers write x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε. They are the
same point scaled by √ᾱ_t = 1/√(1 + σ²). Updates are written here as the change they make to x_{t−1}.
"""
from __future__ import annotations

import torch


def alpha_bar(sigma: torch.Tensor) -> torch.Tensor:
    """ᾱ of the EDM noise level σ: x_VP = √ᾱ·x_EDM."""
    return 1.0 / (1.0 + sigma ** 2)


def ddim_noise_coefficient(ab: torch.Tensor, ab_next: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """c1 of DDIM's step (Song et al. 2021 eq. 16): η·√((1 − ᾱ_t/ᾱ_{t−1})(1 − ᾱ_{t−1})/(1 − ᾱ_t))."""
    return eta * ((1 - ab / ab_next) * (1 - ab_next) / (1 - ab)).clamp(min=0).sqrt()


def next_sample_change(ab_next: torch.Tensor, d_x0: torch.Tensor | None = None, d_eps: torch.Tensor | None = None,
                       d_x: torch.Tensor | None = None) -> torch.Tensor:
    """Change of DDIM's x_{t−1} = √ᾱ_{t−1}·x0 + √(1 − ᾱ_{t−1})·ε when x0, ε or x_{t−1} itself are corrected."""
    change = 0.0
    if d_x0 is not None:
        change = change + ab_next.sqrt() * d_x0
    if d_eps is not None:
        change = change + (1 - ab_next).sqrt() * d_eps
    if d_x is not None:
        change = change + d_x
    return change

