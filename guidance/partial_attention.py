"""Attention over a split key set: each part attended on its own with its log-sum-exp, then merged exactly.

NAG's negative rows share their image keys with the positive rows; only the text keys differ. Attending
over the image keys once and over each row's text keys apart, then merging, gives both rows' outputs for
little more than one row's cost.
"""
from __future__ import annotations

import functools
import math

import torch

Partial = tuple[torch.Tensor, torch.Tensor]     # (B, H, Lq, D) output, (B, H, Lq) float32 log-sum-exp


def merge(a: Partial, b: Partial) -> Partial:
    """The attention over keys A ∪ B from the attentions over A and over B (each normalised on its own part)."""
    # Milakov & Gimelshein 2018 (online softmax); FlashAttention-2's split-KV combine: o = Σ e^{lse_i − lse} o_i
    (out_a, lse_a), (out_b, lse_b) = a, b
    lse = torch.logaddexp(lse_a, lse_b)
    weight_a = torch.exp(lse_a - lse).unsqueeze(-1)
    out = out_b.float() + weight_a * (out_a.float() - out_b.float())
    return out.to(out_a.dtype), lse


def exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int = 1024) -> Partial:
    """Softmax attention with its log-sum-exp in float32, queries in chunks (the reference and the fallback)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    outs, lses = [], []
    for part in q.split(chunk, dim=2):
        scores = (part.float() @ k.float().transpose(-1, -2)) * scale
        lse = scores.logsumexp(dim=-1)
        outs.append((torch.exp(scores - lse.unsqueeze(-1)) @ v.float()).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Partial:
    """PyTorch's own fused kernels that also return the log-sum-exp (private ops; checked before use)."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)
    else:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False)[:2]
    return out, lse[..., :q.shape[2]].float()


@functools.cache
def _fused_works(device: str, dtype: torch.dtype) -> bool:
    """Whether the fused kernel runs here and agrees with `exact` on a small input (once per device and dtype)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 64, generator=gen).to(device, dtype) for _ in range(3))
    try:
        out, lse = _fused(q, k, v)
    except (RuntimeError, NotImplementedError, AttributeError):
        return False
    ref_out, ref_lse = exact(q, k, v)
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    return out.shape == ref_out.shape and bool((out.float() - ref_out.float()).abs().max() < tol) and \
        bool((lse - ref_lse).abs().max() < tol)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Partial:
    """(B, H, L, D) softmax attention and its log-sum-exp: a fused kernel where one checks out, else `exact`."""
    if _fused_works(str(q.device), q.dtype):
        return _fused(q, k, v)
    return exact(q, k, v)
