"""GPU benchmark: the real SD1.5 (512²) and SDXL (1024²) architectures in fp16, random weights, every method.

    python3 scripts/gpu_bundle.py run                # on a GPU machine with only Python + PyTorch (no network)
    python3 scripts/host.py run-python benchmarks/gpu.py [--smoke]     # here: no GPU → says so, exits 0

Rows per model: plain CFG; ComfyUI core PAG and SAG; GuideKit PAG batched and separate (the evidence behind
`evaluation: auto`), SEG, SAG, TPG, STG, NAG (at cfg 1 against an unguided step, and with CFG), FDG;
Autoguidance with a half-width weak model (cfg 1, and with CFG); on SD1.5 FreeDoM + Polyak (exact gradient,
TAESD for the gradient, an open_clip ViT-B/16 text loss). Methods are interleaved within every repeat after an
untimed warm-up; each row is the median over repeats of its ratio to the same repeat's baseline, with the
spread, and the peak GPU memory. Writes benchmarks/results/gpu.json (and --out). `--smoke`: tiny models on
the CPU through the same code (CI), nothing written.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU, 1 repeat, nothing written")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--models", nargs="+", default=["sd15", "sdxl"])
    return p.parse_args()


def main() -> int:
    args = parse()
    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU on this machine, nothing to measure (run it where one is; "
              "--smoke checks the code path on the CPU)")
        return 0
    from guidekit.cli.inprocess import import_comfy
    import_comfy(cpu=args.smoke)
    import gpu_bench
    t0 = time.monotonic()

    def write(rows: list[dict], notes: list[str]) -> None:
        result = {"benchmark": "gpu", "device": gpu_bench.device_name(), "torch": torch.__version__,
                  "machine": platform.machine(), "dtype": "float32" if args.smoke else "float16",
                  "sampler": "euler", "scheduler": "normal", "repeats": args.repeats, "notes": notes,
                  "runtime_s": time.monotonic() - t0, "rows": rows}
        if not args.smoke:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    rows, notes = gpu_bench.run_all(args.models, args.repeats, args.smoke, done=write)
    print(gpu_bench.table(rows))
    for note in notes:
        print("note:", note)
    if args.smoke:
        print("smoke run: results not written")
        return 0
    print(f"wrote {args.out / 'gpu.json'} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
