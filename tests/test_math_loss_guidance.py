"""Tier 1: training-free loss guidance math (FreeDoM, DPS, UG, LGD-MC, MPGD; Polyak, rms rule, augmentation)."""
import math

import pytest
import torch

from guidekit.guidance import augment, losses, step_size
from guidekit.guidance.loss_guidance import LossGuidanceConfig, guidance_step, loss_guided_denoise
from guidekit.guidance.loss_methods import lgd_mc_objective
from guidekit.guidance.vp import alpha_bar, ddim_noise_coefficient

from guidance_helpers import rand


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


A = 0.7                                         # linear toy denoiser D(x) = A·x


def linear_denoiser(x):
    return A * x


def quadratic_loss(target):
    return lambda x0: 0.5 * (x0 - target).pow(2).flatten(1).sum(1)


def test_polyak_step_is_noise_norm_over_squared_gradient_norm():
    eps = torch.tensor([[3.0, 4.0], [1.0, 0.0]])                    # ‖ε‖ = 5 and 1
    grad = torch.tensor([[1.0, 2.0], [0.0, 1e-8]])                   # ‖∇‖² = 5; second below 1e-6 → 0
    rho = step_size.polyak(2.0, eps, grad)
    torch.testing.assert_close(rho.flatten(), torch.tensor([2.0 * 5 / 5, 0.0]))


def test_rms_rule_is_freedoms_formula():
    eps, grad = rand(2, 3, 4, 4, seed=1), rand(2, 3, 4, 4, seed=2)
    ab, ab_next = torch.tensor(0.3), torch.tensor(0.5)
    c1 = math.sqrt((1 - 0.3 / 0.5) * (1 - 0.5) / (1 - 0.3))
    torch.testing.assert_close(ddim_noise_coefficient(ab, ab_next), torch.tensor(c1))
    def rms(t):
        return t.flatten(1).pow(2).mean(1).sqrt()
    expected = 0.02 * rms(eps) * math.sqrt(0.7 / 0.3) * c1 / rms(grad)
    torch.testing.assert_close(step_size.rms_rule(0.02, eps, grad, ab, ab_next).flatten(), expected)


def test_freedom_step_on_a_linear_denoiser_matches_the_hand_gradient():
    x, target = rand(2, 1, 3, 3, seed=3), rand(2, 1, 3, 3, seed=4)
    sigma, sigma_next = torch.tensor([2.0, 2.0]), torch.tensor(1.0)
    config = LossGuidanceConfig("FreeDoM", "fixed", 0.3)
    result = guidance_step(linear_denoiser, quadratic_loss(target), x, sigma, sigma_next, config, gen())
    ab, ab_next = 1 / (1 + 4.0), 1 / (1 + 1.0)
    grad_x = A * (A * x - target)                                    # ∇_x ½‖A x − y‖²
    grad_vp = grad_x / math.sqrt(ab)
    torch.testing.assert_close(result.change, -0.3 * grad_vp / math.sqrt(ab_next))
    torch.testing.assert_close(result.denoised, A * x)


def test_folded_prediction_makes_eulers_step_the_guided_step():
    x, target = rand(3, 2, 4, 4, seed=5), rand(3, 2, 4, 4, seed=6)
    sigma, sigma_next = torch.full((3,), 3.0), torch.tensor(1.2)
    for method in ("FreeDoM", "DPS", "MPGD", "UG"):
        config = LossGuidanceConfig(method, "polyak", 0.5)
        guided, result = loss_guided_denoise(linear_denoiser, quadratic_loss(target), x, sigma, sigma_next,
                                             config, gen())
        r = 1.2 / 3.0
        euler = guided + r * (x - guided)
        torch.testing.assert_close(euler, result.denoised + r * (x - result.denoised) + result.change)


def test_universal_guidance_forward_is_classifier_guidance_in_denoised_space():
    """ε̂ = ε + s√(1−ᾱ)∇ℓ is D' = D − s·σ²·∇_x ℓ (k-diffusion's cond_fn form)."""
    x, target = rand(1, 1, 4, 4, seed=7), rand(1, 1, 4, 4, seed=8)
    config = LossGuidanceConfig("UG", "fixed", 0.2)
    guided, _ = loss_guided_denoise(linear_denoiser, quadratic_loss(target), x, torch.tensor([1.5]),
                                    torch.tensor(0.5), config, gen())
    torch.testing.assert_close(guided, A * x - 0.2 * 1.5 ** 2 * A * (A * x - target))


def test_universal_guidance_backward_moves_x0_towards_the_loss_minimum():
    x, target = rand(1, 1, 4, 4, seed=9), rand(1, 1, 4, 4, seed=10)
    loss = quadratic_loss(target)
    config = LossGuidanceConfig("UG", "fixed", 0.0, backward_steps=50, backward_lr=0.2)
    guided, _ = loss_guided_denoise(linear_denoiser, loss, x, torch.tensor([1.0]), torch.tensor(0.0), config, gen())
    torch.testing.assert_close(guided, target, atol=1e-4, rtol=0)   # last step (σ' = 0): x0 → argmin ℓ


def test_dps_steps_on_the_residual_norm():
    x, target = rand(1, 1, 3, 3, seed=11), rand(1, 1, 3, 3, seed=12)
    def sq(x0):
        return (x0 - target).pow(2).flatten(1).sum(1)
    result = guidance_step(linear_denoiser, sq, x, torch.tensor([1.0]), torch.tensor(0.5),
                           LossGuidanceConfig("DPS", "fixed", 1.0), gen())
    residual = A * x - target
    grad_x = A * residual / residual.norm()                        # ∇_x ‖A x − y‖
    ab, ab_next = 0.5, 0.8
    torch.testing.assert_close(result.change, -grad_x / math.sqrt(ab) / math.sqrt(ab_next))


def test_mpgd_does_not_backpropagate_through_the_denoiser():
    weight = torch.nn.Parameter(torch.tensor(A))
    seen = []

    def denoise(x):
        seen.append(x.requires_grad or torch.is_grad_enabled())
        return weight * x

    x, target = rand(2, 1, 3, 3, seed=13), rand(2, 1, 3, 3, seed=14)
    result = guidance_step(denoise, quadratic_loss(target), x, torch.tensor([1.0, 1.0]), torch.tensor(0.5),
                           LossGuidanceConfig("MPGD", "fixed", 0.1), gen())
    assert seen == [False] and weight.grad is None
    torch.testing.assert_close(result.change, -0.1 * (A * x - target))   # √ᾱ'·Δx0 / √ᾱ' = Δx0


def test_lgd_mc_is_the_loss_at_zero_noise_and_a_soft_minimum_otherwise():
    x0, target = rand(2, 1, 3, 3, seed=15), rand(2, 1, 3, 3, seed=16)
    loss = quadratic_loss(target)
    torch.testing.assert_close(lgd_mc_objective(loss, x0, torch.tensor(1.0), 8, gen()), loss(x0))
    mc = lgd_mc_objective(loss, x0, torch.tensor(0.5), 8, gen(1))
    g = gen(1)
    draws = torch.stack([loss(x0 + math.sqrt(0.5) * torch.randn(x0.shape, generator=g)) for _ in range(8)])
    torch.testing.assert_close(mc, -(torch.logsumexp(-draws, 0) - math.log(8)))
    assert torch.all(mc <= draws.mean(0)) and torch.all(mc >= draws.min(0).values)   # Jensen; soft minimum


def test_recurrence_one_is_the_plain_step_and_more_moves_further():
    x, target = rand(1, 1, 4, 4, seed=17), rand(1, 1, 4, 4, seed=18)
    config = LossGuidanceConfig("FreeDoM", "fixed", 0.2)
    args = (linear_denoiser, quadratic_loss(target), x, torch.tensor([2.0]), torch.tensor(1.0), config)
    once, _ = loss_guided_denoise(*args, gen(), recurrence=1)
    plain = guidance_step(*args, gen())
    torch.testing.assert_close(once, plain.denoised + plain.change / (1 - 0.5))
    thrice, _ = loss_guided_denoise(*args, gen(), recurrence=3)
    assert not torch.allclose(once, thrice)


def test_a_nan_loss_skips_that_image_only():
    x, target = rand(2, 1, 3, 3, seed=19), rand(2, 1, 3, 3, seed=20)

    def loss(x0):
        values = quadratic_loss(target)(x0)
        return torch.stack([values[0], values[1] * float("nan")])

    result = guidance_step(linear_denoiser, loss, x, torch.tensor([1.0, 1.0]), torch.tensor(0.5),
                           LossGuidanceConfig("FreeDoM", "fixed", 0.1), gen())
    assert result.skipped.tolist() == [False, True]
    assert torch.all(result.change[1] == 0) and torch.all(result.change[0] != 0)


def test_each_method_lowers_the_loss_of_the_next_prediction():
    x, target = rand(2, 1, 4, 4, seed=21), rand(2, 1, 4, 4, seed=22)
    loss = quadratic_loss(target)
    for method in ("FreeDoM", "DPS", "MPGD", "UG", "LGD-MC"):
        guided, result = loss_guided_denoise(linear_denoiser, loss, x, torch.tensor([1.0, 1.0]), torch.tensor(0.5),
                                             LossGuidanceConfig(method, "polyak", 0.5), gen())
        assert torch.all(loss(guided) < result.loss), method


def test_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="method"):
        LossGuidanceConfig("CLIP")
    with pytest.raises(ValueError, match="step rule"):
        LossGuidanceConfig(step_rule="adam")


def test_augmentation_copies_are_random_differentiable_and_reproducible():
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    a = augment.augment(images, 4, gen(3))
    b = augment.augment(images, 4, gen(3))
    assert a.shape == (8, 3, 16, 16)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0], a[2])                            # copies of image 0 differ
    (grad,) = torch.autograd.grad(a.sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    torch.testing.assert_close(augment.mean_over_copies(torch.arange(8.0), 4), torch.tensor([3.0, 4.0]))
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.augment(images, 2, gen(), ("flip",))


def test_cutout_zeroes_a_quarter_and_identity_policies_keep_the_image():
    images = torch.ones(3, 1, 8, 8)
    cut = augment.cutout(images, gen(4))
    assert torch.all((cut == 0).flatten(1).sum(1) == 16)
    torch.testing.assert_close(augment.affine(images, gen(), 0.0, (1.0, 1.0)), images)


def test_losses():
    emb = rand(2, 8, seed=23)
    torch.testing.assert_close(losses.clip_loss(emb, emb), torch.zeros(2), atol=1e-6, rtol=0)
    logits, target = rand(2, 4, 5, 5, seed=24), torch.randint(0, 4, (2, 5, 5), generator=gen())
    expected = torch.nn.functional.cross_entropy(logits, target, reduction="none").flatten(1).mean(1)
    torch.testing.assert_close(losses.segmentation_loss(logits, target), expected)
    flat = torch.full((1, 3, 8, 8), 0.5)
    assert losses.sobel_edges(flat).max() < 1e-3
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1
    assert losses.sobel_edges(step)[0, 0, 4, 3:5].min() > 0.4
    prepared = losses.prepare(torch.ones(1, 3, 8, 8), 4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.testing.assert_close(prepared, torch.full((1, 3, 4, 4), 2.0))
    assert torch.allclose(alpha_bar(torch.tensor(0.0)), torch.tensor(1.0))
