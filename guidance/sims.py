"""SIMS: negative guidance away from a copy of the model fine-tuned on its own samples (Alemohammad et al. 2024)."""
from __future__ import annotations

import torch


def sims(base: torch.Tensor, self_trained: torch.Tensor, omega: float) -> torch.Tensor:
    """D = D_base + ω·(D_base − D_sims); ω = 0 is the base model alone."""
    # Alemohammad et al. 2024 (arXiv 2408.16333), §3: s = (1 + ω)·s_θr − ω·s_θs
    return base + omega * (base - self_trained)


def sims_as_autoguidance(omega: float) -> float:
    """SIMS is autoguidance with the self-trained model as the weak one and w = 1 + ω."""
    return 1.0 + omega


def denoising_loss(denoised: torch.Tensor, clean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E ||D(x_σ) − x0||² / σ²: the eps-prediction loss for EPS models and the velocity loss for flows."""
    # Ho et al. 2020 eq. 14 written in x0 space: ||ε − ε̂||² = ||x0 − D||² / σ² (flow: ||v − v̂||², same form)
    weight = sigma.view(-1, *[1] * (clean.ndim - 1)).pow(-2)
    return ((denoised - clean).pow(2) * weight).mean()
