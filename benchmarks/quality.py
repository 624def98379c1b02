"""Does guidance help? Every registered method's scale sweep, scored on models we trained ourselves.

    python3 scripts/host.py run-python benchmarks/quality.py [--smoke] [--datasets toy toy-ref mnist]
                                                           [--methods unguided cfg ...] [--merge] [--out DIR]

Settings (benchmarks/evidence/datasets.py): the 2D fractal class A with the autoguidance toy example's
models (class-A main model, guides: a shorter-trained narrower class-A model for autoguidance, an A∪B model
for CFG), sampled two ways — `toy`: pure noise at σ 10, Heun 32 steps, Karras σ 10 → 0.002; `toy-ref`: the
toy example's protocol, x_init = exact class-A samples diffused to σ 5, Heun 32 steps, σ 5 → 0.002 —
each scored by our metrics (exact mean log-likelihood, off-support fraction, sliced W2) and the toy
example's (log p clamped at −10, median log p, fraction inside the outline, sliced W1); and class-conditional
MNIST 16×16 (ComfyUI UNet, euler 20 steps, normal schedule; Fréchet distance, accuracy, precision
and recall in the evaluation classifier's feature space against 2,000 held-out digits). Each cell is
mean ± std over seeds. Methods come from benchmarks/evidence/methods.py (one registry entry each),
applied through the pack's real nodes and sampled with comfy.sample. Writes quality.json, quality.md
and labelled sample grids quality_<dataset>.png to --out (default benchmarks/results/). `--smoke` is
the seconds-long version CI runs (tiny sample counts, first scale of each method). `--merge` keeps the rows
of methods not run this time from the existing quality.json (same settings; time ratios of the new rows
against this run's own CFG row, so include `cfg` — or `unguided` for unconditional models — in --methods:
without the existing rows' base, the new rows' ratios are left out; the existing grids stay, this run's rows are
drawn in quality_<dataset>_merged.png).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from guidekit.cli.inprocess import import_comfy

import_comfy()                   # ComfyUI in-process (CPU) before anything below imports it

from evidence.datasets import SETTINGS  # noqa: E402  (imports ComfyUI in-process, CPU)
from evidence.grids import mnist_grid, toy_grid  # noqa: E402
from evidence.methods import REGISTRY  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FULL = {"seeds": (0, 1, 2), "n": {"toy": 4096, "toy-ref": 16384, "mnist": 300, "mnist-uncond": 300, "mnist-28": 300,
              "mnist-uncond-28": 300,   # the DiTs: 100 digits a seed (a depth sweep ~35 min)
              "mnist-dit": 100, "mnist-dit-s1": 100, "mnist-dit-s2": 100},
        "steps": None}
SMOKE = {"seeds": (0, 1), "n": {"toy": 64, "toy-ref": 64, "mnist": 10, "mnist-uncond": 10, "mnist-28": 10,
                                "mnist-uncond-28": 10, "mnist-dit": 10, "mnist-dit-s1": 10, "mnist-dit-s2": 10},
         "steps": {"toy": 4, "toy-ref": 4, "mnist": 3, "mnist-uncond": 3, "mnist-28": 3, "mnist-uncond-28": 3,
                   "mnist-dit": 3, "mnist-dit-s1": 3, "mnist-dit-s2": 3}}
BASE_LABEL = {"cfg": "CFG", "unguided": "unguided"}
GRIDS = {"toy": toy_grid, "toy-ref": toy_grid, "mnist": mnist_grid, "mnist-uncond": mnist_grid,
         "mnist-28": mnist_grid, "mnist-uncond-28": mnist_grid, "mnist-dit": mnist_grid,
         "mnist-dit-s1": mnist_grid, "mnist-dit-s2": mnist_grid}


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "values": values}


def run_setting(name: str, methods: list[str], plan: dict, smoke: bool) -> dict:
    setting = SETTINGS[name]()
    n, steps = plan["n"][name], (plan["steps"] or {}).get(name, setting.steps)
    ref = {k: [] for k in setting.higher_is_better}
    rows, grid = [], []
    for seed in plan["seeds"]:
        real = setting.reference(seed, n)
        if not grid:
            grid.append(("real data", real))
        for k, v in setting.score(real, seed).items():
            ref[k].append(v)
    for method_name in methods:
        method = REGISTRY[method_name]
        scales = method.scales.get(name)
        if not scales:
            continue
        for scale in scales[:1] if smoke else scales:
            model, cfg = method.apply(setting.model, scale, name)
            per_metric = {k: [] for k in setting.higher_is_better}
            seconds = []
            first = None
            for seed in plan["seeds"]:
                t0 = time.perf_counter()
                samples = setting.sample(model, cfg, seed, n, steps)
                seconds.append(time.perf_counter() - t0)
                if not torch.isfinite(samples).all():
                    raise RuntimeError(f"{name} / {method_name} {scale}: non-finite samples")
                first = samples if first is None else first
                for k, v in setting.score(samples, seed).items():
                    per_metric[k].append(v)
            label = method.label_for(name, scale)
            row = {"method": method_name, "label": label, "scale": scale, "cfg": cfg,
                   "metrics": {k: summarize(v) for k, v in per_metric.items()},
                   "seconds_per_run": statistics.fmean(seconds)}
            rows.append(row)
            grid.append((label, first))
            print(f"  {name:7s} {label:24s} " + "  ".join(
                f"{k} {row['metrics'][k]['mean']:.4g}±{row['metrics'][k]['std']:.2g}" for k in per_metric)
                + f"  {row['seconds_per_run']:.1f} s", flush=True)
    time_base = "cfg" if any(r["method"] == "cfg" for r in rows) else "unguided"   # unconditional models: no CFG
    base = next((r["seconds_per_run"] for r in rows if r["method"] == time_base), None)
    for r in rows:
        r["time_ratio"] = r["seconds_per_run"] / base if base else None
    if base is None:
        time_base = None             # no base row this run
    return {"sampler": setting.sampler, "scheduler": setting.scheduler, "steps": steps, "samples_per_seed": n,
            "protocol": getattr(setting, "note", ""),
            "seeds": list(plan["seeds"]), "higher_is_better": setting.higher_is_better, "time_base": time_base,
            "reference": {k: summarize(v) for k, v in ref.items()}, "runs": rows}, grid


def markdown(results: dict) -> str:
    lines = ["# GuideKit quality benchmark", "",
             f"{results['meta']['date']}, {results['meta']['machine']}, {results['meta']['runtime_s']:.0f} s. "
             "Mean ± std over seeds; ↑ higher is better, ↓ lower. Time: seconds per sampling run relative to CFG "
             "(to unguided sampling for unconditional models).", ""]
    for name, ds in results["datasets"].items():
        keys = list(ds["higher_is_better"])
        arrows = [f"{k} {'↑' if ds['higher_is_better'][k] else '↓'}" for k in keys]
        lines += [f"## {name} ({ds['samples_per_seed']} samples × {len(ds['seeds'])} seeds, "
                  f"{ds['sampler']} {ds['steps']} steps, {ds['scheduler']})", ""]
        if ds.get("protocol"):
            lines += [ds["protocol"], ""]
        lines += ["| method | " + " | ".join(arrows) + f" | time vs {BASE_LABEL.get(ds['time_base'], '–')} |",
                  "|---|" + "---|" * (len(keys) + 1)]
        ref = ds["reference"]
        lines.append("| *real data* | "
                     + " | ".join(f"{ref[k]['mean']:.4g} ± {ref[k]['std']:.2g}" for k in keys) + " | |")
        for r in ds["runs"]:
            ratio = r["time_ratio"]
            cells = [f"{r['metrics'][k]['mean']:.4g} ± {r['metrics'][k]['std']:.2g}" for k in keys]
            cells.append(f"{ratio:.2f}" if ratio is not None else "–")
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def merged(old: dict, new: dict, methods: list[str]) -> dict:
    """`old` with the runs of `methods` replaced by `new`'s (per dataset, in registry order); meta records both."""
    order = list(REGISTRY)
    out = {"meta": {**new["meta"], "merged_into": old["meta"], "methods_run": methods},
           "datasets": dict(old["datasets"])}
    for name, ds in new["datasets"].items():
        # Old rows are kept only where they were scored with this run's metrics (a setting whose metrics or
        # model changed is re-run whole); the setting's own fields (reference row, counts) are this run's.
        kept = [r for r in old["datasets"].get(name, {}).get("runs", [])
                if r["method"] not in methods and set(r["metrics"]) == set(ds["higher_is_better"])]
        old_base = old["datasets"].get(name, {}).get("time_base")
        if kept and old_base and ds["time_base"] != old_base:
            # this run's time ratios have another base than the kept rows' (or none): dropped, not mixed
            ds = {**ds, "time_base": old_base, "runs": [{**r, "time_ratio": None} for r in ds["runs"]]}
        runs = sorted(kept + ds["runs"], key=lambda r: (order.index(r["method"]) if r["method"] in order else 99,
                                                       r["scale"]))
        out["datasets"][name] = {**old["datasets"].get(name, {}), **ds, "runs": runs}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run (CI): tiny counts, first scales")
    parser.add_argument("--datasets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=list(REGISTRY), choices=list(REGISTRY))
    parser.add_argument("--merge", action="store_true",
                        help="keep the existing quality.json rows of methods not run this time")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    plan = SMOKE if args.smoke else FULL
    t0 = time.monotonic()
    datasets, grids = {}, {}
    for name in args.datasets:
        print(f"{name}:", flush=True)
        datasets[name], grids[name] = run_setting(name, args.methods, plan, args.smoke)
    results = {"meta": {"date": time.strftime("%Y-%m-%d"), "smoke": args.smoke,
                        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, "
                                   f"torch {torch.__version__}",
                        "runtime_s": time.monotonic() - t0},
               "datasets": datasets}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge and (args.out / "quality.json").exists():
        results = merged(json.loads((args.out / "quality.json").read_text()), results, args.methods)
    (args.out / "quality.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (args.out / "quality.md").write_text(table)
    for name, grid in grids.items():     # a merge keeps the full run's grid and draws this run's rows beside it
        path = args.out / f"quality_{name}.png"
        GRIDS[name](grid, path.with_name(f"quality_{name}_merged.png") if args.merge and path.exists() else path)
    print(table)
    print(f"wrote {args.out / 'quality.json'}, quality.md and the grids in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
