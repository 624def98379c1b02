"""Independent condition guidance (Sadat et al., ICLR 2025, arXiv 2407.02687): the negative branch is the
model under a condition ŷ drawn independently of the noisy input, so ∇log p(z|ŷ) ≈ ∇log p(z) and
D = D(z, ŷ) + w·(D(z, y) − D(z, ŷ)) needs no unconditional training.

Each function makes ŷ for a batch of condition embeddings (B, tokens, dim) from a seeded generator.
"""
from __future__ import annotations

import torch


def gaussian_condition(embedding: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ŷ = μ + s·n, n ~ N(0, I), with each row's mean μ and std s: noise at the embedding's scale."""
    # Sadat et al. 2025, §4 (ICG with a Gaussian condition: "noise with the same scale as the embedding")
    flat = embedding.reshape(embedding.shape[0], -1).float()
    mean = flat.mean(dim=1).view(-1, *[1] * (embedding.ndim - 1))
    std = flat.std(dim=1).view(-1, *[1] * (embedding.ndim - 1)) if flat.shape[1] > 1 else torch.ones_like(mean)
    noise = torch.randn(embedding.shape, generator=generator, dtype=torch.float32).to(embedding.device)
    return (mean + std * noise).to(embedding.dtype)


def shuffled_tokens(embedding: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ŷ = the embedding's tokens in a random order per row (content kept, structure destroyed)."""
    order = torch.stack([torch.randperm(embedding.shape[1], generator=generator) for _ in range(embedding.shape[0])])
    return torch.gather(embedding, 1, order.to(embedding.device)[..., None].expand(-1, -1, embedding.shape[2]))


def random_rows(pool: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of `count` rows drawn uniformly from a pool of conditions (random class / random prompt)."""
    return torch.randint(pool.shape[0], (count,), generator=generator)


def derangement(count: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation with no fixed point: each batch row takes another row's condition (count ≥ 2)."""
    if count < 2:
        raise ValueError("a derangement needs at least 2 rows")
    shift = int(torch.randint(1, count, (1,), generator=generator))
    order = torch.randperm(count, generator=generator)
    out = torch.empty(count, dtype=torch.long)
    out[order] = order.roll(shift)
    return out
