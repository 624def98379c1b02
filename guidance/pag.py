"""Perturbed-Attention Guidance (Ahn et al., ECCV 2024, arXiv 2403.17377): identity self-attention.

The perturbed branch replaces the self-attention map of chosen layers by the identity, so each token
attends only to itself: PSA(Q, K, V) = V (the layer's output projection still follows).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Self-attention with the map replaced by I: softmax(QKᵀ/√d) → I, so the output is V (PAG eq. 6)."""
    return v


def adaptive_scale(scale: float, adaptive: float, timestep: float) -> float:
    """diffusers' adaptive PAG scale s_t = max(0, s − a·(1000 − t)), t the DDPM timestep in [0, 1000].

    Chosen over pamparamm's s − s·a⁴·(1000 − t): it is the one in the reference pipelines
    (diffusers pipelines/pag/pag_utils.py) and is linear in a.
    """
    return max(0.0, scale - adaptive * (1000.0 - timestep))


def joint_identity_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_image: int) -> torch.Tensor:
    """PAG for joint text+image attention (SD3, Flux): only the image→image map becomes the identity.

    q, k, v: (B, heads, L, d) with the n_image image tokens last. Image queries attend to the text keys
    and to themselves only (diffusers' PAGJointAttnProcessor2_0 mask: image block −∞ off the diagonal);
    text queries keep full attention. With no text tokens this is exactly `identity_attention`.
    """
    n_text = q.shape[2] - n_image
    if n_text < 0:
        raise ValueError(f"{n_image} image tokens do not fit in a sequence of {q.shape[2]}")
    if n_text == 0:
        return v
    q_txt, q_img = q[:, :, :n_text], q[:, :, n_text:]
    k_txt, k_img = k[:, :, :n_text], k[:, :, n_text:]
    v_txt, v_img = v[:, :, :n_text], v[:, :, n_text:]
    text_out = F.scaled_dot_product_attention(q_txt, k, v)
    scale = q.shape[-1] ** -0.5
    logits_txt = (q_img.float() @ k_txt.float().transpose(-1, -2)) * scale                  # (B, H, N, T)
    logit_self = (q_img.float() * k_img.float()).sum(-1, keepdim=True) * scale              # (B, H, N, 1)
    weights = torch.cat([logits_txt, logit_self], dim=-1).softmax(dim=-1).to(v.dtype)
    image_out = weights[..., :n_text] @ v_txt + weights[..., n_text:] * v_img
    return torch.cat([text_out, image_out], dim=2)
