"""Train the 2D fractal models on the CPU (seeded, progress bars), written to benchmarks/weights/.

    python3 scripts/host.py run-python benchmarks/train_toy.py [MODEL ...] [--iters N] [--out-dir DIR] [--quiet]

MODEL (all by default):
  a-main           class A only (no class input), MLP 64×4, 4096 iterations × 4096 — the toy example's main model
  a-weak           class A only, width 32, 512 iterations — the toy example's autoguidance guide
  ab-uncond        A∪B without a condition, width 32, 512 iterations — the toy example's CFG guide
  main             (earlier recipe) class-conditional denoiser (A, B, 20 % null → A∪B), MLP 64×4, 4096 iterations
  weak             (earlier recipe) the same with width 32 trained for 512 iterations
  uncond           (earlier recipe) A∪B through the null token, width 32, 512 iterations
  classifier-linear, classifier-mlp   noisy classifiers p(A|x_σ, σ) for classifier/loss guidance
Denoisers (log-density MLPs, networks.ToyDenoiser) are trained inside ComfyUI's EDM model (σ_data
0.5) against the *exact* denoiser of the heat-diffused mixture, E[x_0|x_σ] = x + σ²∇log p(x;σ) — the
toy example's exact score matching — with σ ~ lognormal(−2.3, 1.5), Adam(0.9, 0.99) at 1e-2/√max(i/512, 1).
Recipe "toy-example" (a-main, a-weak, ab-uncond: NVlabs/edm2 toy_example.py's `do_train` defaults):
batch 4096, loss σ²·mean‖∇log p_net − ∇log p‖² = mean‖D_net − D‖²/σ², power-function EMA (std 0.010), one
distribution per model. Recipe "earlier" (main, weak, uncond; kept for the null-token CFG, ICG and flow
refiner rows): batch 2048, EDM's loss weight (σ² + σ_d²)/(σσ_d)² on ‖D_net − D‖², EMA 0.98, class input.
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
from evidence.networks import TOY_CLASSES, TOY_CONTEXT, ToyClassifier, toy_context  # noqa: E402
from evidence.training import EMA, WEIGHTS, PowerEMA, progress, save_weights  # noqa: E402

P_MEAN, P_STD, SIGMA_DATA = -2.3, 1.5, 0.5
BATCH = 2048                   # the earlier recipe's batch (and the classifiers')
REF_BATCH, REF_EMA_STD = 4096, 0.010
# name: hidden, layers, iterations, data, seed, recipe. data "A" / "AB": one distribution, no class input;
# a float: class-conditional A / B with that fraction of null-token rows drawn from A∪B (1.0 = null only).
DENOISERS = {
    "a-main": (64, 4, 4096, "A", 0, "toy-example"),
    "a-weak": (32, 4, 512, "A", 0, "toy-example"),       # toy_example.py: clsA-layers04-dim32/iter0512
    "ab-uncond": (32, 4, 512, "AB", 0, "toy-example"),   # toy_example.py: clsAB-layers04-dim32/iter0512
    "main": (64, 4, 4096, 0.2, 0, "earlier"),
    "weak": (32, 4, 512, 0.2, 1, "earlier"),
    "uncond": (32, 4, 512, 1.0, 2, "earlier"),
}
CLASSIFIERS = {"classifier-linear": (0, 2000, 3), "classifier-mlp": (64, 2000, 4)}  # hidden, iterations, seed


def data_hash() -> str:
    """sha256 of the mixture's parameters: the 2D models' training data, fully determined by them."""
    m = fractal.mixture("AB")
    return hashlib.sha256(
        torch.cat([m.weights.flatten(), m.means.flatten(), m.covs.flatten()]).numpy().tobytes()).hexdigest()


def single_batch(n: int, classes: str, gen: torch.Generator):
    """Points x_σ of one distribution ('A' or 'AB') and their exact denoiser target (float32, as the toy example)."""
    sigma = (torch.randn(n, generator=gen) * P_STD + P_MEAN).exp()
    gt = fractal.mixture(classes)
    x = gt.sample(n, sigma, generator=gen)
    return x, gt.denoise(x, sigma, torch.float32), sigma


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
    hidden, layers, default_iters, data, seed, recipe = DENOISERS[name]
    iters = iters or default_iters
    single = isinstance(data, str)              # one distribution: no class input (the toy example's model)
    context = 0 if single else TOY_CONTEXT
    batch = REF_BATCH if recipe == "toy-example" else BATCH
    torch.manual_seed(seed)
    model = toy_base_model(hidden, layers, context)
    net = model.diffusion_model
    net.train().requires_grad_(True)       # newer ComfyUI builds its layers' parameters frozen
    opt = torch.optim.Adam(net.parameters(), betas=(0.9, 0.99))
    ema = PowerEMA(net, REF_EMA_STD) if recipe == "toy-example" else EMA(net, 0.98)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    bar = progress(iters, f"toy {name}", quiet)
    with compat.gradients():        # ComfyUI's ops differentiate only in training mode (0.33+)
        for i in bar:
            opt.param_groups[0]["lr"] = lr_at(i)
            if single:
                x, target, sigma = single_batch(batch, data, gen)
                cond = None
            else:
                x, target, labels, sigma = noisy_batch(batch, data, gen)
                cond = toy_context(labels)
            d = model.apply_model(x.view(-1, 2, 1, 1), sigma, c_crossattn=cond).view(-1, 2)
            if recipe == "toy-example":     # σ²·mean_dims(score error²), as toy_example.py's do_train
                loss = ((d - target).square().mean(1) / sigma ** 2).mean()
            else:
                weight = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
                loss = (weight * (d - target).square().sum(1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(net)
            if i % 64 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    extra = {"classes": data} if single else {"null_fraction": data}
    return save_weights(out_dir / f"toy-{name}.safetensors", ema.model.state_dict(), "guidekit-toy-denoiser",
                        time.monotonic() - t0, data_hash(), model=name, iterations=iters, batch=batch, seed=seed,
                        arch={"hidden": hidden, "layers": layers, "context": context}, recipe=recipe,
                        ema=f"power std {REF_EMA_STD}" if recipe == "toy-example" else "constant 0.98", **extra)


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
