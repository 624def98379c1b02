"""Tier 1: attention perturbations on joint text+image sequences (SD3, Flux), layout (B, heads, L, d)."""
import pytest
import torch

from guidekit.guidance.pag import identity_attention, joint_identity_attention
from guidekit.guidance.sag import key_saliency
from guidekit.guidance.seg import blur_image_queries, blur_queries

from guidance_helpers import rand


def qkv(length, seed=0, b=2, heads=3, d=4):
    return [rand(b, heads, length, d, seed=seed + i) * 2 for i in range(3)]


def test_joint_identity_without_text_is_plain_pag():
    q, k, v = qkv(12)
    torch.testing.assert_close(joint_identity_attention(q, k, v, n_image=12), identity_attention(q, k, v))


def test_joint_identity_equals_attention_under_the_diffusers_pag_mask():
    """Image queries see text keys and themselves only (image block −∞ off the diagonal); text sees all."""
    n_text, n_image = 5, 12
    q, k, v = qkv(n_text + n_image, seed=3)
    mask = torch.zeros(n_text + n_image, n_text + n_image)
    mask[n_text:, n_text:] = float("-inf")
    mask[n_text:, n_text:].fill_diagonal_(0.0)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(joint_identity_attention(q, k, v, n_image), reference)


def test_blur_image_queries_blurs_only_the_image_grid():
    n_text, h, w = 4, 3, 5
    q = qkv(n_text + h * w, seed=5)[0]
    out = blur_image_queries(q, h, w, sigma=1.0)
    torch.testing.assert_close(out[:, :, :n_text], q[:, :, :n_text])
    image = q[:, :, n_text:].permute(0, 2, 1, 3).flatten(2)            # (B, N, heads·d)
    expected = blur_queries(image, h, w, 1.0).unflatten(2, (3, 4)).permute(0, 2, 1, 3)
    torch.testing.assert_close(out[:, :, n_text:], expected)
    assert not torch.allclose(out[:, :, n_text:], q[:, :, n_text:])


@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_key_saliency_of_self_attention_is_the_column_sum(chunk):
    q, k, _ = qkv(20, seed=7)
    attn = (q @ k.transpose(-1, -2) * 4 ** -0.5).softmax(dim=-1)
    torch.testing.assert_close(key_saliency(q, k, n_image=20, chunk=chunk), attn.mean(dim=1).sum(dim=1))


def test_key_saliency_of_joint_attention_renormalises_the_image_block():
    n_text, n_image = 6, 10
    q, k, _ = qkv(n_text + n_image, seed=9)
    sal = key_saliency(q, k, n_image)
    block = (q[:, :, n_text:] @ k[:, :, n_text:].transpose(-1, -2) * 0.5).softmax(dim=-1)
    torch.testing.assert_close(sal, block.mean(dim=1).sum(dim=1))
    torch.testing.assert_close(sal.mean(dim=1), torch.ones(2))        # mean column sum is exactly 1
