"""Cost of dual-model and condition guidance: median sampling-step time and peak memory vs plain CFG.

    python3 scripts/host.py run-python benchmarks/dual_model_overhead.py [--quick] [--repeats 3]

On the thin-but-realistic models of attention_overhead.py (SD1.5 UNet at 512², SDXL UNet at 1024², Flux
at 1024²), side by side: plain CFG 4; GuideKit Autoguidance at cfg 1 (the paper's setting) and with CFG 4
on top, each with a half-width weak model (the issue's target: ≤ 1.3× CFG) and a full-width one; the
degraded self; ICG and TSG (which take the unconditional pass's place, so should cost what CFG costs).
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

from guidekit.nodes.autoguidance import AutoguidanceGK, DegradedModelGK  # noqa: E402
from guidekit.nodes.icg import IndependentConditionGuidanceGK  # noqa: E402
from guidekit.nodes.tsg import TimestepGuidanceGK  # noqa: E402

from attention_overhead import measure_interleaved, report, sample, setup, thin_models  # noqa: E402  (in-process)

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


def methods(main, half, full):
    """name → (patched model, sampler cfg)."""
    return {
        "cfg": (main, 4.0),
        "AG half-width weak, cfg 1": (ag(main, half), 1.0),
        "AG half-width weak + CFG 4": (ag(main, half), 4.0),
        "AG full-width weak, cfg 1": (ag(main, full), 1.0),
        "AG degraded self, cfg 1": (ag(main, DegradedModelGK.run(model=main)[0]), 1.0),
        "ICG gaussian, cfg 4": (IndependentConditionGuidanceGK.run(model=main, mode="gaussian")[0], 4.0),
        "TSG, cfg 4": (TimestepGuidanceGK.run(model=main)[0], 4.0),
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
        variants = {name: (model, cfg, "cfg") for name, (model, cfg) in methods(main_model, half, full).items()}

        def run(m, steps, seed, cfg=4.0, spec=spec, size=sizes[arch]):
            return sample(m, spec, size, steps, seed, cfg)
        for name, (sec, peak, ratios) in measure_interleaved(variants, run, args.steps, args.repeats).items():
            rows.append({"arch": arch, "params": count(main_model), "weak_params_half": count(half),
                         "latent": f"{sizes[arch]}x{sizes[arch]}", "method": name, "cfg": variants[name][1],
                         "step_s": sec, "peak_mb": peak / 2 ** 20, "ratio": statistics.median(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios)})
            print(f"{arch:5} {name:28} {sec * 1e3:9.1f} ms  × {statistics.median(ratios):.2f} "
                  f"[{min(ratios):.2f}, {max(ratios):.2f}]  {peak / 2 ** 20:8.1f} MB", flush=True)
    report(rows, args, "dual_model_overhead", target="AG with a half-width weak model ≤ 1.3× plain CFG step time")


if __name__ == "__main__":
    main()
