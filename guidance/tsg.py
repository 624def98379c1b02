"""Time-step guidance (Sadat et al., ICLR 2025, arXiv 2407.02687): for unconditional models, the negative
branch is the model with a noised time embedding, D = D(z, t̂_emb) + w·(D(z, t_emb) − D(z, t̂_emb)).
"""
from __future__ import annotations

import torch


def perturbed_time_embedding(t_emb: torch.Tensor, t: torch.Tensor, scale: float, alpha: float,
                             generator: torch.Generator) -> torch.Tensor:
    """t̂_emb = t_emb + s·t^α·n, n ~ N(0, I); t ∈ [0, 1] per row (1 = pure noise)."""
    # Sadat et al. 2025, §5 (TSG): t̂_emb = t_emb + s·t^α·n
    noise = torch.randn(t_emb.shape, generator=generator, dtype=torch.float32).to(t_emb.device, t_emb.dtype)
    weight = (scale * t.clamp(0.0, 1.0).to(t_emb) ** alpha).view(-1, *[1] * (t_emb.ndim - 1))
    return t_emb + weight * noise
