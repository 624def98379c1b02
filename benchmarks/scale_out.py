"""Scale-out speed-ups on this machine: refiner training on 2 processes (torchrun, DDP, gloo) vs 1, and
generation on 2 ComfyUI servers vs 1.

    python3 scripts/host.py run-python benchmarks/scale_out.py [--quick] [--parts train servers]
        [--out benchmarks/results/scale_out.json]

Training: `train_refiner` on synthetic data, timed inside the processes (start-up excluded) for the same
global batch and seed: a UNet refiner on 1×32×32 images (batch 64) and the MLP refiner on 2D points
(batch 1024). One process uses every core (torch's default threads); under torchrun each of the 2
processes gets OMP_NUM_THREADS=1 (torchrun's default), so both use the machine's 2 cores. The largest
weight difference between the two results is recorded (float32: rounding of the regrouped sums only).
Servers: the thin SD1.5 demo workflow (guidekit-thin-sd15, euler) with one seed per run, spread by the
runner's `run_prompts` (round-robin over the servers' queues, 2 queued per server) over local ComfyUI
servers started once and warmed up (model loaded) before timing; wall time of the whole batch. Settings:
1 server with every core; 2 servers with half the cores each (OMP/MKL threads); 2 servers that each take
every core (oversubscribed, what happens when the threads are left at torch's default).
Settings alternate (1, 2, 1, 2, ...; --repeats) and the fastest of each is kept; the load average before
every run is recorded: other work on the machine changes every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = {"unet": {"shape": (1, 32, 32), "n": 2048, "batch": 64, "iterations": 60},
             "mlp": {"shape": (2,), "n": 20_000, "batch": 1024, "iterations": 300}}
QUICK = {"unet": {"shape": (1, 16, 16), "n": 256, "batch": 16, "iterations": 4},
         "mlp": {"shape": (2,), "n": 512, "batch": 64, "iterations": 10}}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------------------- training

def train_worker(spec: dict, out: Path) -> None:
    """One training run (a torchrun process when WORLD_SIZE > 1); rank 0 writes seconds and weights."""
    from guidekit.postprocess import neighbours
    from guidekit.postprocess.train import TrainSettings, new_refiner, train_refiner
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.distributed.init_process_group("gloo")
    g = torch.Generator().manual_seed(0)
    shape = tuple(spec["shape"])
    real = torch.randn(spec["n"], *shape, generator=g) * 0.5 + 0.2
    generated = torch.randn(spec["n"], *shape, generator=g)
    nbrs = neighbours.top_k(generated, real, 8)
    torch.manual_seed(0)
    refiner = new_refiner(real)
    settings = TrainSettings(iterations=spec["iterations"], batch_size=spec["batch"], lr=1e-3, checkpoint_every=0)
    if world > 1:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    result = train_refiner(refiner, generated, real, nbrs, settings)
    seconds = time.perf_counter() - t0
    if world == 1 or torch.distributed.get_rank() == 0:
        torch.save({"seconds": seconds, "threads": torch.get_num_threads(), "world": world,
                    "state": result.refiner.state_dict()}, out)
    if world > 1:
        torch.distributed.barrier()                   # rank 0 has written; leave together
        torch.distributed.destroy_process_group()


def bench_training(workloads: dict, repeats: int) -> list[dict]:
    """Each workload on 1 and 2 processes, alternating (1, 2, 1, 2, ...); the fastest of each is kept."""
    rows = []
    for name, spec in workloads.items():
        with tempfile.TemporaryDirectory() as tmp:
            runs = {1: [], 2: []}
            for world in (1, 2) * repeats:
                out = Path(tmp) / f"w{world}.pt"
                launcher = ([sys.executable] if world == 1 else
                            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])
                cmd = launcher + [str(Path(__file__).resolve()), "--train-worker", json.dumps(spec), str(out)]
                before = load()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"training on {world} process(es) failed:\n{proc.stderr[-3000:]}")
                runs[world].append(torch.load(out, weights_only=True) | {"load": before})
            one, two = (min(runs[w], key=lambda r: r["seconds"]) for w in (1, 2))
            diff = max((one["state"][k] - two["state"][k]).abs().max().item() for k in one["state"])
            row = {"part": "train", "workload": name, **{k: (list(v) if isinstance(v, tuple) else v)
                                                         for k, v in spec.items()},
                   "seconds_1_process": one["seconds"], "threads_1_process": one["threads"],
                   "seconds_2_processes": two["seconds"], "threads_per_process_2": two["threads"],
                   "speedup": one["seconds"] / two["seconds"], "max_weight_difference": diff,
                   "all_seconds": {w: [r["seconds"] for r in runs[w]] for w in (1, 2)},
                   "load_before": {w: [r["load"] for r in runs[w]] for w in (1, 2)}}
            rows.append(row)
            print(f"train {name:5} 1 process {row['seconds_1_process']:7.2f} s   2 processes "
                  f"{row['seconds_2_processes']:7.2f} s   speed-up {row['speedup']:.2f}x   "
                  f"max |Δw| {diff:.2g}   load {one['load'][0]} / {two['load'][0]}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------- servers

def bench_servers(runs: int, steps: int, size: int, repeats: int) -> list[dict]:
    """The same batch of runs on 1 server with every core, and on 2 servers with half the cores each (what a
    user sharing one machine's CPU should do); also 2 servers that each take every core (oversubscribed)."""
    from guidekit.cli.run import ComfyServer, run_prompts
    comfyui = Path(os.environ["COMFYUI_PATH"])
    models = Path(os.environ["GUIDEKIT_MODELS_DIR"]) if os.environ.get("GUIDEKIT_MODELS_DIR") else None
    base = json.loads((REPO / "workflows" / "api" / "txt2img_default.json").read_text())
    base["5"]["inputs"]["steps"] = steps
    base["4"]["inputs"].update(width=size, height=size)
    cores = os.cpu_count() or 1
    half = max(1, cores // 2)

    def prompt(seed: int) -> dict:
        p = json.loads(json.dumps(base))
        p["5"]["inputs"]["seed"] = seed
        return p

    settings = {"1 server": [cores], "2 servers": [half, half], "2 servers, oversubscribed": [cores, cores]}
    servers = {name: [ComfyServer(comfyui, models, threads=t) for t in threads] for name, threads in settings.items()}
    rows, timings = [], {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, group in servers.items():
                for i, s in enumerate(group):                          # start and load the model, untimed
                    s.start().run(prompt(10_000 + i), Path(tmp) / "warmup")
            order = list(settings) * repeats + ["1 server"]            # alternating, ending on 1 (drift check)
            for j, name in enumerate(order):
                group, seed0 = servers[name], j * runs
                before = load()
                t0 = time.perf_counter()
                results = run_prompts(group, [prompt(seed0 + i) for i in range(runs)],
                                      [Path(tmp) / f"{j}-{i}" for i in range(runs)])
                seconds = time.perf_counter() - t0
                failed = [r for r in results if isinstance(r, Exception)]
                if failed:
                    raise SystemExit(f"a run failed: {failed[0]}")
                timings.setdefault(name, []).append(seconds)
                print(f"{name:27} threads {settings[name]}: {runs} runs in {seconds:6.2f} s   load {before[0]}",
                      flush=True)
                rows.append({"part": "servers", "setting": name, "servers": len(group), "threads": settings[name],
                             "runs": runs, "steps": steps, "size": size, "seconds": seconds, "load_before": before,
                             "per_server": [sum(r.server == s.url for r in results) for s in group]})
            one = min(timings["1 server"])
            summary = {"part": "servers", "summary": True, "runs": runs, "steps": steps, "size": size,
                       "seconds_1_server": one, "estimator": "fastest of the alternating batches"}
            for name in ("2 servers", "2 servers, oversubscribed"):
                key = name.replace(", ", "_").replace(" ", "_")
                summary[f"seconds_{key}"] = min(timings[name])
                summary[f"speedup_{key}"] = one / min(timings[name])
                print(f"{name}: speed-up over 1 server = {one / min(timings[name]):.2f}x (fastest of each)",
                      flush=True)
            rows.append(summary)
    finally:
        for group in servers.values():
            for s in group:
                s.stop()
    return rows


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--train-worker":
        train_worker(json.loads(sys.argv[2]), Path(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny workloads, nothing written")
    p.add_argument("--parts", nargs="+", choices=("train", "servers"), default=["train", "servers"])
    p.add_argument("--runs", type=int, default=8, help="workflow runs per server setting")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats of each setting (fastest kept)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale_out.json")
    args = p.parse_args()
    if args.quick:
        args.runs, args.steps, args.repeats = 2, 1, 1
    rows = []
    if "train" in args.parts:
        rows += bench_training(QUICK if args.quick else WORKLOADS, args.repeats)
    if "servers" in args.parts:
        rows += bench_servers(args.runs, args.steps, args.size, args.repeats)
    if args.quick:
        print("quick run: results not written")
        return
    previous = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    kept = [r for r in previous if r["part"] not in args.parts]         # a part run alone keeps the other's rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "scale_out", "device": "cpu", "cores": os.cpu_count(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "rows": kept + rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
