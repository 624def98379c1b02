"""Tier 1: the attention-perturbation math (SEG query blur, SAG mask and degradation, PAG) on tensors."""
import pytest
import torch

from guidekit.guidance.blur import gaussian_blur_2d, gaussian_kernel_1d, token_grid
from guidekit.guidance.pag import adaptive_scale, identity_attention
from guidekit.guidance.sag import attention_mask, degrade
from guidekit.guidance.seg import blur_queries, kernel_size

from guidance_helpers import rand


@pytest.mark.parametrize("sigma,expected", [(0.5, 3), (1, 7), (2, 13), (5, 31), (10, 61)])
def test_seg_kernel_is_smallest_odd_at_least_6_sigma_plus_1(sigma, expected):
    assert kernel_size(sigma, side=1000) == expected


def test_seg_kernel_is_clipped_to_the_grid():
    assert kernel_size(10, side=32) == 33      # SDXL mid block at 1024²: 32×32 tokens
    assert kernel_size(10, side=31) == 31
    assert kernel_size(1, side=32) == 7


def test_seg_small_sigma_is_the_unperturbed_query():
    q = rand(2, 6 * 10, 8)
    torch.testing.assert_close(blur_queries(q, 6, 10, sigma=1e-3), q)


@pytest.mark.parametrize("sigma", [0.0, -1.0, 9999.0, 1e7])
def test_seg_infinite_sigma_gives_spatially_constant_queries(sigma):
    q = rand(2, 4 * 5, 3, seed=1)
    out = blur_queries(q, 4, 5, sigma)
    torch.testing.assert_close(out, q.mean(dim=1, keepdim=True).expand_as(q))


def test_seg_blur_on_a_non_square_grid_is_the_2d_blur_of_the_reshaped_queries():
    h, w, c = 6, 10, 4
    q = rand(1, h * w, c, seed=2)
    grid = q.transpose(1, 2).reshape(1, c, h, w)
    expected = (gaussian_blur_2d(grid, kernel_size(1.0, h), kernel_size(1.0, w), 1.0)
                .reshape(1, c, h * w).transpose(1, 2))
    torch.testing.assert_close(blur_queries(q, h, w, 1.0), expected)
    # a constant field stays constant (normalised kernel, reflect padding)
    const = torch.full((1, h * w, c), 2.5)
    torch.testing.assert_close(blur_queries(const, h, w, 2.0), const)


def test_seg_query_blur_equals_blurring_the_logits():
    """Prop. 3.1: (G * Q) Kᵀ = G * (Q Kᵀ), the blur acting over the query grid."""
    h, w, c, n_keys = 5, 7, 4, 9
    q, k = rand(1, h * w, c, seed=3), rand(1, n_keys, c, seed=4)
    lhs = blur_queries(q, h, w, 1.5) @ k.transpose(1, 2)                     # (1, hw, keys)
    logits = (q @ k.transpose(1, 2)).transpose(1, 2).reshape(1, n_keys, h, w)
    rhs = gaussian_blur_2d(logits, kernel_size(1.5, h), kernel_size(1.5, w), 1.5)
    torch.testing.assert_close(lhs, rhs.reshape(1, n_keys, h * w).transpose(1, 2))


def test_gaussian_kernel_matches_its_formula():
    kern = gaussian_kernel_1d(7, 1.0, torch.float64)
    x = torch.arange(-3, 4, dtype=torch.float64)
    torch.testing.assert_close(kern, torch.exp(-x ** 2 / 2) / torch.exp(-x ** 2 / 2).sum())


@pytest.mark.parametrize("n,h,w,grid", [(64 * 96, 64, 96, (64, 96)), (32 * 48, 64, 96, (32, 48)),
                                        (4 * 6, 13, 21, (4, 6)), (52 * 76, 104, 152, (52, 76))])
def test_token_grid_follows_the_latent_aspect(n, h, w, grid):
    assert token_grid(n, h, w) == grid


def test_token_grid_rejects_a_count_that_is_no_grid():
    with pytest.raises(ValueError, match="do not form a grid"):
        token_grid(77, 64, 64)


def test_sag_mask_selects_keys_with_above_average_attention():
    n = 4 * 6
    attn = torch.full((2, 3, n, n), 1.0 / n)                 # uniform: every column sums to exactly 1
    assert attention_mask(attn, 4, 6).sum() == 0
    attn[1, :, :, 5] += 0.5                                    # sample 1: every query looks more at key 5
    attn[1] /= attn[1].sum(dim=-1, keepdim=True)
    mask = attention_mask(attn, 4, 6)
    assert mask.shape == (2, 1, 4, 6)
    assert mask[0].sum() == 0 and mask[1].flatten().nonzero().flatten().tolist() == [5]


def test_sag_degrade_blurs_only_inside_the_mask():
    x0 = rand(2, 4, 16, 24, seed=5)
    zeros, ones = torch.zeros(2, 1, 4, 6), torch.ones(2, 1, 4, 6)
    torch.testing.assert_close(degrade(x0, zeros, 2.0), x0)
    torch.testing.assert_close(degrade(x0, ones, 2.0), gaussian_blur_2d(x0, 9, 9, 2.0))
    half = torch.zeros(2, 1, 4, 6)
    half[..., :3] = 1.0                                        # left half of the latent
    out = degrade(x0, half, 2.0)
    torch.testing.assert_close(out[..., 12:], x0[..., 12:])
    assert not torch.allclose(out[..., :12], x0[..., :12])
    assert degrade(rand(1, 4, 3, 3), torch.ones(1, 1, 3, 3), 2.0).shape == (1, 4, 3, 3)   # tiny latent


def test_pag_identity_attention_and_adaptive_scale():
    q, k, v = rand(1, 5, 4, seed=6), rand(1, 5, 4, seed=7), rand(1, 5, 4, seed=8)
    assert identity_attention(q, k, v) is v
    assert adaptive_scale(3.0, 0.0, 100.0) == 3.0
    assert adaptive_scale(3.0, 0.01, 900.0) == pytest.approx(2.0)
    assert adaptive_scale(3.0, 0.01, 0.0) == 0.0
