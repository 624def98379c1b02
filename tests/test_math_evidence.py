"""Tier 1: the evidence harness's ground truth and metrics against closed forms (no ComfyUI needed)."""
import math

import numpy as np
import pytest
import torch

from evidence import fractal, metrics  # noqa: E402


def test_fractal_has_the_specified_tree():
    a, b, ab = fractal.mixture("A"), fractal.mixture("B"), fractal.mixture("AB")
    assert len(a.weights) == len(b.weights) == 127 * 8 and len(ab.weights) == 2 * 127 * 8
    for m in (a, b, ab):
        assert float(m.weights.sum()) == pytest.approx(1.0, abs=1e-12)
        assert torch.linalg.eigvalsh(m.covs).min() > 0
    # The first branch of A, by hand from the specification: RandomState(2)'s first normal draw.
    first = np.random.RandomState(2).randn()
    length = 0.292 * (first * 0.2 + 1)
    d = np.array([math.cos(math.pi / 4), math.sin(math.pi / 4)])
    expected = (np.array(fractal.ORIGIN) + d * length * 0.07) * np.array(fractal.SCALE)
    assert torch.allclose(a.means[0], torch.tensor(expected), atol=1e-12)
    size = np.array(fractal.SCALE) * length * 0.06
    thick = 0.2 / length
    cov = (np.outer(d, d) + (np.eye(2) - np.outer(d, d)) * thick ** 2) * np.outer(size, size)
    assert torch.allclose(a.covs[0], torch.tensor(cov), atol=1e-15)
    # A and B start from one origin in opposite directions: their mass sits in opposite quadrants.
    assert (a.weights @ a.means)[0] > 0.3 and (b.weights @ b.means)[0] < -0.3


@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.5])
def test_fractal_score_is_the_gradient_of_the_log_density(sigma):
    m = fractal.mixture("A")
    x = m.sample(64, sigma + 0.02, generator=torch.Generator().manual_seed(0)).double().requires_grad_(True)
    logp = torch.logsumexp(m.component_log_densities(x, sigma), dim=1).sum()
    grad, = torch.autograd.grad(logp, x)
    assert torch.allclose(m.score(x.detach(), sigma), grad, rtol=1e-6, atol=1e-6)


def test_fractal_heat_diffusion_matches_sampled_moments():
    """x_σ = x_0 + σε: the diffused density's samples have covariance Cov(x_0) + σ²I."""
    m = fractal.mixture("AB")
    gen = torch.Generator().manual_seed(1)
    x0, xs = m.sample(100_000, generator=gen).double(), m.sample(100_000, 0.7, generator=gen).double()
    assert torch.allclose(torch.cov(xs.T), torch.cov(x0.T) + 0.49 * torch.eye(2), atol=0.01)
    # and the density integrates to one on a grid (σ = 0.3 keeps it smooth enough for a 240² grid)
    g = torch.linspace(-3, 3, 240, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    mass = m.log_prob(grid, 0.3).double().exp().sum() * (g[1] - g[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=2e-3)


def test_exact_denoiser_is_the_posterior_mean():
    """Tweedie: E[x_0 | x_σ] from the score equals a Monte-Carlo posterior mean over components."""
    m = fractal.mixture("A")
    x = torch.tensor([[0.3, 0.4], [0.6, 0.2]])
    sigma = 0.2
    # posterior over components and, per component, the Gaussian posterior mean
    resp = torch.softmax(m.component_log_densities(x, sigma), dim=1)
    cov = m.covs + sigma ** 2 * torch.eye(2, dtype=torch.float64)
    gain = m.covs @ torch.linalg.inv(cov)                                   # Σ_k (Σ_k + σ²I)⁻¹
    post = m.means + torch.einsum("kij,nkj->nki", gain, x.double().unsqueeze(1) - m.means)
    expected = (resp.unsqueeze(-1) * post).sum(1)
    assert torch.allclose(m.denoise(x, sigma).double(), expected, atol=1e-5)


def test_frechet_distance_of_gaussians_is_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20_000, 3, generator=gen)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # N(0, I) vs N(μ, 4I): ‖μ‖² + tr(I + 4I − 2·2I) = ‖μ‖² + 3
    b = torch.randn(20_000, 3, generator=gen) * 2 + torch.tensor([1.0, 2.0, 0.0])
    assert metrics.frechet_distance(a, b) == pytest.approx(5.0 + 3.0, rel=0.03)


def test_precision_recall_reads_coverage_and_fidelity():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(600, 2, generator=gen)
    same = torch.randn(600, 2, generator=gen)
    p, r = metrics.precision_recall(real, same)
    assert p > 0.9 and r > 0.9
    far = torch.randn(600, 2, generator=gen) + 50
    assert metrics.precision_recall(real, far) == (0.0, 0.0)
    collapsed = real[:1].repeat(600, 1) + 0.01 * torch.randn(600, 2, generator=gen)   # mode collapse
    p, r = metrics.precision_recall(real, collapsed)
    assert p == 1.0 and r < 0.05


def test_toy_metrics_on_ground_truth_samples():
    m = fractal.mixture("A")
    gen = torch.Generator().manual_seed(5)
    threshold = metrics.support_threshold(m, n=50_000)
    truth = m.sample(20_000, generator=gen)
    assert metrics.off_support_fraction(truth, m, threshold) == pytest.approx(0.01, abs=0.004)
    other = fractal.mixture("B").sample(20_000, generator=gen)
    assert metrics.off_support_fraction(other, m, threshold) > 0.95     # B overlaps A only at the origin
    assert metrics.mean_log_likelihood(truth, m) > metrics.mean_log_likelihood(other, m) + 10
    shifted = truth + torch.tensor([0.3, 0.0])
    w_self = metrics.sliced_wasserstein(truth[:5000], m.sample(5000, generator=gen))
    w_shift = metrics.sliced_wasserstein(truth[:5000], shifted[5000:10000])
    assert w_self < 0.03 and w_shift > 0.15
    with pytest.raises(ValueError):
        metrics.sliced_wasserstein(truth[:10], truth[:11])


def test_toy_example_metrics_on_ground_truth_samples():
    """The toy example's four metrics (issue 22): exact samples score as the reference reports them
    (clamped mean 1.339, median 1.445, inside 0.987 at 16,384 samples), class B far worse."""
    m = fractal.mixture("A")
    gen = torch.Generator().manual_seed(6)
    outline = metrics.outline_threshold(m)
    g = torch.linspace(-1.6, 1.6, 400, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), dim=-1).reshape(-1, 2)
    assert outline == pytest.approx(float(m.log_prob(grid).max()) - 2.12 ** 2)
    truth, other = m.sample(16384, generator=gen), m.sample(16384, generator=gen)
    exact = metrics.toy_example_metrics(truth, m, outline, other)
    assert exact["clamped log p"] == pytest.approx(1.34, abs=0.04)
    assert exact["median log p"] == pytest.approx(1.445, abs=0.03)
    assert exact["inside"] == pytest.approx(0.987, abs=0.004)
    assert exact["sliced W1"] < 0.01
    b = fractal.mixture("B").sample(16384, generator=gen)
    wrong = metrics.toy_example_metrics(b, m, outline, other)
    assert wrong["clamped log p"] < -9 and wrong["inside"] < 0.05 and wrong["sliced W1"] > 0.3
    assert metrics.sliced_w1(truth + torch.tensor([0.2, 0.0]), other) > 0.1
    with pytest.raises(ValueError):
        metrics.sliced_w1(truth[:10], truth[:11])


def test_float32_exact_score_matches_float64():
    """Training targets use the float32 score (the toy example's precision): relative error ≪ 1 %."""
    m = fractal.mixture("A")
    gen = torch.Generator().manual_seed(7)
    sigma = (torch.randn(2048, generator=gen) * 1.5 - 2.3).exp()
    x = m.sample(2048, sigma, generator=gen)
    s64, s32 = m.score(x, sigma), m.score(x, sigma, torch.float32)
    assert s32.dtype == torch.float32
    rel = (s32.double() - s64.double()).norm(dim=1) / s64.double().norm(dim=1).clamp(min=1e-3)
    assert float(rel.max()) < 1e-3


def test_power_ema_matches_the_power_function_profile():
    """EDM2's power-function EMA: β_t = (1 − 1/t)^(γ+1), γ from the relative std (std 0.010 → γ ≈ 97)."""
    from evidence.training import PowerEMA
    net = torch.nn.Linear(2, 1, bias=False)
    ema = PowerEMA(net, 0.010)
    g = ema.gamma
    assert math.sqrt((g + 1) / (g + 2) ** 2 / (g + 3)) == pytest.approx(0.010, rel=1e-9)
    assert g == pytest.approx(96.995, abs=0.01)
    with torch.no_grad():
        net.weight.fill_(2.0)
    ema.update(net)                                  # t = 1: β = 0, the average is the weights themselves
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 2.0))
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema.update(net)                                  # t = 2: β = (1/2)^(γ+1) ≈ 0
    beta = 0.5 ** (g + 1)
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 2.0 * beta))
