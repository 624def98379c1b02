"""Train the 2D fractal models on the CPU (seeded, progress bars), written to benchmarks/weights/.

    python3 scripts/host.py run-python benchmarks/train_toy.py [MODEL ...] [--iters N] [--out-dir DIR] [--quiet]

MODEL (all by default; about 15 minutes in all on 2 CPU cores):
  main             class-conditional denoiser (A, B, 20 % null → the A∪B mixture), MLP 64×4, 4096 iterations
  weak             the same with width 32 trained for 512 iterations (the autoguidance toy's guiding model)
  uncond           unconditional denoiser of A∪B, width 32, 512 iterations (the toy example's CFG guide)
  classifier-linear, classifier-mlp   noisy classifiers p(A|x_σ, σ) for classifier/loss guidance
Denoisers (log-density MLPs, networks.ToyDenoiser) are trained inside ComfyUI's EDM model (σ_data
0.5) against the *exact* denoiser of the heat-diffused mixture, E[x_0|x_σ] = x + σ²∇log p(x;σ) — the
toy example's exact score matching — with σ ~ lognormal(−2.3, 1.5), EDM's loss weight
(σ² + σ_d²)/(σσ_d)², Adam(0.9, 0.99) at 1e-2/√max(i/512, 1), EMA of weights.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from guidekit.cli.inprocess import import_comfy

import_comfy()                   # ComfyUI in-process (CPU) before anything below imports it

from evidence import fractal  # noqa: E402
from evidence.networks import TOY_CLASSES, ToyClassifier, toy_context  # noqa: E402
from evidence.training import EMA, WEIGHTS, progress, save_weights  # noqa: E402

P_MEAN, P_STD, SIGMA_DATA = -2.3, 1.5, 0.5
BATCH = 2048
DENOISERS = {  # name: hidden, layers, iterations, null fraction (1.0 = unconditional), seed
    "main": (64, 4, 4096, 0.2, 0),
    "weak": (32, 4, 512, 0.2, 1),       # the toy example's guiding model: width 32, 512 iterations
    "uncond": (32, 4, 512, 1.0, 2),     # the toy example's CFG guiding model: A∪B, width 32, 512 iterations
}
CLASSIFIERS = {"classifier-linear": (0, 2000, 3), "classifier-mlp": (64, 2000, 4)}  # hidden, iterations, seed


def data_hash() -> str:
    """sha256 of the mixture's parameters: the 2D models' training data, fully determined by them."""
    m = fractal.mixture("AB")
    return hashlib.sha256(
        torch.cat([m.weights.flatten(), m.means.flatten(), m.covs.flatten()]).numpy().tobytes()).hexdigest()


def noisy_batch(n: int, null_fraction: float, gen: torch.Generator):
    """Points x_σ with labels (0 A, 1 B, 2 null) and the exact denoiser target for their label."""
    sigma = (torch.randn(n, generator=gen) * P_STD + P_MEAN).exp()
    n_null = int(round(n * null_fraction))
    counts = {"AB": n_null, "A": (n - n_null) // 2, "B": n - n_null - (n - n_null) // 2}
    xs, targets, labels, sig = [], [], [], []
    start = 0
    for cls, count in counts.items():
        if count == 0:
            continue
        s = sigma[start:start + count]
        start += count
        gt = fractal.mixture(cls)
        x = gt.sample(count, s, generator=gen)
        xs.append(x)
        targets.append(gt.denoise(x, s))
        label = len(TOY_CLASSES) if cls == "AB" else TOY_CLASSES.index(cls)
        labels.append(torch.full((count,), label, dtype=torch.int64))
        sig.append(s)
    return torch.cat(xs), torch.cat(targets), torch.cat(labels), torch.cat(sig)


def lr_at(i: int, base: float = 1e-2) -> float:
    return base / max(i / 512, 1) ** 0.5     # the toy example's inverse-square-root decay


def train_denoiser(name: str, iters: int | None, out_dir: Path, quiet: bool) -> Path:
    from guidekit.nodes import compat

    from evidence.comfy_models import toy_base_model
    hidden, layers, default_iters, null_fraction, seed = DENOISERS[name]
    iters = iters or default_iters
    torch.manual_seed(seed)
    model = toy_base_model(hidden, layers)
    net = model.diffusion_model
    net.train().requires_grad_(True)       # newer ComfyUI builds its layers' parameters frozen
    opt = torch.optim.Adam(net.parameters(), betas=(0.9, 0.99))
    ema = EMA(net, 0.98)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    bar = progress(iters, f"toy {name}", quiet)
    with compat.gradients():        # ComfyUI's ops differentiate only in training mode (0.33+)
        for i in bar:
            opt.param_groups[0]["lr"] = lr_at(i)
            x, target, labels, sigma = noisy_batch(BATCH, null_fraction, gen)
            d = model.apply_model(x.view(-1, 2, 1, 1), sigma, c_crossattn=toy_context(labels)).view(-1, 2)
            weight = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
            loss = (weight * (d - target).square().sum(1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(net)
            if i % 64 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    return save_weights(out_dir / f"toy-{name}.safetensors", ema.model.state_dict(), "guidekit-toy-denoiser",
                        time.monotonic() - t0, data_hash(), model=name, iterations=iters, batch=BATCH, seed=seed,
                        arch={"hidden": hidden, "layers": layers}, null_fraction=null_fraction)


def train_classifier(name: str, iters: int | None, out_dir: Path, quiet: bool) -> Path:
    hidden, default_iters, seed = CLASSIFIERS[name]
    iters = iters or default_iters
    torch.manual_seed(seed)
    net = ToyClassifier(hidden)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    bar = progress(iters, f"toy {name}", quiet)
    for i in bar:
        opt.param_groups[0]["lr"] = lr_at(i, 3e-3)
        x, _, labels, sigma = noisy_batch(BATCH, 0.0, gen)
        loss = F.cross_entropy(net(x, sigma), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 64 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    with torch.no_grad():
        x, _, labels, sigma = noisy_batch(8192, 0.0, torch.Generator().manual_seed(99))
        small = sigma < 0.1
        acc = float((net(x, sigma).argmax(1) == labels)[small].float().mean())
    print(f"{name}: accuracy at σ < 0.1 = {acc:.4f}")
    return save_weights(out_dir / f"toy-{name}.safetensors", net.state_dict(), "guidekit-toy-classifier",
                        time.monotonic() - t0, data_hash(), model=name, iterations=iters, batch=BATCH, seed=seed,
                        arch={"hidden": hidden}, accuracy_sigma_below_0_1=f"{acc:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join([*DENOISERS, *CLASSIFIERS])}")
    parser.add_argument("--iters", type=int, help="override every model's iterations (smoke runs)")
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    unknown = [m for m in args.models if m not in DENOISERS and m not in CLASSIFIERS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join([*DENOISERS, *CLASSIFIERS])}")
    t0 = time.monotonic()
    for name in args.models or [*DENOISERS, *CLASSIFIERS]:
        train = train_denoiser if name in DENOISERS else train_classifier
        print(f"wrote {train(name, args.iters, args.out_dir, args.quiet)}")
    print(f"done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
