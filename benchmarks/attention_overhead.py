"""Cost of attention-perturbation guidance: median sampling-step time and peak memory vs plain CFG.

    python3 scripts/host.py run-python benchmarks/attention_overhead.py [--quick] [--repeats 3]

Side by side in one run, on thin-but-realistic models at realistic token counts (SD1.5 UNet at 512²
= 4096 tokens in its top attention level; SDXL UNet at 1024², attention from 4096 tokens down; Flux
at 1024² = 4096 image tokens; Wan 2.1 at 480×832 with 33 frames = 9×30×52 = 14,040 video tokens; Qwen-Image
at 1024² = 4096 image tokens): plain CFG, core PerturbedAttentionGuidance and SelfAttentionGuidance (UNets),
and GuideKit PAG (separate and batched), SEG, SAG, TPG, STG (block and attention skip), NAG (at cfg 1 against
an unguided step, and with CFG; on Wan also forced onto the extra-row route), FDG, PAG in place of uncond, and
PAG over 20-80 % of the schedule. Methods are interleaved within every repeat (A B C … A B C …) after an
untimed warm-up of each, and each row reports the median over repeats of its ratio to the same repeat's
baseline (plain CFG, or the unguided step for rows at cfg 1) with the spread, so a load change during the run
shows as spread, not as a difference. Writes benchmarks/results/attention_overhead.json (`--archs` runs some
models and keeps the file's rows of the others, `--methods` some methods and their baselines and keeps the
models' other rows) and prints the table.
`--quick` is the seconds-long smoke version (tiny models and latents) that CI runs so the script cannot rot.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
from guidekit.cli.inprocess import import_comfy

import_comfy()                   # ComfyUI in-process (CPU) before anything below imports it

from guidekit.nodes.fdg import FrequencyDecoupledGuidanceGK  # noqa: E402
from guidekit.nodes.nag import NormalizedAttentionGuidanceGK  # noqa: E402
from guidekit.nodes.stg import SpatiotemporalSkipGuidanceGK  # noqa: E402
from guidekit.nodes.tpg import TokenPerturbationGuidanceGK  # noqa: E402

import thin_models  # noqa: E402  (imports ComfyUI in-process, CPU)
from attention_nodes import BRANCH, core_pag, core_sag, pag, sag, seg  # noqa: E402

UNET = thin_models.UNET_COMMON
# The host's attention kernel: sub-quadratic on a CPU by default, PyTorch's fused one with
# GUIDEKIT_PYTORCH_ATTENTION=1 (ComfyUI's --use-pytorch-cross-attention; its default on NVIDIA GPUs).
ATTENTION = thin_models.comfy.ldm.modules.attention.optimized_attention.__name__
ARCH_SUFFIX = "@sdpa" if os.environ.get("GUIDEKIT_PYTORCH_ATTENTION") == "1" else ""   # rows apart from the default's
# Realistic block structure and token counts, widths cut so a CPU step takes seconds, not minutes.
BENCH_MODELS = {
    "sd15": (thin_models.comfy.supported_models.SD15, {
        **UNET, "model_channels": 64, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [1, 1, 1, 1],
        "transformer_depth": [1, 1, 1, 0], "transformer_depth_middle": 1,
        "transformer_depth_output": [0, 0, 1, 1, 1, 1, 1, 1],
        "context_dim": 768, "num_heads": 8, "use_linear_in_transformer": False}, 768, None, 64),
    "sdxl": (thin_models.comfy.supported_models.SDXL, {
        **UNET, "model_channels": 64, "channel_mult": [1, 2, 4], "num_res_blocks": [1, 1, 1],
        "transformer_depth": [0, 1, 2], "transformer_depth_middle": 2, "transformer_depth_output": [0, 0, 1, 1, 2, 2],
        "context_dim": 2048, "num_head_channels": 64, "use_linear_in_transformer": True, "adm_in_channels": 2816,
        "num_classes": "sequential"}, 2048, 1280, 128),
    # The real SD1.5 UNet (860 M parameters, ComfyUI's detected config), seeded random weights: where a user's
    # ratio is set by the real FLOP mix. Only on request (--archs sd15_full): minutes per step on a 2-core CPU.
    "sd15_full": (thin_models.comfy.supported_models.SD15, {
        **UNET, "model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "context_dim": 768, "num_heads": 8, "use_linear_in_transformer": False}, 768, None, 64),
    "flux": (thin_models.comfy.supported_models.Flux, {
        **thin_models.SPECS["flux"].unet_config, "hidden_size": 256, "num_heads": 4, "depth": 2,
        "depth_single_blocks": 4, "axes_dim": [16, 24, 24], "context_in_dim": 256, "vec_in_dim": 64}, 256, 64, 128),
}

# DiT families at realistic token counts: (thin_models family, config overrides, (frames, height, width) latent)
FAMILY_BENCH = {
    "wan": ("wan21_t2v", {"dim": 256, "ffn_dim": 1024, "num_heads": 2, "num_layers": 2}, (9, 60, 104)),
    "qwen_image": ("qwen_image", {"attention_head_dim": 128, "num_attention_heads": 2, "num_layers": 4,
                                  "axes_dims_rope": (16, 56, 56)},
                   (1, 128, 128)),
    # Wan with 10 blocks (Wan 1.3B has 30): SAG's map of one layer weighs 1/(2·blocks) of a CFG step's attention
    "wan_10": ("wan21_t2v", {"dim": 256, "ffn_dim": 1024, "num_heads": 2, "num_layers": 10}, (9, 60, 104)),
    # 16 blocks: what is per layer (SAG's attention map of one layer) weighs as in a deeper model
    "qwen_image_16": ("qwen_image", {"attention_head_dim": 128, "num_attention_heads": 2, "num_layers": 16,
                                     "axes_dims_rope": (16, 56, 56)}, (1, 128, 128)),
    # Qwen-Image's real width (24 heads of 128 = 3072) with one block, 4096 image tokens and a 128-token prompt:
    # where the mix of linear layers and attention, which sets NAG's cost, is the real model's
    "qwen_image_wide": ("qwen_image", {"attention_head_dim": 128, "num_attention_heads": 24, "num_layers": 1,
                                       "axes_dims_rope": (16, 56, 56)}, (1, 128, 128)),
}
FAMILY_TOKENS = {"qwen_image_wide": 128}          # text tokens per prompt (8 where not listed)
ON_REQUEST = {"sd15_full", "qwen_image_wide", "wan_10"}      # minutes per step on a 2-core CPU: only with --archs

def _tpg(m, neg):
    return TokenPerturbationGuidanceGK.execute(m, scale=3.0, **BRANCH).result[0]


def _stg(m, neg, skip="block"):
    return SpatiotemporalSkipGuidanceGK.execute(m, scale=1.0, skip=skip, **BRANCH).result[0]


def _nag(m, neg):
    return NormalizedAttentionGuidanceGK.run(model=m, negative=neg)[0]


def keys_in_layer(model) -> bool:
    """Whether NAG on this DiT computes the negative's keys in the layer (then the extra-row route is a row)."""
    from guidekit.nodes.layers import architecture
    arch = architecture(model, "benchmark")
    return arch.family != "unet" and arch.text_cross is not None


def _nag_rows(m, neg, share: bool = True):
    """NAG forced onto the extra-row route (where the family has keys in the layer: what that route saves);
    `share=False`: without computing the rows' shared tokens once (what nag_shared.py saves)."""
    import dataclasses

    from guidekit.guidance.schedule import SigmaRange
    from guidekit.nodes.layers import architecture
    from guidekit.nodes.nag import NAGStep, Settings
    arch = dataclasses.replace(architecture(m, "benchmark"), text_cross=None)
    step = NAGStep(arch, arch.layers, neg, Settings(5.0, 2.5, 0.25, SigmaRange()), None, share)
    patched = m.clone()
    patched.set_model_sampler_calc_cond_batch_function(lambda args: step(args))
    return patched


UNET_ARCHS = ("sd15", "sd15_full", "sdxl")   # the models core PAG/SAG patch (UNet self-attention)
# name → (patch(model, negative conditioning), the sampler's cfg, the row its ratio is taken against)
METHODS = {
    "cfg": (lambda m, neg: m, 4.0, "cfg"),
    "unguided (cfg 1)": (lambda m, neg: m, 1.0, "unguided (cfg 1)"),
    "core PAG": (lambda m, neg: core_pag(m), 4.0, "cfg"),
    "core SAG": (lambda m, neg: core_sag(m), 4.0, "cfg"),
    "PAG separate": (lambda m, neg: pag(m, evaluation="separate"), 4.0, "cfg"),
    "PAG batched": (lambda m, neg: pag(m, evaluation="batched"), 4.0, "cfg"),
    "SEG": (lambda m, neg: seg(m, evaluation="separate", blur_sigma=-1.0), 4.0, "cfg"),
    "SAG": (lambda m, neg: sag(m), 4.0, "cfg"),
    "TPG": (_tpg, 4.0, "cfg"),
    "STG block": (_stg, 4.0, "cfg"),
    "STG attention": (lambda m, neg: _stg(m, neg, "attention"), 4.0, "cfg"),
    "NAG (cfg 1)": (_nag, 1.0, "unguided (cfg 1)"),
    "NAG extra rows (cfg 1)": (_nag_rows, 1.0, "unguided (cfg 1)"),
    "NAG extra rows unshared (cfg 1)": (lambda m, neg: _nag_rows(m, neg, share=False), 1.0, "unguided (cfg 1)"),
    "NAG + CFG": (_nag, 4.0, "cfg"),
    "FDG": (lambda m, neg: FrequencyDecoupledGuidanceGK.run(model=m)[0], 4.0, "cfg"),
    "PAG in place of uncond": (lambda m, neg: pag(m, mode="replace uncond"), 4.0, "cfg"),
    "PAG 20-80 %": (lambda m, neg: pag(m, evaluation="separate", start_percent=0.2, end_percent=0.8), 4.0, "cfg"),
}


class PeakMemory:
    """Peak extra memory while sampling: CUDA allocator peak, or process RSS sampled every 2 ms on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.rss()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss() - self.base)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()


def latent_channels(spec) -> int:
    return 16 if spec[0] is thin_models.comfy.supported_models.Flux else 4


def bench_conditioning(spec, seed: int) -> list:
    """A seeded CONDITIONING of a BENCH_MODELS spec (77 tokens; pooled vector and Flux's guidance where needed)."""
    _, _, ctx, pooled, _ = spec
    gen = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(1, pooled, generator=gen)} if pooled else {}
    if latent_channels(spec) == 16:
        extra["guidance"] = 3.5
    return [[torch.randn(1, 77, ctx, generator=gen), extra]]


def sample(model, spec, size, steps, seed, cfg=4.0, denoise=1.0):
    latent = torch.zeros(1, latent_channels(spec), size, size)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    import comfy.sample
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", bench_conditioning(spec, 1),
                               bench_conditioning(spec, 2), latent, denoise=denoise, seed=seed, disable_pbar=True)


def measure(model, spec, size, steps, repeats, cfg=4.0):
    """Median seconds per step and peak extra memory of sampling a BENCH_MODELS-style spec at `size`."""
    return measure_run(model, lambda m, n, seed: sample(m, spec, size, n, seed=seed, cfg=cfg), steps, repeats)


def measure_run(model, run, steps, repeats):
    """Median seconds per step and peak extra memory of `run(model, steps, seed)` (one untimed warm-up step)."""
    run(model, 1, 0)
    times, peaks = [], []
    for r in range(repeats):
        with PeakMemory(torch.device("cpu")) as mem:
            t0 = time.perf_counter()
            out = run(model, steps, r)
            times.append((time.perf_counter() - t0) / steps)
        peaks.append(mem.peak)
        assert torch.isfinite(out).all(), "non-finite output makes the timing meaningless"
    return statistics.median(times), max(peaks)


def measure_interleaved(variants: dict, run, steps: int, repeats: int) -> dict:
    """{name: (median s/step, peak bytes, per-repeat ratios to its baseline)} for {name: (model, cfg, baseline)}:
    one untimed warm-up step each, then every repeat times every variant in turn (A B C … A B C …). A variant
    whose warm-up fails is left out with a printed note (the others still run)."""
    for name, (model, cfg, _) in list(variants.items()):
        try:
            run(model, 1, 0, cfg)
        except Exception as e:
            print(f"{name}: not measured: {type(e).__name__}: {str(e)[:300]}", flush=True)
            del variants[name]
    times = {name: [] for name in variants}
    peaks = dict.fromkeys(variants, 0)
    for r in range(repeats):
        for name, (model, cfg, _) in variants.items():
            with PeakMemory(torch.device("cpu")) as mem:
                t0 = time.perf_counter()
                out = run(model, steps, r, cfg)
                times[name].append((time.perf_counter() - t0) / steps)
            peaks[name] = max(peaks[name], mem.peak)
            assert torch.isfinite(out).all(), "non-finite output makes the timing meaningless"
    return {name: (statistics.median(times[name]), peaks[name],
                   [t / b for t, b in zip(times[name], times[variants[name][2]])]) for name in variants}


def setup(doc: str, name: str, steps: int, steps_help: str, quick_steps: int | None = None, extra=()):
    """Arguments, models and latent sizes of an overhead benchmark; `--quick` = tiny SD1.5 and Flux, 1 repeat.
    `extra`: (flag, help) of further boolean options."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for flag, text in extra:
        p.add_argument(flag, action="store_true", help=text)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=steps, help=steps_help)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny models and latents, 1 repeat")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / f"{name}.json")
    p.add_argument("--archs", nargs="+", help="only these models; the output file keeps its rows of the others")
    p.add_argument("--methods", nargs="+", help="only these methods (and their baselines); the output file keeps "
                                                "its other rows of the same models")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    if not args.quick:
        return args, BENCH_MODELS, {"sd15": 64, "sd15_full": 64, "sdxl": 128, "flux": 128}
    args.repeats, args.steps = 1, quick_steps or args.steps
    models = {a: (thin_models.SPECS[a].config_class, dict(thin_models.SPECS[a].unet_config), 64,
                  thin_models.SPECS[a].pooled_dim, 0) for a in ("sd15", "flux")}
    return args, models, {"sd15": 16, "flux": 16}


def family_runner(name: str, quick: bool):
    """(patcher, run(model, steps, seed, cfg), latent label, negative) for a FAMILY_BENCH model (`quick`: its thin
    test size, 16² latents)."""
    arch, overrides, (frames, height, width) = FAMILY_BENCH[name]
    spec = thin_models.SPECS[arch]
    if quick:
        overrides, (frames, height, width) = {}, (2 if spec.video else 1, 16, 16)
    base = thin_models.seeded_patcher(spec.config_class, {**spec.unet_config, **overrides}, seed=0)
    frames = frames if spec.frames is not None else None

    tokens = FAMILY_TOKENS.get(name, 8)

    def run(model, steps, seed, cfg=4.0):
        return thin_models.sample(model, arch, seed=seed, steps=steps, cfg=cfg, height=height, width=width,
                                  frames=frames, tokens=tokens)
    negative = thin_models.conditioning(arch, tokens=tokens, seed=2, height=height, width=width, frames=frames)
    return base, run, (f"{frames}x{height}x{width}" if spec.video else f"{height}x{width}"), negative


def bench_negative(spec) -> list:
    """The negative conditioning `sample` uses for a BENCH_MODELS spec (NAG's negative)."""
    return bench_conditioning(spec, 2)


def chosen_methods(names: list[str] | None) -> set[str]:
    """`--methods` and the baselines their ratios are taken against (every method without the option)."""
    if not names:
        return set(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    return {*names, *(METHODS[n][2] for n in names)}


def main() -> None:
    args, models, sizes = setup(__doc__, "attention_overhead", 5, "steps per timed run (the 20-80 %% range needs ≥ 5)")
    chosen = args.archs or [a for a in (*models, *FAMILY_BENCH) if a not in ON_REQUEST]
    rows = []
    for arch in chosen:
        if arch in FAMILY_BENCH:
            base, run, latent, negative = family_runner(arch, args.quick)
        else:
            spec = models[arch]
            base = thin_models.seeded_patcher(spec[0], spec[1], seed=0)
            run, latent = (lambda m, steps, seed, cfg=4.0, spec=spec, size=sizes[arch]:
                           sample(m, spec, size, steps, seed, cfg), f"{sizes[arch]}x{sizes[arch]}")
            negative = bench_negative(spec)
        params = sum(t.numel() for t in base.model.diffusion_model.parameters())
        variants = {method: (make(base, negative), cfg, baseline) for method, (make, cfg, baseline) in METHODS.items()
                    if not (method.startswith("core") and arch not in UNET_ARCHS)   # core: UNet attn1 only
                    and not (method == "NAG extra rows (cfg 1)" and not keys_in_layer(base))
                    and not (method == "NAG extra rows unshared (cfg 1)" and arch in UNET_ARCHS)
                    and method in chosen_methods(args.methods)}
        for method, (sec, peak, ratios) in measure_interleaved(variants, run, args.steps, args.repeats).items():
            rows.append({"arch": arch + ARCH_SUFFIX, "params": params, "latent": latent, "method": method,
                         "attention": ATTENTION,
                         "baseline": variants[method][2], "steps": args.steps, "repeats": args.repeats,
                         "step_s": sec, "peak_mb": peak / 2 ** 20,
                         "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)})
            print(f"{arch:10} {method:24} {sec * 1e3:9.1f} ms  × {statistics.median(ratios):.2f} "
                  f"[{min(ratios):.2f}, {max(ratios):.2f}]  {peak / 2 ** 20:8.1f} MB", flush=True)
    report(rows, args, "attention_overhead", cfg=4.0)


def report(rows: list[dict], args, benchmark: str, **meta) -> None:
    """Ratios to the same model's plain-CFG row, the table, and (unless --quick) the JSON file."""
    for r in rows:
        base = next(c for c in rows if c["arch"] == r["arch"] and c["method"] == r.get("baseline", "cfg"))
        r["ratio_to_cfg"] = r.get("ratio", r["step_s"] / base["step_s"])     # interleaved runs: median of per-repeat
    width = max(len(r["method"]) for r in rows)
    print(f"\n{'arch':10} {'latent':>8} {'method':{width}} {'step (ms)':>10} {'× CFG':>7} {'peak MB':>8}")
    for r in rows:
        print(f"{r['arch']:10} {r['latent']:>8} {r['method']:{width}} {r['step_s'] * 1e3:10.1f} "
              f"{r['ratio_to_cfg']:7.2f} {r['peak_mb']:8.1f}")
    if args.quick:
        print("quick run: results not written")
        return
    methods = getattr(args, "methods", None)
    header = {"steps_per_run": args.steps, "repeats": args.repeats}   # of the rows that do not carry their own
    for r in rows:
        r.setdefault("steps", args.steps)
        r.setdefault("repeats", args.repeats)
    if (getattr(args, "archs", None) or methods) and args.out.is_file():     # a partial run keeps the other rows
        old = json.loads(args.out.read_text())
        header = {key: old.get(key, value) for key, value in header.items()}
        ran_archs, ran = {r["arch"] for r in rows}, {(r["arch"], r["method"]) for r in rows}
        rows = [r for r in old["rows"]
                if r["arch"] not in ran_archs or (methods and (r["arch"], r["method"]) not in ran)] + rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": benchmark, "device": "cpu", "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "sampler": "euler",
        "scheduler": "normal", **meta, **header,
        "peak_memory": "max over repeats of process RSS growth during sampling (sampled every 2 ms)",
        "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
