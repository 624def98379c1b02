"""The 2D fractal Gaussian mixture of the autoguidance toy example, with exact heat-diffused density.

Written from the specification (Karras et al. 2024, NVlabs/edm2 `toy_example.py::gt`,
https://github.com/NVlabs/edm2): each class is a binary tree of branches, depth 0-6, each
branch 8 anisotropic Gaussians along its length; classes A and B start at one origin at angles π/4 and
5π/4; one RandomState(2) feeds A then B. Heat diffusion to noise level σ adds σ²I to every covariance,
so p(x; σ), ∇ log p(x; σ) and exact samples of x_σ are all closed form.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

ORIGIN = (0.0030, 0.0325)
SCALE = (1.3136, 1.3844)
DEPTH = 7
SEED = 2


def _components(seed: int = SEED) -> list[tuple[str, float, np.ndarray, np.ndarray]]:
    """(class, weight, mean, covariance) for both classes, in the order the shared RNG produces them."""
    rnd = np.random.RandomState(seed)
    scale = np.asarray(SCALE)
    comps: list[tuple[str, float, np.ndarray, np.ndarray]] = []

    def branch(cls: str, depth: int, pos: np.ndarray, angle: float) -> None:
        if depth >= DEPTH:
            return
        d = np.array([math.cos(angle), math.sin(angle)])
        length = 0.292 * 0.8 ** depth * (rnd.randn() * 0.2 + 1)
        thick = 0.2 * 0.8 ** depth / length
        size = scale * length * 0.06
        along = np.outer(d, d)
        cov = (along + (np.eye(2) - along) * thick ** 2) * np.outer(size, size)
        for t in np.linspace(0.07, 0.93, 8):
            comps.append((cls, length * 0.5 ** depth, (pos + d * length * t) * scale, cov))
        for sign in (1, -1):   # the child's angle is drawn just before its subtree is built
            branch(cls, depth + 1, pos + d * length, angle + sign * 0.7 ** depth * (rnd.randn() * 0.2 + 1))

    branch("A", 0, np.asarray(ORIGIN), math.pi * 0.25)
    branch("B", 0, np.asarray(ORIGIN), math.pi * 1.25)
    return comps


@dataclass
class GaussianMixture:
    """p(x; σ) = Σ_k φ_k N(x; μ_k, Σ_k + σ²I) in 2D."""
    weights: torch.Tensor   # (K,) summing to 1
    means: torch.Tensor     # (K, 2)
    covs: torch.Tensor      # (K, 2, 2)

    def _terms(self, x: torch.Tensor, sigma: torch.Tensor | float, dtype: torch.dtype = torch.float64):
        """Per point and component: log φ_k N(x; μ_k, Σ_k + σ²I) and (Σ_k + σ²I)⁻¹(μ_k − x), closed-form 2×2."""
        x = x.to(dtype)
        s2 = torch.as_tensor(sigma, dtype=dtype).reshape(-1, 1) ** 2                  # (N or 1, 1)
        covs, means = self.covs.to(dtype), self.means.to(dtype)
        a = covs[:, 0, 0].unsqueeze(0) + s2
        b = covs[:, 0, 1].unsqueeze(0).expand_as(a)
        c = covs[:, 1, 1].unsqueeze(0) + s2
        det = a * c - b * b
        dx = means[:, 0].unsqueeze(0) - x[:, :1]                                     # μ − x: (N, K)
        dy = means[:, 1].unsqueeze(0) - x[:, 1:]
        px, py = (c * dx - b * dy) / det, (a * dy - b * dx) / det                    # (Σ + σ²I)⁻¹(μ − x)
        logn = (self.weights.log().to(dtype).unsqueeze(0) - 0.5 * (dx * px + dy * py) - 0.5 * det.log()
                - math.log(2 * math.pi))
        return logn, torch.stack([px, py], dim=-1)

    def component_log_densities(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """log φ_k + log N(x; μ_k, Σ_k + σ²I): (N, K), in float64."""
        return self._terms(x, sigma)[0]

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0, chunk: int = 4096) -> torch.Tensor:
        """log p(x; σ) for points (N, 2)."""
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        parts = []
        for i in range(0, x.shape[0], chunk):
            s = sig if sig.numel() == 1 else sig[i:i + chunk]
            parts.append(torch.logsumexp(self.component_log_densities(x[i:i + chunk], s), dim=1))
        return torch.cat(parts).float()

    def score(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """∇_x log p(x; σ) = Σ_k r_k (Σ_k + σ²I)⁻¹ (μ_k − x), r the component responsibilities (float32 is
        the toy example's precision and about twice as fast: training targets use it)."""
        logn, pull = self._terms(x, sigma, dtype)
        resp = torch.softmax(logn, dim=1)
        return (resp.unsqueeze(-1) * pull).sum(1).to(x.dtype)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The exact denoiser E[x_0 | x_σ] = x + σ² ∇ log p(x; σ) (Tweedie)."""
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
        return x + s ** 2 * self.score(x, sigma, dtype)

    def sample(self, n: int, sigma: torch.Tensor | float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples of x_σ = x_0 + σ·ε."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)[k]
        z = torch.randn(n, 2, 1, generator=generator, dtype=torch.float64)
        x = self.means[k] + (chol @ z).squeeze(-1)
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        return (x + s * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()


_CACHE: dict[str, GaussianMixture] = {}


def mixture(classes: str = "A") -> GaussianMixture:
    """The ground truth for 'A', 'B' or 'AB' (weights renormalised over the selected components)."""
    if classes not in _CACHE:
        sel = [c for c in _components() if c[0] in classes]
        w = torch.tensor([c[1] for c in sel], dtype=torch.float64)
        _CACHE[classes] = GaussianMixture(w / w.sum(), torch.tensor(np.stack([c[2] for c in sel])),
                                          torch.tensor(np.stack([c[3] for c in sel])))
    return _CACHE[classes]
