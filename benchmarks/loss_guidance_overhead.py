"""Cost of training-free loss guidance: median sampling-step time and peak memory vs plain CFG.

    python3 scripts/host.py run-python benchmarks/loss_guidance_overhead.py [--quick] [--repeats 2]
                                                                       [--archs sd15_full | flux]

On the thin-but-realistic SD1.5 UNet of attention_overhead.py at 512² (64² latents), with a CLIP ViT-B/16
text loss (open_clip's architecture, random weights: the cost is the architecture's), the x0 decoded
either by the full SD VAE architecture or by TAESD (the cheap decoder for the gradient). Rows: plain
CFG 4, and each method on top of CFG 4. Target (issue 5): FreeDoM + Polyak with the tiny decoder
≤ 3× CFG step time and ≤ 2× its peak memory. Writes benchmarks/results/loss_guidance_overhead.json.
`--archs flux` (run it on the current ComfyUI, COMFYUI_PATH): the thin-but-realistic Flux at 1024², cfg 1 as
Flux dev runs, TAEF1's architecture (TAESD with 16 latent channels) as the decoder; rows FreeDoM exact and fast
and MPGD against the unguided step. `--archs sd15_full`: the real SD1.5 UNet (860 M parameters) instead of the
thin one, with CFG, FreeDoM exact and fast and MPGD (TAESD) only. The rows of the other models stay in the file.
Methods are interleaved within every repeat after an untimed warm-up; each row is the median of its per-repeat
ratios to its baseline, with the spread. `--quick`: the tiny SD1.5 and a 2-layer CLIP at 16²
latents, 1 repeat (CI smoke).
"""
from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
from guidekit.cli.inprocess import import_comfy

import_comfy()                   # ComfyUI in-process (CPU) before anything below imports it

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import comfy.sd  # noqa: E402

from guidekit.guidance import losses  # noqa: E402
from guidekit.nodes.loss_guidance import LossGuidanceGK  # noqa: E402
from guidekit.nodes.loss_networks import OpenClip  # noqa: E402
from guidekit.nodes.loss_terms import ClipTextLossGK  # noqa: E402

from attention_overhead import (  # noqa: E402
    bench_conditioning,
    measure_interleaved,
    report,
    sample,
    setup,
    thin_models,
)

CLIP_ARCH = "ViT-B-16"


def clip_model(quick: bool) -> OpenClip:
    """open_clip ViT-B/16 (or the tests' 2-layer CLIP in quick mode), random weights, its real tokenizer."""
    import open_clip
    torch.manual_seed(0)
    with torch.inference_mode(False):
        if quick:
            model, tokenizer = open_clip.CLIP(**thin_models.TINY_OPEN_CLIP), open_clip.SimpleTokenizer()
        else:
            model, tokenizer = open_clip.create_model(CLIP_ARCH, pretrained=None), open_clip.get_tokenizer(CLIP_ARCH)
        model.eval().requires_grad_(False)
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return OpenClip(model, tokenizer, size, losses.CLIP_MEAN, losses.CLIP_STD, CLIP_ARCH)


def decoders() -> dict:
    """The full SD KL VAE (its real widths) and TAESD, seeded, as ComfyUI VAE objects."""
    full = comfy.sd.VAE(sd=thin_models.init_weights(thin_models.thin_kl_autoencoder(), 2).state_dict())
    return {"full VAE": full, "TAESD": thin_models.taesd_vae()}


def guided(model, vae, loss, method="FreeDoM", rule="polyak", copies=0, recurrence=1, gradient_vae=None, mc=4,
           gradient="exact"):
    return LossGuidanceGK.execute(model, vae, loss, method, rule, 0.05, copies, "color,translation,resize,cutout",
                                  recurrence, 0.0, 1.0, 0.0, 1.0, mc, 0, 0.1, gradient=gradient,
                                  gradient_vae=gradient_vae).result[0]


def methods(model, vaes: dict, loss) -> dict:
    """name → patched model (all at the sampler's cfg 4)."""
    full, tiny = vaes["full VAE"], vaes["TAESD"]
    rows = {"cfg": model}
    for decoder, extra in (("TAESD", {"gradient_vae": tiny}), ("full VAE", {})):
        rows[f"FreeDoM + Polyak, {decoder}"] = guided(model, full, loss, **extra)
        rows[f"MPGD + Polyak, {decoder}"] = guided(model, full, loss, "MPGD", **extra)
    rows["FreeDoM + Polyak fast gradient, TAESD"] = guided(model, full, loss, gradient_vae=tiny, gradient="fast")
    rows["FreeDoM + Polyak fast gradient, full VAE"] = guided(model, full, loss, gradient="fast")
    rows.update({
        "FreeDoM + Polyak + 4 augmented copies, TAESD": guided(model, full, loss, copies=4, gradient_vae=tiny),
        "DPS fixed, TAESD": guided(model, full, loss, "DPS", "fixed", gradient_vae=tiny),
        "UG forward, TAESD": guided(model, full, loss, "UG", gradient_vae=tiny),
        "LGD-MC n 4, TAESD": guided(model, full, loss, "LGD-MC", gradient_vae=tiny),
        "FreeDoM + Polyak, recurrence 2, TAESD": guided(model, full, loss, recurrence=2, gradient_vae=tiny),
    })
    return rows


# On the real-size UNet (minutes per step on 2 cores) only the rows issue 23 sets targets for, with TAESD.
FULL_SIZE_ROWS = ("cfg", "FreeDoM + Polyak, TAESD", "FreeDoM + Polyak fast gradient, TAESD", "MPGD + Polyak, TAESD")
FLUX_BASELINE = "unguided (cfg 1)"
FLUX_DENOISE = 0.9               # the timed Flux steps start at σ < 1, where loss guidance acts


def flux_methods(model, loss) -> dict:
    """Flux at cfg 1 (its distilled guidance): name → (patched model, cfg, baseline), TAEF1's architecture."""
    taef1 = thin_models.taesd_vae(latent_channels=16)
    return {FLUX_BASELINE: (model, 1.0, FLUX_BASELINE),
            "FreeDoM + Polyak, TAEF1": (guided(model, taef1, loss), 1.0, FLUX_BASELINE),
            "FreeDoM + Polyak fast gradient, TAEF1": (guided(model, taef1, loss, gradient="fast"), 1.0, FLUX_BASELINE),
            "MPGD + Polyak, TAEF1": (guided(model, taef1, loss, "MPGD"), 1.0, FLUX_BASELINE)}


def comfyui_version() -> str:
    try:
        import comfyui_version
        return comfyui_version.__version__
    except ImportError:
        return "unknown"


ACTIVE_RANGES = (0.8, 0.9)        # FreeDoM / Shen et al. guide from the start and stop at t = 200 or 100 of 1000


def whole_run(ratio: float) -> dict[str, float]:
    """A whole run's time vs the baseline's when the per-step ratio applies to the active fraction f of the steps
    (guidance from 0 to end_percent f; the normal schedule at 20-50 steps puts exactly f of them there) and the
    other steps cost what the baseline's do."""
    return {f"end_percent {f:g}": f * ratio + (1 - f) for f in ACTIVE_RANGES}


def timed(fn, repeats: int = 3) -> float:
    """Median seconds of fn() after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def breakdown(base, spec, size: int, clip: OpenClip, tiny) -> dict:
    """Seconds of each part of a loss-guided step, measured alone: the UNet forward without gradients (batch 2 =
    one CFG step), forward + backward through 2 rows (exact) and 1 row (fast), TAESD decode + backward at the
    full latent and at the loss network's size, CLIP image forward + backward. Where the per-step ratios come from."""
    from guidekit.nodes import compat
    from guidekit.nodes.autograd import autograd_ready
    from guidekit.nodes.loss_guidance import loss_latent_size
    model = base.model
    autograd_ready(model.diffusion_model)
    autograd_ready(tiny.first_stage_model)
    ctx = bench_conditioning(spec, 1)[0][0]
    x = torch.randn(2, 4, size, size)
    t = torch.full((2,), 5.0)

    def forward(rows: int, grad: bool) -> torch.Tensor:
        x_in = x[:rows].clone().requires_grad_(grad)
        out = model.apply_model(x_in, t[:rows], c_crossattn=ctx.repeat(rows, 1, 1))
        if grad:
            out.square().mean().backward()
        return out

    small = loss_latent_size((size, size), 8, [clip.image_size]) or (size, size)

    def decode(hw: tuple[int, int]) -> None:
        z = torch.randn(1, 4, *hw, requires_grad=True)
        tiny.first_stage_model.decode(z).square().mean().backward()

    def clip_pass() -> None:
        images = torch.rand(1, 3, *clip.image_size, requires_grad=True)
        clip.encode_image(images).square().mean().backward()
    with compat.gradients():
        parts = {"unet forward, 2 rows, no gradient (one CFG step)": lambda: forward(2, False),
                 "unet forward + backward, 2 rows (exact)": lambda: forward(2, True),
                 "unet forward + backward, 1 row (fast)": lambda: forward(1, True),
                 f"TAESD decode + backward at {size}x{size} (exact)": lambda: decode((size, size)),
                 f"TAESD decode + backward at {small[0]}x{small[1]} (fast)": lambda: decode(small),
                 "CLIP image forward + backward": clip_pass}
        seconds = {name: timed(fn) for name, fn in parts.items()}
    cfg = seconds["unet forward, 2 rows, no gradient (one CFG step)"]
    for name, sec in seconds.items():
        print(f"  {name:58} {sec:8.2f} s  {sec / cfg:5.2f}× a CFG forward", flush=True)
    return {"seconds": seconds, "in_cfg_steps": {k: v / cfg for k, v in seconds.items()}}


def main() -> None:
    args, models, sizes = setup(__doc__, "loss_guidance_overhead", 2, "steps per timed run", quick_steps=1,
                                extra=[("--breakdown", "only time each part of a step alone; into the file's "
                                                       "'breakdown' entry")])
    clip = clip_model(args.quick)
    with torch.inference_mode():
        loss = ClipTextLossGK.execute(clip, "a photo of a red apple", 1.0).result[0]
    vaes = decoders()
    arch = (args.archs or ["sd15"])[0]
    spec = models[arch]
    base = thin_models.seeded_patcher(spec[0], spec[1], seed=0)
    params = sum(t.numel() for t in base.model.diffusion_model.parameters())
    if args.breakdown:
        parts = breakdown(base, spec, sizes[arch], clip, vaes["TAESD"])
        if not args.quick:
            data = json.loads(args.out.read_text())
            data.setdefault("breakdown", {})[arch] = parts
            args.out.write_text(json.dumps(data, indent=1) + "\n")
        return
    if arch == "flux":
        variants = flux_methods(base, loss)
    else:
        patched = methods(base, vaes, loss)
        if arch == "sd15_full":
            patched = {name: m for name, m in patched.items() if name in FULL_SIZE_ROWS}
        variants = {name: (model, 4.0, "cfg") for name, model in patched.items()}
    # untimed: the first guided run pays one-time costs (weights made autograd-ready, the allocator growing
    # to the gradient pass's size) that the per-row warm-up step does not absorb
    # Flux: loss guidance skips the pure-noise step (σ = 1, x0 says nothing yet), so every timed step starts below
    denoise = FLUX_DENOISE if arch == "flux" else 1.0

    def run(m, steps, seed, cfg=4.0):
        return sample(m, spec, sizes[arch], steps, seed, cfg, denoise)
    first_guided = next(name for name in variants if name.startswith("FreeDoM"))
    run(variants[first_guided][0], 2, 0, variants[first_guided][1])
    rows = []
    for name, (sec, peak, ratios) in measure_interleaved(variants, run, args.steps, args.repeats).items():
        rows.append({"arch": arch, "params": params, "latent": f"{sizes[arch]}x{sizes[arch]}", "method": name,
                     "cfg": variants[name][1], "baseline": variants[name][2], "comfyui": comfyui_version(),
                     "step_s": sec, "peak_mb": peak / 2 ** 20, "ratio": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios)})
        print(f"{arch}  {name:46} {sec * 1e3:9.1f} ms  × {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}, {max(ratios):.2f}]  {peak / 2 ** 20:8.1f} MB", flush=True)
    cfg_row = next(r for r in rows if r["method"] in ("cfg", FLUX_BASELINE))
    for r in rows:
        r["peak_ratio_to_cfg"] = r["peak_mb"] / max(cfg_row["peak_mb"], 1e-9)
        r["whole_run_ratio"] = whole_run(r["ratio"])
    report(rows, args, "loss_guidance_overhead", cfg=4.0, loss=f"CLIP text, open_clip {CLIP_ARCH} (random weights)",
           target="per active step on the real-size SD1.5 (sd15_full) with TAESD: FreeDoM + Polyak exact ≤ 3.3× CFG, "
                  "the fast gradient ≤ 2.3×, peak memory ≤ 2× CFG's (issue 23; the thin rows: issue 5's ≤ 3×)",
           vae_params={k: sum(p.numel() for p in v.first_stage_model.parameters()) for k, v in vaes.items()})


if __name__ == "__main__":
    main()
