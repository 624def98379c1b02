"""Train GuideKit's MNIST models on the CPU (seeded, progress bars), written to benchmarks/weights/.

    python3 scripts/host.py run-python benchmarks/train_mnist.py MODEL [--iters N] [--out FILE] [--quiet]

MODEL (defaults measured on 2 CPU cores):
  main                 class-conditional UNet (ComfyUI's UNetModel), 15 % null-label dropout    ~14 min
  main-28              the same, native 28×28 padded to 32² (attention at 16² and 8²), batch 64 ~21 min
  dit-28               class-conditional DiT: ComfyUI's Qwen-Image transformer (8 joint-attention blocks),
                       32² pixels in 2×2 patches, rectified flow, 15 % null-label dropout          ~25 min
  dit-28-s1, dit-28-s2 the same DiT from seeds 1 and 2 (issue 20: do the best block and the preset hold
                       across seeds?)                                                           ~20 min each
  weak                 the same network trained 1/6 as long: the guiding model of autoguidance  ~2 min
  uncond               the same network, always the null token (unconditional model)            ~14 min
  eval-classifier      CNN on all 10,000 digits with random affine augmentation (metrics only)  ~1 min
  guidance-classifier  small CNN, clean training digits only (the off-the-shelf guidance net)   <1 min
  sims                 SIMS negative: mnist-main + a rank-8 LoRA fine-tuned (GuideKit SIMS LoRA's own
                       loop) on 2,000 of mnist-main's unguided samples, merged into full weights     ~3 min
  weak-28, uncond-28,  the same three companions of main-28 (autoguidance's guide, the unconditional
  sims-28              model of TSG and loss guidance, SIMS's negative) at 32²
Diffusion models: EPS prediction on SD's discrete schedule through ComfyUI's own BaseModel.apply_model
(the exact parametrisation sampling uses), loss ‖ε̂ − ε‖², Adam, EMA of weights. The DiT: rectified flow through
the same apply_model (ModelType.FLOW: x_σ = (1 − σ)·x0 + σ·n, σ logit-normal, loss ‖v̂ − (n − x0)‖²).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from guidekit.cli.inprocess import import_comfy

import_comfy()                   # ComfyUI in-process (CPU) before anything below imports it

from evidence import mnist_data  # noqa: E402
from evidence.networks import CLASSIFIERS, random_affine  # noqa: E402
from evidence.training import EMA, WEIGHTS, progress, save_weights  # noqa: E402

DIFFUSION = {  # name: iterations, label dropout (1.0 = always null), seed, resolution, batch, offset noise
    "main": (1500, 0.15, 0, mnist_data.SIZE, 128, 0.0),
    "weak": (250, 0.15, 1, mnist_data.SIZE, 128, 0.0),
    "uncond": (1500, 1.0, 2, mnist_data.SIZE, 128, 0.0),
    "main-28": (1600, 0.15, 0, mnist_data.NATIVE, 64, 0.1),   # 4× the pixels: half the batch, more updates
    "weak-28": (270, 0.15, 1, mnist_data.NATIVE, 64, 0.1),     # main-28's companions, as weak / uncond are main's
    "uncond-28": (1600, 1.0, 2, mnist_data.NATIVE, 64, 0.1),
}
# Offset noise (Guttenberg 2023): + offset·n per image, constant over its pixels. SD's schedule stops at σ 14.6, so
# the sampler's zero-mean start misses the digits' mean (background −1): at 32² the image mean's noise is σ/32, the
# offset 0.8 is 1.7 of it and the samples come out grey (mean 0.44 vs the data's 0.10); offset noise trains the
# model to correct the image mean.
FLOW = {  # DiT name: iterations, label dropout, seed, batch, learning rate, logit-normal σ (mean, std)
    "dit-28": (3000, 0.15, 0, 32, 1e-3, (0.0, 1.0)),
    "dit-28-s1": (1382, 0.15, 1, 32, 1e-3, (0.0, 1.0)),   # a second seed, dit-28's iterations (its 22-min budget)
    "dit-28-s2": (1382, 0.15, 2, 32, 1e-3, (0.0, 1.0)),   # a third: does the measured preset hold on it?
}
# Rectified flow starts sampling at σ = 1, pure noise (no σ_max short of it as SD's schedule), so the image mean
# needs no offset noise.
CLASSIFIER = {  # name: iterations, augmentation, use all digits, seed
    "eval-classifier": (1500, True, True, 3),
    "guidance-classifier": (300, False, False, 4),
}
SIMS = {"synthetic": 2000, "iterations": 200, "batch": 32, "learning_rate": 1e-3, "rank": 8, "seed": 5}
SIMS_BASE = {"sims": ("main", mnist_data.SIZE), "sims-28": ("main-28", mnist_data.NATIVE)}  # name: base, resolution
BATCH = 128
# what GuideKit Guidance Network Loader needs to build the guidance classifier from the file alone
LOADER_METADATA = {"guidance-classifier": {"arch": "guidekit:digit-cnn", "normalization": "[0,1]", "input_size": 16}}


def default_out(name: str) -> Path:
    """Diffusion models and the evaluation classifier in weights/; the guidance classifier in weights/networks/
    (the folder GuideKit Guidance Network Loader lists)."""
    if name in DIFFUSION or name in FLOW:
        return WEIGHTS / f"mnist-{name}.safetensors"
    folder = WEIGHTS / "networks" if name in LOADER_METADATA else WEIGHTS
    return folder / f"mnist-classifier-{name.split('-')[0]}.safetensors"


def init_unet(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI builds layers without init: PyTorch's default init for conv/linear, zero output conv."""
    torch.manual_seed(seed)
    for m in module.modules():
        for base in (torch.nn.Conv2d, torch.nn.Linear):
            if isinstance(m, base):
                base.reset_parameters(m)    # ComfyUI's ops override reset_parameters with a no-op
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and m.weight is not None:
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    zero_then_check(module, [module.out[-1]])


def zero_then_check(module: torch.nn.Module, zero: list[torch.nn.Module]) -> None:
    """Zero the output layers `zero` (a fresh model then predicts 0) and refuse a parameter left uninitialised."""
    for m in zero:
        torch.nn.init.zeros_(m.weight)
        torch.nn.init.zeros_(m.bias)
    bad = [n for n, p in module.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise RuntimeError(f"parameters left uninitialised: {bad[:5]}")


def step(loss: torch.Tensor, opt, net: torch.nn.Module, ema, bar, i: int) -> None:
    """One optimiser step with the gradient clipped to norm 1, the EMA updated, the loss shown every 50 steps."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    ema.update(net)
    if i % 50 == 0:
        bar.set_postfix(loss=f"{loss.item():.4f}")


def train_diffusion(name: str, iters: int, out: Path, quiet: bool, max_minutes: float | None = None) -> Path:
    """EPS training through ComfyUI's BaseModel; `max_minutes` stops early (the file records the iterations done)."""
    from guidekit.nodes import compat

    from evidence.comfy_models import demo_mnist
    _, dropout, seed, size, batch, offset = DIFFUSION[name]
    unet_config = demo_mnist.NATIVE_UNET if size == mnist_data.NATIVE else {}
    split = mnist_data.load_split()
    data = mnist_data.to_latent(mnist_data.to_unit(split.train_images, size))
    labels = split.train_labels
    model = demo_mnist.build_model(unet_config)
    model.project_to_grey = False          # fit the UNet's own output; the projection is for sampling
    net = model.diffusion_model
    init_unet(net, seed)
    net.train().requires_grad_(True)       # newer ComfyUI builds its layers' parameters frozen
    sigmas = model.model_sampling.sigmas.float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    ema = EMA(net, 0.995)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    bar = progress(iters, f"mnist {name}", quiet)
    with compat.gradients():        # ComfyUI's ops differentiate only in training mode (0.33+)
        for i in bar:
            if max_minutes is not None and time.monotonic() - t0 > 60 * max_minutes:
                print(f"time budget of {max_minutes:g} min reached after {i} of {iters} iterations")
                iters = i
                break
            opt.param_groups[0]["lr"] = 1e-3 * min(1.0, (i + 1) / 100)
            idx = torch.randint(len(data), (batch,), generator=gen)
            x0, y = data[idx], labels[idx].clone()
            y[torch.rand(batch, generator=gen) < dropout] = demo_mnist.NULL
            sigma = sigmas[torch.randint(len(sigmas), (batch,), generator=gen)]
            eps = torch.randn(x0.shape, generator=gen)
            if offset:
                eps = eps + offset * torch.randn(batch, 1, 1, 1, generator=gen)
            x = x0 + sigma.view(-1, 1, 1, 1) * eps
            denoised = model.apply_model(x, sigma, c_crossattn=demo_mnist.digit_context(y.tolist()))
            eps_hat = (x - denoised) / sigma.view(-1, 1, 1, 1)
            loss = F.mse_loss(eps_hat, eps)
            step(loss, opt, net, ema, bar, i)
    return save_weights(out, ema.model.state_dict(), demo_mnist.KIND, time.monotonic() - t0, split.sha256,
                        model=name, iterations=iters, batch=batch, offset_noise=offset, label_dropout=dropout,
                        seed=seed,
                        unet_config={**demo_mnist.MNIST_UNET, **unet_config}, prediction="eps",
                        schedule="sd-discrete-linear", resolution=f"{size}x{size}")


def init_dit(module: torch.nn.Module, seed: int) -> None:
    """PyTorch's default init for the linear layers, unit norms, and DiT's adaLN-Zero: every block's modulation
    and the output layer start at zero (each block the identity, the velocity 0)."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.Linear.reset_parameters(m)     # ComfyUI's ops override reset_parameters with a no-op
        elif type(m).__name__ in ("LayerNorm", "RMSNorm") and getattr(m, "weight", None) is not None:
            torch.nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                torch.nn.init.zeros_(m.bias)
    zero = [module.norm_out.linear, module.proj_out]
    zero += [b.img_mod[1] for b in module.transformer_blocks] + [b.txt_mod[1] for b in module.transformer_blocks]
    zero_then_check(module, zero)


def train_flow(name: str, iters: int, out: Path, quiet: bool, max_minutes: float | None = None) -> Path:
    """Rectified-flow training of the MNIST DiT through ComfyUI's BaseModel (FLOW: denoised = x − σ·v)."""
    from guidekit.nodes import compat, demo_mnist_dit

    from evidence.comfy_models import demo_mnist
    _, dropout, seed, batch, lr, (ln_mean, ln_std) = FLOW[name]
    split = mnist_data.load_split()
    data = mnist_data.to_latent(mnist_data.to_unit(split.train_images, mnist_data.NATIVE))
    labels = split.train_labels
    model = demo_mnist_dit.build_model()
    model.project_to_grey = False          # fit the network's own output; the projection is for sampling
    net = model.diffusion_model
    init_dit(net, seed)
    net.train().requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ema = EMA(net, 0.995)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    bar = progress(iters, f"mnist {name}", quiet)
    with compat.gradients():
        for i in bar:
            if max_minutes is not None and time.monotonic() - t0 > 60 * max_minutes:
                print(f"time budget of {max_minutes:g} min reached after {i} of {iters} iterations")
                iters = i
                break
            opt.param_groups[0]["lr"] = lr * min(1.0, (i + 1) / 100)
            idx = torch.randint(len(data), (batch,), generator=gen)
            x0, y = data[idx], labels[idx].clone()
            y[torch.rand(batch, generator=gen) < dropout] = demo_mnist.NULL
            sigma = torch.sigmoid(ln_mean + ln_std * torch.randn(batch, generator=gen))
            noise = torch.randn(x0.shape, generator=gen)
            s = sigma.view(-1, 1, 1, 1)
            x = (1 - s) * x0 + s * noise
            denoised = model.apply_model(x, sigma, c_crossattn=demo_mnist.digit_context(y.tolist()))
            loss = F.mse_loss((x - denoised) / s, noise - x0)
            step(loss, opt, net, ema, bar, i)
    return save_weights(out, ema.model.state_dict(), demo_mnist_dit.KIND, time.monotonic() - t0, split.sha256,
                        model=name, iterations=iters, batch=batch, learning_rate=lr, label_dropout=dropout, seed=seed,
                        dit_config=demo_mnist_dit.MNIST_DIT, prediction="velocity (rectified flow)",
                        schedule=f"flow, sigma = timestep in [0, 1], training sigma logit-normal({ln_mean}, {ln_std})",
                        resolution=f"{mnist_data.NATIVE}x{mnist_data.NATIVE}")


def train_classifier(name: str, iters: int, out: Path, quiet: bool) -> Path:
    _, augment, all_digits, seed = CLASSIFIER[name]
    split = mnist_data.load_split()
    images, labels = split.train_images, split.train_labels
    if all_digits:
        images, labels = torch.cat([images, split.test_images]), torch.cat([labels, split.test_labels])
    data = mnist_data.to_unit(images)
    torch.manual_seed(seed)
    net = CLASSIFIERS[name]()
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=iters)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    bar = progress(iters, f"mnist {name}", quiet)
    for i in bar:
        idx = torch.randint(len(data), (BATCH,), generator=gen)
        x, y = data[idx], labels[idx]
        if augment:
            x = random_affine(x, gen)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if i % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    with torch.no_grad():
        acc = (net(mnist_data.to_unit(split.test_images)).argmax(1) == split.test_labels).float().mean().item()
    print(f"{name}: accuracy on the held-out digits {acc:.4f}" + (" (seen in training)" if all_digits else ""))
    return save_weights(out, net.state_dict(), f"guidekit-mnist-{name}", time.monotonic() - t0, split.sha256,
                        model=name, iterations=iters, batch=BATCH, augmentation=augment, seed=seed,
                        trained_on="all 10000 digits" if all_digits else "training split (8000)",
                        heldout_accuracy=f"{acc:.4f}", **LOADER_METADATA.get(name, {}))


def train_sims(name: str, iters: int, out: Path, quiet: bool, synthetic: int) -> Path:
    """SIMS (Alemohammad et al. 2024): synthesize a set with the base model, fine-tune a LoRA on it, merge."""
    from guidekit.nodes.sims import train_lora

    from evidence.comfy_models import comfy, demo_mnist, mnist_patcher
    cfg = {**SIMS, "synthetic": synthetic}
    base_name, size = SIMS_BASE[name]
    base_path = WEIGHTS / f"mnist-{base_name}.safetensors"
    base = mnist_patcher(base_path)
    labels = [i % 10 for i in range(cfg["synthetic"])]
    positive = [[demo_mnist.digit_context(labels), {}]]
    negative = [[demo_mnist.digit_context([demo_mnist.NULL]), {}]]
    t0 = time.monotonic()
    latent = torch.zeros(cfg["synthetic"], 3, size, size)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(cfg["seed"]))
    with torch.inference_mode():
        synthetic = comfy.sample.sample(base, noise, 20, 1.0, "euler", "normal", positive, negative, latent,
                                        seed=cfg["seed"], disable_pbar=quiet)
    print(f"synthetic set: {cfg['synthetic']} unguided samples of mnist-{base_name} in {time.monotonic() - t0:.0f} s")
    bar = progress(iters, "mnist sims LoRA", quiet)
    tuned, _, losses = train_lora(base, synthetic, positive, iters, cfg["batch"], cfg["learning_rate"], cfg["rank"],
                                  cfg["seed"], progress=lambda done, total: bar.update(1))
    bar.close()
    merged = {}
    for key, weight in tuned.model.diffusion_model.state_dict().items():
        for fn in tuned.weight_wrapper_patches.get(f"diffusion_model.{key}", []):
            weight = fn(weight)
        merged[key] = weight.detach().clone().contiguous()
    print(f"final loss {sum(losses[-20:]) / len(losses[-20:]):.4f}")
    return save_weights(out, merged, demo_mnist.KIND, time.monotonic() - t0, mnist_data.load_split().sha256,
                        model=name, base=f"mnist-{base_name}", iterations=iters,
                        **{k: v for k, v in cfg.items() if k != "iterations"},
                        unet_config=json.loads(demo_mnist.read_metadata(base_path)["guidekit.unet_config"]),
                        prediction="eps", schedule="sd-discrete-linear", resolution=f"{size}x{size}",
                        trained_on=f"mnist-{base_name}'s own unguided samples (labels i % 10)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=[*DIFFUSION, *FLOW, *CLASSIFIER, *SIMS_BASE])
    parser.add_argument("--iters", type=int, help="training iterations (default: the table above)")
    parser.add_argument("--out", type=Path, help="output .safetensors (default: benchmarks/weights/...)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--max-minutes", type=float, help="diffusion models: stop after this many minutes")
    parser.add_argument("--synthetic", type=int, default=SIMS["synthetic"], help="sims: synthetic set size")
    args = parser.parse_args()
    out = args.out or (WEIGHTS / f"mnist-{args.model}.safetensors" if args.model in SIMS_BASE
                       else default_out(args.model))
    t0 = time.monotonic()
    if args.model in SIMS_BASE:
        path = train_sims(args.model, args.iters or SIMS["iterations"], out, args.quiet, args.synthetic)
    elif args.model in DIFFUSION:
        path = train_diffusion(args.model, args.iters or DIFFUSION[args.model][0], out, args.quiet, args.max_minutes)
    elif args.model in FLOW:
        path = train_flow(args.model, args.iters or FLOW[args.model][0], out, args.quiet, args.max_minutes)
    else:
        path = train_classifier(args.model, args.iters or CLASSIFIER[args.model][0], out, args.quiet)
    print(f"wrote {path} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
