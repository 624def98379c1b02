"""Cost of dual-model and condition guidance: median sampling-step time and peak memory vs plain CFG.

    python3 scripts/host.py run-python benchmarks/dual_model_overhead.py [--quick] [--repeats 3]

On the thin-but-realistic models of attention_overhead.py (SD1.5 UNet at 512², SDXL UNet at 1024², Flux
at 1024²), side by side: plain CFG 4; GuideKit Autoguidance at cfg 1 (the paper's setting) and with CFG 4
on top, each with a half-width weak model (the issue's target: ≤ 1.3× CFG) and a full-width one; the
degraded self; ICG and TSG (which take the unconditional pass's place, so should cost what CFG costs); SIMS:
Autoguidance with a rank-8 LoRA of the model (GuideKit SIMS LoRA, trained a few steps on seeded latents: the cost,
not the quality) as the weak model, whose training step time is reported too. Run `--archs flux` on the current
ComfyUI (COMFYUI_PATH) for the Flux rows under today's RoPE and attention code.
Methods are interleaved within every repeat after an untimed warm-up (attention_overhead.measure_interleaved):
each row is the median of its per-repeat ratios to CFG, with the spread. Writes
benchmarks/results/dual_model_overhead.json. `--quick`: tiny models, 1 repeat (CI smoke).
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
from guidekit.cli.inprocess import import_comfy

import_comfy()                   # ComfyUI in-process (CPU) before anything below imports it

import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from loss_guidance_overhead import comfyui_version  # noqa: E402

from guidekit.nodes.autoguidance import AutoguidanceGK, DegradedModelGK  # noqa: E402
from guidekit.nodes.icg import IndependentConditionGuidanceGK  # noqa: E402
from guidekit.nodes.sims import SIMSLoRAGK  # noqa: E402
from guidekit.nodes.tsg import TimestepGuidanceGK  # noqa: E402

from attention_overhead import (  # noqa: E402  (in-process)
    bench_conditioning,
    latent_channels,
    measure_interleaved,
    report,
    sample,
    setup,
    thin_models,
)

SIMS_STEPS = 3                   # LoRA training steps timed (batch 1 each)

WIDTH_KEYS = ("model_channels", "hidden_size")


def half_width(unet_config: dict) -> dict:
    """The same architecture at half the channel width (heads halved where the width is split into heads)."""
    out = dict(unet_config)
    for key in WIDTH_KEYS:
        if key in out:      # UNet GroupNorm(32, ·) needs multiples of 32
            out[key] = max(32, out[key] // 2) if key == "model_channels" else out[key] // 2
    if "hidden_size" in unet_config:
        out["num_heads"] = max(1, unet_config["num_heads"] // 2)
    return out


def ag(main, weak, w=2.0):
    return AutoguidanceGK.run(model=main, weak_model=weak, w=w)[0]


def sims_guide(main, spec, size: int) -> tuple[object, float]:
    """(the model with a rank-8 SIMS LoRA trained SIMS_STEPS steps on seeded latents, seconds per training step)."""
    gen = torch.Generator().manual_seed(7)
    latents = {"samples": torch.randn(2, latent_channels(spec), size, size, generator=gen)}
    with torch.inference_mode():                                                       # as ComfyUI runs nodes
        SIMSLoRAGK.execute(main, latents, bench_conditioning(spec, 1), 1, 1, 1e-4, 8, 0)  # untimed warm-up
        t0 = time.perf_counter()
        lora = SIMSLoRAGK.execute(main, latents, bench_conditioning(spec, 1), SIMS_STEPS, 1, 1e-4, 8, 0).result[0]
    return lora, (time.perf_counter() - t0) / SIMS_STEPS


def methods(main, half, full, sims):
    """name → (patched model, sampler cfg)."""
    return {
        "cfg": (main, 4.0),
        "AG half-width weak, cfg 1": (ag(main, half), 1.0),
        "AG half-width weak + CFG 4": (ag(main, half), 4.0),
        "AG full-width weak, cfg 1": (ag(main, full), 1.0),
        "AG degraded self, cfg 1": (ag(main, DegradedModelGK.run(model=main)[0]), 1.0),
        "ICG gaussian, cfg 4": (IndependentConditionGuidanceGK.run(model=main, mode="gaussian")[0], 4.0),
        "TSG, cfg 4": (TimestepGuidanceGK.run(model=main)[0], 4.0),
        "SIMS LoRA rank 8 as weak, cfg 1": (ag(main, sims), 1.0),
    }


def main() -> None:
    args, models, sizes = setup(__doc__, "dual_model_overhead", 4, "steps per timed run", quick_steps=1)
    rows = []
    for arch in args.archs or [m for m in models if m != "sd15_full"]:     # sd15_full: only on request
        spec = models[arch]
        main_model = thin_models.seeded_patcher(spec[0], spec[1], seed=0)
        full = thin_models.seeded_patcher(spec[0], spec[1], seed=1)
        half = thin_models.seeded_patcher(spec[0], half_width(spec[1]), seed=2)
        count = lambda m: sum(t.numel() for t in m.model.diffusion_model.parameters())  # noqa: E731
        sims, sims_step_s = sims_guide(main_model, spec, sizes[arch])
        print(f"{arch:5} SIMS LoRA training step: {sims_step_s:.2f} s", flush=True)
        variants = {name: (model, cfg, "cfg")
                    for name, (model, cfg) in methods(main_model, half, full, sims).items()}

        def run(m, steps, seed, cfg=4.0, spec=spec, size=sizes[arch]):
            return sample(m, spec, size, steps, seed, cfg)
        for name, (sec, peak, ratios) in measure_interleaved(variants, run, args.steps, args.repeats).items():
            rows.append({"arch": arch, "params": count(main_model), "weak_params_half": count(half),
                         "latent": f"{sizes[arch]}x{sizes[arch]}", "method": name, "cfg": variants[name][1],
                         "step_s": sec, "peak_mb": peak / 2 ** 20, "ratio": statistics.median(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios), "comfyui": comfyui_version(),
                         **({"sims_training_step_s": sims_step_s} if name.startswith("SIMS") else {})})
            print(f"{arch:5} {name:28} {sec * 1e3:9.1f} ms  × {statistics.median(ratios):.2f} "
                  f"[{min(ratios):.2f}, {max(ratios):.2f}]  {peak / 2 ** 20:8.1f} MB", flush=True)
    report(rows, args, "dual_model_overhead", target="AG with a half-width weak model ≤ 1.3× plain CFG step time")


if __name__ == "__main__":
    main()
