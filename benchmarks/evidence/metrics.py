"""Quality metrics (plain torch): Fréchet distance, k-NN precision/recall, and exact 2D metrics."""
from __future__ import annotations

import torch

from .fractal import GaussianMixture


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a^½ Σ_b Σ_a^½)^½) of Gaussians fitted to features (Heusel et al. 2017)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def _kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values          # k+1: the point itself is at distance 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): k-NN balls as the manifold estimate."""
    real, fake = real.double(), fake.double()
    r_real, r_fake = _kth_neighbour_radius(real, k), _kth_neighbour_radius(fake, k)
    d = torch.cdist(fake, real)                                  # (F, R)
    precision = (d <= r_real.unsqueeze(0)).any(1).double().mean()
    recall = (d.T <= r_fake.unsqueeze(0)).any(1).double().mean()
    return float(precision), float(recall)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def mean_log_likelihood(points: torch.Tensor, gt: GaussianMixture) -> float:
    """Mean log p(x) of samples under the exact class density (σ = 0)."""
    return float(gt.log_prob(points).mean())


def support_threshold(gt: GaussianMixture, mass: float = 0.99, n: int = 100_000, seed: int = 0) -> float:
    """log-density level whose super-level set holds `mass` of the distribution (from exact samples)."""
    ref = gt.log_prob(gt.sample(n, generator=torch.Generator().manual_seed(seed)))
    return float(ref.quantile(1 - mass))


def off_support_fraction(points: torch.Tensor, gt: GaussianMixture, threshold: float) -> float:
    """Fraction of samples outside the 99 %-mass region of the class density (ground truth: 0.01)."""
    return float((gt.log_prob(points) < threshold).double().mean())


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two equal-size point sets (fixed random directions)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError("sliced_wasserstein needs equal-size sets")
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = (a.double() @ dirs).sort(0)
    pb, _ = (b.double() @ dirs).sort(0)
    return float((pa - pb).square().mean().sqrt())


# The toy example's metrics (NVlabs/edm2 toy_example.py; issue 22's protocol): log p under the exact class
# density clamped at −10 (mean), its median, the fraction inside the plotted outline, and sliced W1.
TOY_EXAMPLE_METRICS = {"clamped log p": True, "median log p": True, "inside": True, "sliced W1": False}


def outline_threshold(gt: GaussianMixture, extent: float = 1.6, resolution: int = 400,
                      level: float = 2.12) -> float:
    """The toy example's outline: log p ≥ (max of log p over a resolution² grid on [−extent, extent]²) − level².

    toy_example.py draws the outline as the contour √(max − log p) = 2.12 of the class density.
    """
    g = torch.linspace(-extent, extent, resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), dim=-1).reshape(-1, 2)
    return float(gt.log_prob(grid).max()) - level ** 2


def sliced_w1(a: torch.Tensor, b: torch.Tensor, projections: int = 64, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two equal-size point sets: mean over random unit directions."""
    if a.shape[0] != b.shape[0]:
        raise ValueError("sliced_w1 needs equal-size sets")
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = (a.double() @ dirs).sort(0)
    pb, _ = (b.double() @ dirs).sort(0)
    return float((pa - pb).abs().mean())


def toy_example_metrics(points: torch.Tensor, gt: GaussianMixture, outline: float, truth: torch.Tensor,
                        seed: int = 0) -> dict[str, float]:
    """The four TOY_EXAMPLE_METRICS of `points` (exact samples `truth`, as many, for sliced W1)."""
    logp = gt.log_prob(points).double()
    return {"clamped log p": float(logp.clamp(min=-10).mean()), "median log p": float(logp.median()),
            "inside": float((logp >= outline).double().mean()), "sliced W1": sliced_w1(points, truth, seed=seed)}
