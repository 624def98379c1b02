"""Perturbed-Attention Guidance (Ahn et al., ECCV 2024, arXiv 2403.17377): identity self-attention.

The perturbed branch replaces the self-attention map of chosen layers by the identity, so each token
attends only to itself: PSA(Q, K, V) = V (the layer's output projection still follows).
"""
from __future__ import annotations

import torch


def identity_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Self-attention with the map replaced by I: softmax(QKᵀ/√d) → I, so the output is V (PAG eq. 6)."""
    return v


def adaptive_scale(scale: float, adaptive: float, timestep: float) -> float:
    """diffusers' adaptive PAG scale s_t = max(0, s − a·(1000 − t)), t the DDPM timestep in [0, 1000].

    Chosen over pamparamm's s − s·a⁴·(1000 − t): it is the one in the reference pipelines
    (diffusers pipelines/pag/pag_utils.py) and is linear in a.
    """
    return max(0.0, scale - adaptive * (1000.0 - timestep))
