"""Small networks of the evidence harness (plain torch): 2D denoiser and classifiers, MNIST classifiers.

The 2D denoiser is the `diffusion_model` inside a ComfyUI EDM model: it sees ComfyUI's EDM inputs
c_in·x = x/√(σ²+σ_d²) and c_noise = log(σ)/4 (the edm2 toy model's input features) plus a class
one-hot, and returns F with D = c_skip·x + c_out·F (Karras et al. 2022, Table 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from guidekit.guidance.networks import DigitCNN

TOY_CLASSES = ("A", "B")          # index 2 of the one-hot is the null (unconditional) token
TOY_CONTEXT = len(TOY_CLASSES) + 1


class MPLinear(nn.Module):
    """Magnitude-preserving linear layer (Karras et al. 2024, EDM2 §3): unit-norm weight rows / √fan_in."""

    def __init__(self, fan_in: int, fan_out: int, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:                       # forced weight normalisation keeps the raw weights unit-norm
            with torch.no_grad():
                self.weight.copy_(_unit_rows(self.weight))
        return x @ (_unit_rows(self.weight) / self.weight.shape[1] ** 0.5).t()


def _unit_rows(w: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    return w / (eps + w.norm(dim=1, keepdim=True) / w.shape[1] ** 0.5)


class ToyDenoiser(nn.Module):
    """Log-density MLP for 2D points as a (N, 2, 1, 1) latent, class one-hot via `context`.

    With `context=0` the class input is dropped: a model of one distribution (class A, or A∪B), the toy
    example's own input layout. As the autoguidance toy model: the net outputs log p̃(x; σ) = g·mean(y²)/σ − ½‖x̂‖² with
    x̂ = x/√(σ²+σ_d²), y an MLP of [x̂, log σ/4, 1, class]; the denoiser is D = x + σ²∇_x log p̃ (Tweedie).
    ComfyUI's EDM wrapper then forms D = c_skip·x + c_out·F, so forward returns F = (D − c_skip·x)/c_out.
    """

    def __init__(self, hidden: int = 64, layers: int = 4, sigma_data: float = 0.5, context: int = TOY_CONTEXT,
                 device=None, operations=None, **_ignored):
        super().__init__()
        self.sigma_data = sigma_data
        self.context = context              # one-hot width; 0 = one class only (the toy example's [x̂, log σ/4, 1])
        self.layers = nn.ModuleList([MPLinear(2 + 2 + context, hidden, device=device)]
                                    + [MPLinear(hidden, hidden, device=device) for _ in range(layers)])
        self.gain = nn.Parameter(torch.zeros([], device=device))
        self.dtype = torch.float32

    def log_density(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p(x; σ | class) for points (N, 2), σ (N, 1), one-hot (N, 3) (ignored if context=0)."""
        xn = x / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        features = [xn, sigma.log() / 4, torch.ones_like(sigma)] + ([context] if self.context else [])
        y = self.layers[0](torch.cat(features, dim=1))
        for layer in self.layers[1:]:
            y = layer(F.silu(y) / 0.596)          # 0.596: SiLU's output magnitude on unit-variance input
        return y.square().mean(1) * self.gain / sigma.squeeze(1) - 0.5 * xn.square().sum(1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                **_kwargs) -> torch.Tensor:
        n = x.shape[0]
        context = (null_context(n) if context is None else context).reshape(n, -1)
        sigma = (timesteps.reshape(n, 1).float() * 4).exp()                     # ComfyUI EDM: t = log(σ)/4
        scale = (sigma ** 2 + self.sigma_data ** 2).sqrt()
        with torch.inference_mode(False), torch.enable_grad():                 # the score is ∇ of the net
            pts = (x.reshape(n, 2).float() * scale).clone().detach().requires_grad_(True)
            logp = self.log_density(pts, sigma.clone(), context.float().clone())
            score, = torch.autograd.grad(logp.sum(), pts, create_graph=self.training)
        if not self.training:
            score, pts = score.detach(), pts.detach()
        denoised = pts + sigma ** 2 * score
        c_skip = self.sigma_data ** 2 / scale ** 2
        c_out = sigma * self.sigma_data / scale
        return ((denoised - c_skip * pts) / c_out).reshape(n, 2, 1, 1)


def toy_context(labels: torch.Tensor) -> torch.Tensor:
    """Class indices (0 = A, 1 = B, 2 = null) → one-hot context (N, 1, 3)."""
    return F.one_hot(labels, TOY_CONTEXT).float().unsqueeze(1)


def null_context(n: int) -> torch.Tensor:
    return toy_context(torch.full((n,), len(TOY_CLASSES), dtype=torch.int64))


class ToyClassifier(nn.Module):
    """Noisy classifier p(class | x_σ, σ) on [x/√(σ²+σ_d²), log σ / 4]: linear or a small MLP."""

    def __init__(self, hidden: int = 0, sigma_data: float = 0.5):
        super().__init__()
        self.sigma_data = sigma_data
        if hidden:
            self.net = nn.Sequential(nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, len(TOY_CLASSES)))
        else:
            self.net = nn.Linear(3, len(TOY_CLASSES))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(-1, 1).expand(x.shape[0], 1)
        features = torch.cat([x / (sigma ** 2 + self.sigma_data ** 2).sqrt(), sigma.log() / 4], dim=1)
        return self.net(features)


class DigitClassifier(nn.Module):
    """CNN on 16×16 grey digits in [0, 1]; `features` is the penultimate layer (FD and k-NN space)."""

    def __init__(self, width: int = 32, feature_dim: int = 128, dropout: float = 0.3):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * w * 16, feature_dim), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x)))


SmallDigitClassifier = DigitCNN    # the guidance network lives in the pack (GuideKit Guidance Network Loader)


CLASSIFIERS = {"eval-classifier": DigitClassifier, "guidance-classifier": SmallDigitClassifier}


def random_affine(x: torch.Tensor, gen: torch.Generator, degrees: float = 12.0, shift: float = 0.12,
                  scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """Per-image random rotation / shift / zoom (bilinear), the evaluation classifier's augmentation."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * degrees * torch.pi / 180
    s = torch.empty(n).uniform_(*scale, generator=gen)
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
