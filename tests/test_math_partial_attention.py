"""Tier 1: attention over a split key set (guidance/partial_attention.py) equals attention over all the keys."""
import pytest
import torch

from guidekit.guidance import partial_attention


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v.double()


@pytest.mark.parametrize("split", [1, 7, 40])
def test_merging_two_parts_is_attention_over_all_keys(split):
    """Keys 0…split and split…48 attended apart and merged: the attention over all 48, to float32 rounding
    (keys scaled up so that a few keys dominate some queries, as a text token may)."""
    gen = torch.Generator().manual_seed(split)
    q, k, v = torch.randn(2, 3, 20, 16, generator=gen), 3 * torch.randn(2, 3, 48, 16, generator=gen), \
        torch.randn(2, 3, 48, 16, generator=gen)
    parts = [partial_attention.attention(q, k[:, :, keys], v[:, :, keys])
             for keys in (slice(0, split), slice(split, None))]
    out, lse = partial_attention.merge(*parts)
    scores = q.double() @ k.double().transpose(-1, -2) / 4.0
    # float32: a score of d = 16 products rounds by ≤ d·u·max|score|, e^score then relatively by that much, and
    # the sums over 48 keys add ≤ 48·u (u = 2⁻²⁴); ×4 for the two parts and the merge
    rel = (16 * scores.abs().max().item() + 48) * 2.0 ** -24 * 4
    torch.testing.assert_close(out.double(), reference(q, k, v), rtol=0, atol=rel * v.abs().max().item())
    torch.testing.assert_close(lse.double(), scores.logsumexp(-1), rtol=0, atol=rel * scores.abs().max().item())


def test_the_fused_kernel_agrees_with_the_exact_one_and_keeps_the_dtype():
    """PyTorch's fused kernel (used where its self-check passes) = the chunked exact one; bfloat16 stays bfloat16
    with a float32 log-sum-exp (bf16's 8 bits: ~4e-3 relative per element, a few ulps after the sums)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 300, 32, generator=gen) for _ in range(3))
    fused, exact = partial_attention.attention(q, k, v), partial_attention.exact(q, k, v, chunk=64)
    torch.testing.assert_close(fused[0], exact[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(fused[1], exact[1], rtol=0, atol=1e-4)
    half = partial_attention.attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert half[0].dtype == torch.bfloat16 and half[1].dtype == torch.float32
    torch.testing.assert_close(half[0].float(), exact[0], rtol=0, atol=5e-2)
