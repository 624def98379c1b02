"""The two benchmark settings: how to sample each through comfy.sample, and how to score the samples."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import fractal, metrics, mnist_data
from .comfy_models import comfy, demo_mnist, mnist_patcher, toy_patcher
from .networks import DigitClassifier, toy_context
from .training import WEIGHTS


def _load_state(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: train it (see benchmarks/train_mnist.py, benchmarks/train_toy.py)")
    import comfy.utils
    return comfy.utils.load_torch_file(str(path))


@dataclass
class Setting:
    """One dataset: its model, sampler and metrics (higher_is_better says how to read each)."""
    name: str
    sampler: str
    scheduler: str
    steps: int
    higher_is_better: dict[str, bool]
    model: object = field(default=None, repr=False)

    def sample(self, model, cfg: float, seed: int, n: int, steps: int) -> torch.Tensor:
        """n samples from `model` at the sampler's cfg, as KSampler draws them (comfy.sample)."""
        raise NotImplementedError

    def score(self, samples: torch.Tensor, seed: int) -> dict[str, float]:
        """Every metric of `higher_is_better` for these samples."""
        raise NotImplementedError

    def reference(self, seed: int, n: int) -> torch.Tensor:
        """n real samples, scored like generated ones (what perfect looks like)."""
        raise NotImplementedError


class MNISTSetting(Setting):
    """Class-conditional MNIST: n samples, digits balanced; features of the evaluation classifier.

    `size`: the model's resolution (16, or 32 = native 28×28 padded); samples are scored as 16×16 digits."""

    def __init__(self, weights: Path = WEIGHTS / "mnist-main.safetensors",
                 classifier: Path = WEIGHTS / "mnist-classifier-eval.safetensors", name: str = "mnist",
                 size: int = mnist_data.SIZE):
        super().__init__(name, "euler", "normal", 20,
                         {"FD": False, "accuracy": True, "precision": True, "recall": True})
        self.size = size
        self.model = mnist_patcher(weights)
        self.classifier = DigitClassifier().eval()
        self.classifier.load_state_dict(_load_state(classifier))
        self.split = split = mnist_data.load_split()
        self.heldout = mnist_data.to_unit(split.test_images)
        self.train = mnist_data.to_unit(split.train_images)
        with torch.no_grad():
            self.heldout_features = self.classifier.features(self.heldout)

    @staticmethod
    def labels(n: int) -> list[int]:
        return [i % 10 for i in range(n)]

    def sample(self, model, cfg, seed, n, steps):
        return mnist_data.to_eval(mnist_data.from_latent(self.sample_latent(model, cfg, seed, n, steps)))

    def sample_latent(self, model, cfg, seed, n, steps) -> torch.Tensor:
        """The sampler's output latents (N, 3, size, size) in [-1, 1] (what the MNIST refiner trains on)."""
        latent = torch.zeros(n, 3, self.size, self.size)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        positive = [[demo_mnist.digit_context(self.labels(n)), {}]]
        negative = [[demo_mnist.digit_context([demo_mnist.NULL]), {}]]
        return comfy.sample.sample(model, noise, steps, cfg, self.sampler, self.scheduler, positive, negative,
                                   latent, seed=seed, disable_pbar=True)

    def reference(self, seed, n):
        """n real training digits, balanced like the samples (the 'data' row: what perfect looks like)."""
        gen = torch.Generator().manual_seed(1000 + seed)
        picks = []
        for label in self.labels(n):
            idx = (self.split.train_labels == label).nonzero().flatten()
            picks.append(idx[torch.randint(len(idx), (1,), generator=gen)].item())
        return self.train[picks]

    def score(self, samples, seed):
        with torch.no_grad():
            feats = self.classifier.features(samples)
            logits = self.classifier.head(feats)
        n = samples.shape[0]
        real = self.heldout_features[torch.randperm(len(self.heldout_features),
                                                    generator=torch.Generator().manual_seed(seed))[:n]]
        precision, recall = metrics.precision_recall(real, feats)
        return {"FD": metrics.frechet_distance(feats, self.heldout_features),
                "accuracy": metrics.accuracy(logits, torch.tensor(self.labels(n))),
                "precision": precision, "recall": recall}


class ToySetting(Setting):
    """The 2D fractal, class A (the autoguidance toy's setting): exact log-likelihood and support.

    protocol "own": pure noise at σ 10, Heun 32 steps on ComfyUI's Karras schedule (σ 10 → 0.002).
    protocol "toy-example": NVlabs/edm2 toy_example.py's `do_sample` — x_init = exact class-A samples
    diffused to σ 5 (x = a + 5·n), Heun 32 steps on the Karras schedule σ 5 → 0.002 (ρ 7) — through
    comfy.sample.sample_custom. `extended` adds the toy example's metrics (see metrics.TOY_EXAMPLE_METRICS).
    """

    SIGMA_MAX_TOY_EXAMPLE = 5.0

    def __init__(self, weights: Path = WEIGHTS / "toy-main.safetensors", name: str = "toy", protocol: str = "own",
                 extended: bool = False):
        metrics_used = {"log-likelihood": True, "off-support": False, "sliced W2": False}
        if extended:
            metrics_used |= metrics.TOY_EXAMPLE_METRICS
        super().__init__(name, "heun", "karras", 32, metrics_used)
        if protocol not in ("own", "toy-example"):
            raise ValueError(f"unknown toy protocol {protocol!r}")
        self.protocol, self.extended = protocol, extended
        self.note = (f"Model `{weights.stem}`. " + (
            "Protocol: pure noise at σ 10, ComfyUI's Karras schedule σ 10 → 0.002." if protocol == "own" else
            "Protocol: the toy example's — x_init = exact class-A samples + 5·noise, Karras σ 5 → 0.002 (ρ 7)."))
        self.model = toy_patcher(weights)
        self.gt = fractal.mixture("A")
        self.threshold = metrics.support_threshold(self.gt)
        self.outline = metrics.outline_threshold(self.gt) if extended else None

    def sample(self, model, cfg, seed, n, steps):
        positive = [[toy_context(torch.zeros(1, dtype=torch.int64)), {}]]
        negative = [[toy_context(torch.full((1,), 2, dtype=torch.int64)), {}]]
        gen = torch.Generator().manual_seed(seed)
        if self.protocol == "own":
            latent = torch.zeros(n, 2, 1, 1)
            noise = torch.randn(latent.shape, generator=gen)
            out = comfy.sample.sample(model, noise, steps, cfg, self.sampler, self.scheduler, positive, negative,
                                      latent, seed=seed, disable_pbar=True)
            return out.reshape(n, 2)
        # toy example: ComfyUI starts at latent + σ_0·noise (σ_0 = 5 is below the model's σ_max 10, so no
        # max-denoise rescaling); the latent is an exact class-A sample, so x_init = a + 5·n exactly.
        start = self.gt.sample(n, generator=gen).reshape(n, 2, 1, 1)
        noise = torch.randn(start.shape, generator=gen)
        # comfy.sample loads comfy.samplers and comfy.k_diffusion.sampling
        sigmas = comfy.k_diffusion.sampling.get_sigmas_karras(steps, 0.002, self.SIGMA_MAX_TOY_EXAMPLE, rho=7.0)
        out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object(self.sampler), sigmas,
                                         positive, negative, start, seed=seed, disable_pbar=True)
        return out.reshape(n, 2)

    def reference(self, seed, n):
        return self.gt.sample(n, generator=torch.Generator().manual_seed(1000 + seed))

    def score(self, samples, seed):
        truth = self.gt.sample(samples.shape[0], generator=torch.Generator().manual_seed(2000 + seed))
        scores = {"log-likelihood": metrics.mean_log_likelihood(samples, self.gt),
                  "off-support": metrics.off_support_fraction(samples, self.gt, self.threshold),
                  "sliced W2": metrics.sliced_wasserstein(samples, truth)}
        if self.extended:
            scores |= metrics.toy_example_metrics(samples, self.gt, self.outline, truth, seed)
        return scores


class MNISTUncondSetting(MNISTSetting):
    """The unconditional MNIST model (always the null token): FD, precision and recall (no labels to check)."""

    def __init__(self, weights: Path = WEIGHTS / "mnist-uncond.safetensors", name: str = "mnist-uncond",
                 size: int = mnist_data.SIZE):
        super().__init__(weights, size=size)
        self.name = name
        self.higher_is_better = {"FD": False, "precision": True, "recall": True}

    @staticmethod
    def labels(n: int) -> list[int]:
        return [demo_mnist.NULL] * n

    def reference(self, seed, n):
        gen = torch.Generator().manual_seed(1000 + seed)
        return self.train[torch.randint(len(self.train), (n,), generator=gen)]

    def score(self, samples, seed):
        scores = super().score(samples, seed)
        scores.pop("accuracy")
        return scores


def mnist_native() -> MNISTSetting:
    """The native-resolution model (28×28 digits padded to 32×32, attention at 16×16 and 8×8), scored like the
    16×16 model: samples cropped to the digit and resized to 16×16 for the same evaluation classifier."""
    return MNISTSetting(WEIGHTS / "mnist-main-28.safetensors", name="mnist-28", size=mnist_data.NATIVE)


def mnist_uncond_native() -> MNISTUncondSetting:
    """The native-resolution unconditional model (`mnist-uncond-28`), scored as `mnist-uncond` scores its samples."""
    return MNISTUncondSetting(WEIGHTS / "mnist-uncond-28.safetensors", "mnist-uncond-28", mnist_data.NATIVE)


def mnist_dit() -> MNISTSetting:
    """The DiT (ComfyUI's Qwen-Image transformer, 8 joint-attention blocks on a 16×16 token grid, rectified flow) at
    32×32, scored as `mnist-28` scores its samples. Euler 20 steps on the normal schedule, as every MNIST setting."""
    setting = MNISTSetting(WEIGHTS / "mnist-dit-28.safetensors", name="mnist-dit", size=mnist_data.NATIVE)
    setting.note = ("Model `mnist-dit-28`: Qwen-Image transformer, 8 blocks, width 128, patch 2 (16×16 tokens), "
                    "rectified flow (σ 1 → 0).")
    return setting


def mnist_dit_seeded(seed: int) -> MNISTSetting:
    """The same DiT trained from another seed for as many iterations (`mnist-dit-28-s<seed>`): whether the
    per-block PAG sweep of `mnist-dit`, and the preset chosen from it, hold on other models of the same recipe."""
    name = f"mnist-dit-s{seed}"
    setting = MNISTSetting(WEIGHTS / f"mnist-dit-28-s{seed}.safetensors", name=name, size=mnist_data.NATIVE)
    setting.note = f"Model `mnist-dit-28-s{seed}`: `mnist-dit-28`'s recipe and iterations (1,382) from seed {seed}."
    return setting


def toy_main() -> ToySetting:
    """The toy setting of the quality benchmark: the toy example's class-A model, our sampling protocol."""
    return ToySetting(WEIGHTS / "toy-a-main.safetensors", "toy", "own", extended=True)


def toy_reference_protocol() -> ToySetting:
    """The same model under the toy example's own protocol (x_init = a + 5·n, Heun 32, σ 5 → 0.002)."""
    return ToySetting(WEIGHTS / "toy-a-main.safetensors", "toy-ref", "toy-example", extended=True)


SETTINGS = {"toy": toy_main, "toy-ref": toy_reference_protocol, "mnist": MNISTSetting,
            "mnist-uncond": MNISTUncondSetting, "mnist-28": mnist_native, "mnist-uncond-28": mnist_uncond_native,
            "mnist-dit": mnist_dit, "mnist-dit-s1": lambda: mnist_dit_seeded(1),
            "mnist-dit-s2": lambda: mnist_dit_seeded(2)}
