"""Baseline: median time of one plain-CFG sampling step per thin architecture, through comfy.sample.

    python3 scripts/host.py run-python benchmarks/sampling_step.py [--size 64] [--repeats 3]

Prints a table and writes benchmarks/results/sampling_step.json. Every method's benchmark reports its
cost as a ratio to this plain-CFG step on the same model and size.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
from guidekit.cli.inprocess import import_comfy

import_comfy()                   # ComfyUI in-process (CPU) before anything below imports it

import thin_models  # noqa: E402  (imports ComfyUI in-process, CPU)


def step_seconds(arch: str, size: int, steps: int, repeats: int) -> float:
    model = thin_models.build(arch, seed=0)
    thin_models.sample(model, arch, steps=1, height=size, width=size)               # warm-up
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        out = thin_models.sample(model, arch, seed=r, steps=steps, height=size, width=size)
        times.append((time.perf_counter() - t0) / steps)
        assert torch.isfinite(out).all(), f"{arch}: non-finite output makes the timing meaningless"
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="latent height and width")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sampling_step.json")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    rows = []
    for arch in thin_models.SPECS:
        params = sum(p.numel() for p in thin_models.build(arch).model.diffusion_model.parameters())
        sec = step_seconds(arch, args.size, args.steps, args.repeats)
        rows.append({"arch": arch, "params": params, "latent": f"{args.size}x{args.size}", "cfg_step_s": sec})
    print(f"{'arch':6} {'params':>10} {'latent':>8} {'CFG step (ms)':>14}")
    for r in rows:
        print(f"{r['arch']:6} {r['params']:>10,} {r['latent']:>8} {r['cfg_step_s'] * 1e3:>14.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "sampling_step", "device": "cpu", "threads": torch.get_num_threads(),
                                    "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                                    "sampler": "euler", "cfg": 4.0, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
