"""The measurements behind benchmarks/gpu.py (imported after ComfyUI, on the GPU or, for --smoke, the CPU)."""
from __future__ import annotations

import statistics
import time

import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.supported_models
import torch
from dual_model_overhead import half_width

from guidekit.nodes.autoguidance import AutoguidanceGK
from guidekit.nodes.fdg import FrequencyDecoupledGuidanceGK
from guidekit.nodes.nag import NormalizedAttentionGuidanceGK
from guidekit.nodes.stg import SpatiotemporalSkipGuidanceGK
from guidekit.nodes.tpg import TokenPerturbationGuidanceGK

import thin_models
from attention_nodes import BRANCH, core_pag, core_sag, pag, sag, seg
from attention_overhead import BENCH_MODELS

SDXL_FULL = {**thin_models.UNET_COMMON, "model_channels": 320, "channel_mult": [1, 2, 4],
             "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "context_dim": 2048,
             "num_head_channels": 64, "use_linear_in_transformer": True, "adm_in_channels": 2816,
             "num_classes": "sequential"}
# name → (ComfyUI config class, unet_config, context width, pooled width, latent side, steps per timed run)
MODELS = {
    "sd15": (comfy.supported_models.SD15, BENCH_MODELS["sd15_full"][1], 768, None, 64, 10),
    "sdxl": (comfy.supported_models.SDXL, SDXL_FULL, 2048, 1280, 128, 8),
}


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def build(config_class, unet_config: dict, seed: int, dtype: torch.dtype):
    """ComfyUI's model for the config on the torch device, weights seeded there (matrices N(0, 0.02))."""
    device = comfy.model_management.get_torch_device()
    config = config_class({**unet_config, "dtype": dtype})
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=gen)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def conditioning(ctx: int, pooled: int | None, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(1, pooled, generator=gen)} if pooled else {}
    return [[torch.randn(1, 77, ctx, generator=gen), extra]]


def sampler(ctx: int, pooled: int | None, side: int):
    positive, negative = conditioning(ctx, pooled, 1), conditioning(ctx, pooled, 2)

    def run(model, steps: int, seed: int, cfg: float) -> torch.Tensor:
        latent = torch.zeros(1, 4, side, side)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                                   seed=seed, disable_pbar=True)
    return run, negative


def variants(main, weak, negative, loss_parts) -> dict:
    """name → (patched model, the sampler's cfg, the row its ratio is taken against)."""
    def node(cls, **kw):
        return cls.execute(main, **kw).result[0]
    out = {
        "cfg": (main, 4.0, "cfg"),
        "unguided (cfg 1)": (main, 1.0, "unguided (cfg 1)"),
        "core PAG": (core_pag(main), 4.0, "cfg"),
        "core SAG": (core_sag(main), 4.0, "cfg"),
        "PAG batched": (pag(main, evaluation="batched"), 4.0, "cfg"),
        "PAG separate": (pag(main, evaluation="separate"), 4.0, "cfg"),
        "SEG batched": (seg(main, evaluation="batched"), 4.0, "cfg"),
        "SAG": (sag(main), 4.0, "cfg"),
        "TPG batched": (node(TokenPerturbationGuidanceGK, scale=3.0, **{**BRANCH, "evaluation": "batched"}), 4.0,
                        "cfg"),
        "STG batched": (node(SpatiotemporalSkipGuidanceGK, scale=1.0, skip="block",
                             **{**BRANCH, "evaluation": "batched"}), 4.0, "cfg"),
        "NAG (cfg 1)": (NormalizedAttentionGuidanceGK.run(model=main, negative=negative)[0], 1.0, "unguided (cfg 1)"),
        "NAG + CFG": (NormalizedAttentionGuidanceGK.run(model=main, negative=negative)[0], 4.0, "cfg"),
        "FDG": (FrequencyDecoupledGuidanceGK.run(model=main)[0], 4.0, "cfg"),
        "AG half-width weak (cfg 1)": (AutoguidanceGK.run(model=main, weak_model=weak, w=2.0)[0], 1.0,
                                       "unguided (cfg 1)"),
        "AG half-width weak + CFG": (AutoguidanceGK.run(model=main, weak_model=weak, w=2.0)[0], 4.0, "cfg"),
    }
    if loss_parts is not None:
        from loss_guidance_overhead import guided
        vae, tiny, loss = loss_parts
        out["FreeDoM + Polyak exact, TAESD"] = (guided(main, vae, loss, gradient_vae=tiny), 4.0, "cfg")
        out["FreeDoM + Polyak fast, TAESD"] = (guided(main, vae, loss, gradient_vae=tiny, gradient="fast"), 4.0,
                                               "cfg")
    return out


def loss_parts(smoke: bool):
    """(full SD VAE, TAESD, CLIP text loss) as the loss-guidance overhead benchmark builds them."""
    from loss_guidance_overhead import clip_model, decoders

    from guidekit.nodes.loss_terms import ClipTextLossGK
    clip = clip_model(smoke)
    with torch.inference_mode():
        loss = ClipTextLossGK.execute(clip, "a photo of a red apple", 1.0).result[0]
    if smoke:                                          # the code path, not the decoder's cost
        tiny = thin_models.taesd_vae()
        return tiny, tiny, loss
    vaes = decoders()
    return vaes["full VAE"], vaes["TAESD"], loss


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(runs: dict, run, steps: int, repeats: int, notes: list[str]) -> dict:
    """Interleaved: an untimed warm-up of each, then every repeat times every variant in turn. A variant whose
    warm-up fails is left out with a note (the others still run)."""
    for name, (model, cfg, _) in list(runs.items()):
        try:
            run(model, 1, 0, cfg)
        except Exception as e:
            notes.append(f"{name}: not measured: {type(e).__name__}: {str(e)[:300]}")
            print(notes[-1], flush=True)
            del runs[name]
    times = {name: [] for name in runs}
    peaks = dict.fromkeys(runs, 0)
    finite = dict.fromkeys(runs, True)
    for r in range(repeats):
        for name, (model, cfg, _) in runs.items():
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            out = run(model, steps, r, cfg)
            sync()
            times[name].append((time.perf_counter() - t0) / steps)
            if torch.cuda.is_available():
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
            finite[name] &= bool(torch.isfinite(out).all())     # fp16 random weights may overflow: say so
    return {name: (statistics.median(times[name]), peaks[name],
                   [t / b for t, b in zip(times[name], times[runs[name][2]])], finite[name]) for name in runs}


def run_all(models: list[str], repeats: int, smoke: bool, done=lambda rows, notes: None):
    """Every model's rows; `done(rows, notes)` after each model (so a later failure keeps the earlier rows)."""
    dtype = torch.float32 if smoke else torch.float16
    rows, notes = [], []
    for name in models:
        config_class, unet, ctx, pooled, side, steps = MODELS[name]
        if smoke:
            spec = thin_models.SPECS[name]
            unet, ctx, pooled, side, steps, repeats = dict(spec.unet_config), spec.context_dim, spec.pooled_dim, 8, 2, 1
        main = build(config_class, unet, 0, dtype)
        weak = build(config_class, half_width(unet), 1, dtype)
        run, negative = sampler(ctx, pooled, side)
        try:
            parts = loss_parts(smoke) if name == "sd15" else None
        except Exception as e:                                    # no loss row, every other row still runs
            parts = None
            notes.append(f"{name}: loss guidance not measured: {type(e).__name__}: {e}")
        runs = variants(main, weak, negative, parts)
        params = sum(p.numel() for p in main.model.diffusion_model.parameters())
        for method, (sec, peak, ratios, finite) in measure(runs, run, steps, repeats, notes).items():
            rows.append({"model": name, "params": params, "latent": f"{side}x{side}", "method": method,
                         "baseline": runs[method][2], "step_ms": sec * 1e3, "ratio": statistics.median(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios), "peak_gb": peak / 2 ** 30,
                         "finite_output": finite})
            print(f"{name:5} {method:32} {sec * 1e3:8.1f} ms  × {statistics.median(ratios):.2f} "
                  f"[{min(ratios):.2f}, {max(ratios):.2f}]  {peak / 2 ** 30:6.2f} GB", flush=True)
        del main, weak, runs
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
        done(rows, notes)
    return rows, notes


def table(rows: list[dict]) -> str:
    lines = [f"{'model':5} {'method':32} {'step ms':>8} {'ratio':>6} {'spread':>13} {'peak GB':>8}"]
    for r in rows:
        lines.append(f"{r['model']:5} {r['method']:32} {r['step_ms']:8.1f} {r['ratio']:6.2f} "
                     f"[{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] {r['peak_gb']:8.2f}")
    return "\n".join(lines)
