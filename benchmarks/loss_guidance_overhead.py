"""Cost of training-free loss guidance: median sampling-step time and peak memory vs plain CFG.

    python3 scripts/host.py run-python benchmarks/loss_guidance_overhead.py [--quick] [--repeats 2]
                                                                       [--archs sd15_full]

On the thin-but-realistic SD1.5 UNet of attention_overhead.py at 512² (64² latents), with a CLIP ViT-B/16
text loss (open_clip's architecture, random weights: the cost is the architecture's), the x0 decoded
either by the full SD VAE architecture or by TAESD (the cheap decoder for the gradient). Rows: plain
CFG 4, and each method on top of CFG 4. Target (issue 5): FreeDoM + Polyak with the tiny decoder
≤ 3× CFG step time and ≤ 2× its peak memory. Writes benchmarks/results/loss_guidance_overhead.json.
`--archs sd15_full`: the real SD1.5 UNet (860 M parameters) instead of the thin one; the rows of the other
model stay in the file. Methods are interleaved within every repeat after an untimed warm-up; each row is the
median of its per-repeat ratios to CFG, with the spread. `--quick`: the tiny SD1.5 and a 2-layer CLIP at 16²
latents, 1 repeat (CI smoke).
"""
from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
from guidekit.cli.inprocess import import_comfy

import_comfy()                   # ComfyUI in-process (CPU) before anything below imports it

import statistics  # noqa: E402

import comfy.sd  # noqa: E402

from guidekit.guidance import losses  # noqa: E402
from guidekit.nodes.loss_guidance import LossGuidanceGK  # noqa: E402
from guidekit.nodes.loss_networks import OpenClip  # noqa: E402
from guidekit.nodes.loss_terms import ClipTextLossGK  # noqa: E402

from attention_overhead import measure, measure_interleaved, report, sample, setup, thin_models  # noqa: E402

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


def guided(model, vae, loss, method="FreeDoM", rule="polyak", copies=0, recurrence=1, gradient_vae=None, mc=4):
    return LossGuidanceGK.execute(model, vae, loss, method, rule, 0.05, copies, "color,translation,resize,cutout",
                                  recurrence, 0.0, 1.0, 0.0, 1.0, mc, 0, 0.1, gradient_vae=gradient_vae).result[0]


def methods(model, vaes: dict, loss) -> dict:
    """name → patched model (all at the sampler's cfg 4)."""
    full, tiny = vaes["full VAE"], vaes["TAESD"]
    rows = {"cfg": model}
    for decoder, extra in (("TAESD", {"gradient_vae": tiny}), ("full VAE", {})):
        rows[f"FreeDoM + Polyak, {decoder}"] = guided(model, full, loss, **extra)
        rows[f"MPGD + Polyak, {decoder}"] = guided(model, full, loss, "MPGD", **extra)
    rows.update({
        "FreeDoM + Polyak + 4 augmented copies, TAESD": guided(model, full, loss, copies=4, gradient_vae=tiny),
        "DPS fixed, TAESD": guided(model, full, loss, "DPS", "fixed", gradient_vae=tiny),
        "UG forward, TAESD": guided(model, full, loss, "UG", gradient_vae=tiny),
        "LGD-MC n 4, TAESD": guided(model, full, loss, "LGD-MC", gradient_vae=tiny),
        "FreeDoM + Polyak, recurrence 2, TAESD": guided(model, full, loss, recurrence=2, gradient_vae=tiny),
    })
    return rows


def main() -> None:
    args, models, sizes = setup(__doc__, "loss_guidance_overhead", 2, "steps per timed run", quick_steps=1)
    clip = clip_model(args.quick)
    with torch.inference_mode():
        loss = ClipTextLossGK.execute(clip, "a photo of a red apple", 1.0).result[0]
    vaes = decoders()
    arch = (args.archs or ["sd15"])[0]
    spec = models[arch]
    base = thin_models.seeded_patcher(spec[0], spec[1], seed=0)
    params = sum(t.numel() for t in base.model.diffusion_model.parameters())
    patched = methods(base, vaes, loss)
    # untimed: the first guided run pays one-time costs (weights made autograd-ready, the allocator growing
    # to the gradient pass's size) that the per-row warm-up step does not absorb
    measure(patched["FreeDoM + Polyak + 4 augmented copies, TAESD"], spec, sizes[arch], 1, 1, cfg=4.0)
    variants = {name: (model, 4.0, "cfg") for name, model in patched.items()}

    def run(m, steps, seed, cfg=4.0):
        return sample(m, spec, sizes[arch], steps, seed, cfg)
    rows = []
    for name, (sec, peak, ratios) in measure_interleaved(variants, run, args.steps, args.repeats).items():
        rows.append({"arch": arch, "params": params, "latent": f"{sizes[arch]}x{sizes[arch]}", "method": name,
                     "step_s": sec, "peak_mb": peak / 2 ** 20, "ratio": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios)})
        print(f"{arch}  {name:46} {sec * 1e3:9.1f} ms  × {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}, {max(ratios):.2f}]  {peak / 2 ** 20:8.1f} MB", flush=True)
    cfg_row = next(r for r in rows if r["method"] == "cfg")
    for r in rows:
        r["peak_ratio_to_cfg"] = r["peak_mb"] / max(cfg_row["peak_mb"], 1e-9)
    report(rows, args, "loss_guidance_overhead", cfg=4.0, loss=f"CLIP text, open_clip {CLIP_ARCH} (random weights)",
           target="FreeDoM + Polyak with the tiny decoder ≤ 3× CFG step time and ≤ 2× CFG peak memory",
           vae_params={k: sum(p.numel() for p in v.first_stage_model.parameters()) for k, v in vaes.items()})


if __name__ == "__main__":
    main()
