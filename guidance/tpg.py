"""Token Perturbation Guidance (Rajabi et al. 2025, arXiv 2506.10036): guide away from a pass whose chosen
transformer blocks see their input tokens in a random order.

The perturbed pass permutes the tokens entering each chosen block (one permutation per call, the same for
every image of the batch; the official pipeline draws a fresh one each call). Transformer blocks treat
tokens as a set, so the block's output comes out permuted too and the layers after it see spatially
scrambled features: a norm-preserving perturbation that keeps every token's statistics.
"""
from __future__ import annotations

import torch


def shuffle_tokens(tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, N, C) → the same tokens in a random order along N, one permutation for all B."""
    # Rajabi et al. 2025, pipeline_sdxl_tpg.py: x_shuffled = x[:, randperm(n)] at the block input
    permutation = torch.randperm(tokens.shape[1], generator=generator).to(tokens.device)
    return tokens[:, permutation]
