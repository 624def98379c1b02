"""Does the flow refiner improve samples at every guidance scale, most at large ones? (Zhao & Schwing 2025)

    python3 scripts/host.py run-python benchmarks/flow_refiner_quality.py [--smoke] [--datasets toy mnist]
        [--toy-seeds N ...] [--toy-guidance CFG CG] [--out DIR]

2D fractal, class A, on the toy example's models (quality.py's `toy` setting: pure noise at σ 10, Heun 32
steps): CFG as the toy example's — the class-A model `toy-a-main` guided by the separate unconditional
`toy-ab-uncond` — and classifier guidance (D = D_AB + w σ² ∇log p(A | x_σ), the linear noisy classifier) at
scales 1-4. Per seed, scale, k ∈ {5, 20, 50} and real-set size ∈ {2,000, 20,000} exact samples, one MLP
refiner trained on 20,000 generated points towards the top-k of the real set, plus one one-for-all refiner
(k 20, 20,000) on the pooled CFG scales; 2,000 fresh samples scored before vs after by our metrics and the
toy example's four (clamped mean log p, median log p, inside-outline fraction, sliced W1), with the per-seed
paired improvement. Each (guidance, seed) piece is cached under benchmarks/.cache/flow_refiner/toy/, so the
sweep runs in short pieces (--toy-seeds, --toy-guidance); the tables summarise every cached seed of the plan.
MNIST (the class-conditional demo model, euler 20 steps): CFG 1, 2, 3, 5;
refiners trained through the command line (cli/train_refiner.py) on 2,000 generated latents per scale
towards the 8,000 training digits (pixel neighbours, k 20 and 40, per scale and one-for-all) and applied
through the Flow Refine Latent node; FD / accuracy / precision / recall in the evaluation classifier's
features before vs after. Cost: refiner seconds vs one 20-step sampling run of the same samples.
Writes flow_refiner.json, flow_refiner.md and the grids flow_refiner_{toy,mnist}.png to --out
(default benchmarks/results/); a run of one dataset keeps the other's results from the existing
flow_refiner.json. The one-for-all k 20 MNIST refiner goes to benchmarks/weights/refiners/.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from guidekit.cli.inprocess import import_comfy

import_comfy()                   # ComfyUI in-process (CPU) before anything below imports it

from guidekit.cli import train_refiner as cli  # noqa: E402
from guidekit.nodes.flow_refiner import FlowRefineLatentGK  # noqa: E402
from guidekit.postprocess import neighbours, ode  # noqa: E402
from guidekit.postprocess.refiner import load_refiner  # noqa: E402
from guidekit.postprocess.train import TrainSettings, new_refiner, pool_equal, train_refiner  # noqa: E402

import evidence.comfy_models  # noqa: E402,F401  (ComfyUI in-process first, CPU)
from evidence import mnist_data  # noqa: E402
from evidence.datasets import MNISTSetting, ToySetting, _load_state, toy_main  # noqa: E402
from evidence.grids import mnist_grid, toy_grid  # noqa: E402
from evidence.methods import REGISTRY, trained  # noqa: E402
from evidence.networks import ToyClassifier  # noqa: E402
from evidence.training import WEIGHTS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache" / "flow_refiner"
SHIPPED = WEIGHTS / "refiners" / "mnist-refiner-k20.safetensors"
FULL = {"toy": {"cfg": (1.0, 2.0, 3.0, 4.0), "cg": (1.0, 2.0, 3.0, 4.0), "train_n": 20_000,
                "real_n": (2000, 20_000), "k": (5, 20, 50), "one_for_all": (20, 20_000), "iterations": 1500,
                "batch": 1024, "lr": 1e-3, "seeds": (0, 1, 2), "eval_n": 2000, "steps": 32, "ode": ("heun", 8)},
        "mnist": {"cfg": (1.0, 2.0, 3.0, 5.0), "train_n": 2000, "iterations": 800, "batch": 64, "lr": 5e-4,
                  "k": (20, 40), "k_per_scale": (20,), "seeds": (0, 1), "eval_n": 300, "steps": 20,
                  "ode": ("euler", 8)}}
SMOKE = {"toy": {**FULL["toy"], "cfg": (1.0, 3.0), "cg": (2.0,), "train_n": 256, "real_n": (256, 512), "k": (5,),
                 "one_for_all": (5, 512), "iterations": 20, "batch": 128, "seeds": (0,), "eval_n": 64, "steps": 4},
         "mnist": {**FULL["mnist"], "cfg": (1.0, 3.0), "train_n": 24, "iterations": 4, "batch": 8, "k": (5,),
                   "k_per_scale": (5,),
                   "seeds": (0,), "eval_n": 10, "steps": 3}}


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "values": values}


# ------------------------------------------------------------------------------------------------- 2D toy

def classifier_guided(w: float):
    """The separate A∪B model with classifier guidance: D = D_AB + w σ² ∇_x log p(A | x_σ, σ) (Dhariwal & Nichol
    2021), with the linear noisy classifier; the toy example's unconditional model, so w = 1 targets class A."""
    classifier = ToyClassifier(hidden=0).eval()
    classifier.load_state_dict(_load_state(WEIGHTS / "toy-classifier-linear.safetensors"))

    def guided(args):
        x, sigma, d_uncond = args["input"], args["sigma"], args["uncond_denoised"]
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().clone().reshape(x.shape[0], 2).requires_grad_(True)
            logp = torch.log_softmax(classifier(xg, sigma.detach().clone().reshape(-1)), dim=1)[:, 0]
            grad, = torch.autograd.grad(logp.sum(), xg)
        d = d_uncond + w * sigma.reshape(-1, 1, 1, 1) ** 2 * grad.reshape(x.shape)
        return x - d                                       # ComfyUI's cfg function returns x − D

    model = trained("toy-ab-uncond").clone()
    model.set_model_sampler_cfg_function(guided, disable_cfg1_optimization=True)
    return model


def toy_draws(setting: ToySetting, plan: dict, guidance: str) -> dict:
    """(guidance, scale) → draw(seed, n): CFG as the quality benchmark's registry entry (the class-A model guided
    by the separate unconditional `toy-ab-uncond`), CG as classifier_guided; pure noise at σ 10, Heun."""
    draws = {}
    for s in plan["cfg"] if guidance == "CFG" else plan["cg"]:
        if guidance == "CFG":
            model, cfg = REGISTRY["cfg"].apply(setting.model, s, "toy")
        else:
            model, cfg = classifier_guided(s), 2.0          # the cfg value is unused: the cfg function replaces it
        draws[(guidance, s)] = lambda seed, n, m=model, c=cfg: setting.sample(m, c, seed, n, plan["steps"])
    return draws


def train_toy_refiner(samples: torch.Tensor, real: torch.Tensor, nbrs: torch.Tensor, plan: dict, seed: int):
    """One MLP refiner towards `nbrs` (each generated point's k nearest of `real`), initialised and trained with
    `seed`."""
    torch.manual_seed(seed)
    settings = TrainSettings(iterations=plan["iterations"], batch_size=plan["batch"], lr=plan["lr"], seed=seed,
                             checkpoint_every=0)
    return train_refiner(new_refiner(real), samples, real, nbrs, settings)


def toy_seed_records(setting: ToySetting, plan: dict, guidance: str, seed: int) -> tuple[list[dict], list]:
    """One seed of one guidance: per-scale refiners for every (k, real-set size), one one-for-all refiner on the
    pooled CFG scales; raw before/after scores of fresh samples. The seed draws the training samples, the exact
    real set, the refiners' initialisation and batches, and the evaluation samples."""
    solver, ode_steps = plan["ode"]
    draws = toy_draws(setting, plan, guidance)
    real_all = setting.gt.sample(max(plan["real_n"]), generator=torch.Generator().manual_seed(500 + seed))
    train_sets = {key: draw(100 + seed, plan["train_n"]) for key, draw in draws.items()}
    variants = {}                                          # (key, refiner, k, real_n) → TrainResult
    for n_real in plan["real_n"]:
        real = real_all[:n_real]
        for key, x in train_sets.items():
            nbrs = neighbours.top_k(x, real, max(plan["k"]))
            for k in plan["k"]:
                variants[(key, "per scale", k, n_real)] = train_toy_refiner(x, real, nbrs[:, :k], plan, seed)
    k_ofa, n_ofa = plan["one_for_all"]
    if guidance == "CFG":
        pooled = pool_equal(list(train_sets.values()), seed=seed)
        result = train_toy_refiner(pooled, real_all[:n_ofa], neighbours.top_k(pooled, real_all[:n_ofa], k_ofa),
                                   plan, seed)
        variants |= {(key, "one-for-all", k_ofa, n_ofa): result for key in draws}
    records, panels = [], []
    for key, draw in draws.items():
        x = draw(seed, plan["eval_n"])
        before = setting.score(x, seed)
        for (vkey, name, k, n_real), result in variants.items():
            if vkey != key:
                continue
            t0 = time.perf_counter()
            y = ode.refine(result.refiner, x, 1.0, ode_steps, solver, batch=4096)
            refine_s = time.perf_counter() - t0
            records.append({"guidance": key[0], "scale": key[1], "refiner": name, "k": k, "real_n": n_real,
                            "seed": seed, "before": before, "after": setting.score(y, seed),
                            "train_seconds": result.seconds, "final_loss": result.losses[-1],
                            "refine_seconds": refine_s})
            if (seed == plan["seeds"][0] and name == "per scale" and (k, n_real) == (k_ofa, n_ofa)
                    and key[1] in (min(draws)[1], max(draws)[1])):
                panels += [(f"{key[0]} {key[1]:g}", x), (f"{key[0]} {key[1]:g} refined", y)]
    return records, panels


def toy_rows(records: list[dict], hib: dict) -> list[dict]:
    """Records grouped by (guidance, scale, refiner, k, real_n): before, after and the per-seed paired improvement
    (after − before, sign-flipped for lower-is-better metrics, so + is better), each mean ± std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["guidance"], r["scale"], r["refiner"], r["k"], r["real_n"]), []).append(r)
    order = {"CFG": 0, "CG": 1}
    rows = []
    for (g, s, name, k, n_real), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), *kv[0][1:])):
        rs = sorted(rs, key=lambda r: r["seed"])
        rows.append({"guidance": g, "scale": s, "refiner": name, "k": k, "real_n": n_real,
                     "seeds": [r["seed"] for r in rs],
                     "before": {m: summarize([r["before"][m] for r in rs]) for m in hib},
                     "after": {m: summarize([r["after"][m] for r in rs]) for m in hib},
                     "improvement": {m: summarize([(r["after"][m] - r["before"][m]) * (1 if up else -1) for r in rs])
                                     for m, up in hib.items()},
                     "train_seconds": statistics.fmean(r["train_seconds"] for r in rs),
                     "final_loss": statistics.fmean(r["final_loss"] for r in rs),
                     "refine_seconds": statistics.fmean(r["refine_seconds"] for r in rs)})
    return rows


def plan_key(plan: dict) -> str:
    """The plan as canonical JSON (seeds left out): cached seed records are reused only under the same plan."""
    return json.dumps({k: v for k, v in plan.items() if k != "seeds"}, sort_keys=True, default=list)


def toy_section(plan: dict, cache: Path, guidances: list[str], seeds: list[int]) -> tuple[dict, list]:
    """Runs `seeds` × `guidances` (each cached as <guidance>-seed<n>.json under `cache`), then summarises every
    cached record of this plan, so a sweep can be run in short pieces (--toy-seeds, --toy-guidance)."""
    setting = toy_main()
    hib = setting.higher_is_better
    cache.mkdir(parents=True, exist_ok=True)
    for guidance in guidances:
        for seed in seeds:
            records, panels = toy_seed_records(setting, plan, guidance, seed)
            (cache / f"{guidance}-seed{seed}.json").write_text(json.dumps({"plan": plan_key(plan),
                                                                          "records": records}, indent=1))
            if panels:                                     # the grid's panels (first seed) for this guidance
                torch.save({"plan": plan_key(plan), "panels": panels}, cache / f"{guidance}-panels.pt")
    records, panels = [], []
    for path in sorted(cache.glob("*-seed*.json")):
        stored = json.loads(path.read_text())
        if stored["plan"] == plan_key(plan):
            records += stored["records"]
    for guidance in ("CFG", "CG"):
        path = cache / f"{guidance}-panels.pt"
        stored = torch.load(path, weights_only=True) if path.is_file() else {}
        panels += stored["panels"] if stored.get("plan") == plan_key(plan) else []
    rows = toy_rows(records, hib)
    for row in rows:
        print_row("toy", row, hib)
    return {"higher_is_better": hib, "plan": plan, "protocol": setting.note,
            "real": {"samples": list(plan["real_n"])}, "runs": rows}, panels


# ---------------------------------------------------------------------------------------------------- MNIST

def mnist_section(plan: dict, out: Path, smoke: bool) -> tuple[dict, list]:
    setting = MNISTSetting()
    cache = out / "flow_refiner_cache" if smoke else CACHE
    cache.mkdir(parents=True, exist_ok=True)
    real = mnist_data.to_latent(setting.train)
    real_file = cache / "real.safetensors"
    save_file({"latent_tensor": real.contiguous()}, str(real_file))
    solver, ode_steps = plan["ode"]
    gen_files = {}
    for s in plan["cfg"]:
        gen_files[s] = cache / f"generated-cfg{s:g}-n{plan['train_n']}.safetensors"
        if not gen_files[s].is_file():                    # sampling is the slow part: reuse an earlier run's set
            x = setting.sample_latent(setting.model, s, 100, plan["train_n"], plan["steps"])
            save_file({"latent_tensor": x.contiguous()}, str(gen_files[s]))

    def train(files: list[Path], k: int, name: str) -> tuple[object, float]:
        path = cache / f"{name}.safetensors"
        checkpoint = cache / f"{name}.ckpt"
        checkpoint.unlink(missing_ok=True)
        t0 = time.perf_counter()
        cli.main(["--generated", *map(str, files), "--real", str(real_file), "--out", str(path), "--k", str(k),
                  "--iterations", str(plan["iterations"]), "--batch-size", str(plan["batch"]), "--lr", str(plan["lr"]),
                  "--latent-format", "GuideKit MNIST demo (pixel space)", "--checkpoint", str(checkpoint),
                  "--checkpoint-every", "0", "--device", "cpu", "--quiet"])
        checkpoint.unlink(missing_ok=True)
        return load_refiner(path), time.perf_counter() - t0

    refiners = {}
    for k in plan["k"]:
        refiners[("one-for-all", k)] = train(list(gen_files.values()), k, f"mnist-ofa-k{k}")
        for s in plan["cfg"] if k in plan["k_per_scale"] else ():
            refiners[(s, k)] = train([gen_files[s]], k, f"mnist-cfg{s:g}-k{k}")
    if not smoke:
        SHIPPED.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cache / "mnist-ofa-k20.safetensors", SHIPPED)
    rows, grid = [], [("real data", setting.reference(0, 20))]
    for s in plan["cfg"]:
        variants = {name: rf for name, rf in refiners.items() if name[0] in (s, "one-for-all")}
        before = {m: [] for m in setting.higher_is_better}
        after = {name: {m: [] for m in setting.higher_is_better} for name in variants}
        sample_s, refine_s = [], {name: [] for name in variants}
        for seed in plan["seeds"]:
            t0 = time.perf_counter()
            x = setting.sample_latent(setting.model, s, seed, plan["eval_n"], plan["steps"])
            sample_s.append(time.perf_counter() - t0)
            for m, v in setting.score(mnist_data.from_latent(x), seed).items():
                before[m].append(v)
            for name, (rf, _) in variants.items():
                t0 = time.perf_counter()
                y = FlowRefineLatentGK.execute(rf, {"samples": x}, solver, ode_steps, 1.0).result[0]["samples"]
                refine_s[name].append(time.perf_counter() - t0)
                for m, v in setting.score(mnist_data.from_latent(y), seed).items():
                    after[name][m].append(v)
                if seed == plan["seeds"][0] and name == (s, plan["k"][0]):
                    grid += [(f"CFG {s:g}", mnist_data.from_latent(x[:20])),
                             (f"CFG {s:g} refined", mnist_data.from_latent(y[:20]))]
        for name in variants:
            rows.append({"guidance": "CFG", "scale": s, "refiner": "per scale" if name[0] == s else "one-for-all",
                         "k": name[1], "before": {m: summarize(v) for m, v in before.items()},
                         "after": {m: summarize(v) for m, v in after[name].items()},
                         "train_seconds": variants[name][1], "sample_seconds": statistics.fmean(sample_s),
                         "refine_seconds": statistics.fmean(refine_s[name])})
            rows[-1]["refine_vs_sampling"] = rows[-1]["refine_seconds"] / rows[-1]["sample_seconds"]
            print_row("mnist", rows[-1], setting.higher_is_better)
    return {"higher_is_better": setting.higher_is_better, "plan": plan, "real": {"samples": real.shape[0]},
            "ode": {"solver": solver, "steps": ode_steps}, "runs": rows}, grid


# ------------------------------------------------------------------------------------------------- output

def print_row(name: str, row: dict, hib: dict) -> None:
    cells = "  ".join(f"{m} {row['before'][m]['mean']:.4g}→{row['after'][m]['mean']:.4g}" for m in hib)
    k = f" k{row['k']}" if "k" in row else ""
    real = f" real {row['real_n']}" if "real_n" in row else ""
    print(f"  {name:5s} {row['guidance']} {row['scale']:g} {row['refiner']}{k}{real}: {cells}", flush=True)


def toy_markdown(ds: dict) -> list[str]:
    """The toy section: an improvement-by-scale table per metric (the claim's view), then every row in full."""
    hib, runs = ds["higher_is_better"], ds["runs"]
    scales = sorted({r["scale"] for r in runs})
    measured = {g: sorted({seed for r in runs if r["guidance"] == g for seed in r["seeds"]})
                for g in dict.fromkeys(r["guidance"] for r in runs)}
    lines = [f"Plan: {json.dumps(ds['plan'])}", "", ds.get("protocol", ""), "",
             "Measured so far: " + "; ".join(f"{g} seeds {', '.join(map(str, s))}" for g, s in measured.items())
             + f" (of the plan's {len(ds['plan']['seeds'])}).", "",
             "Improvement after − before (+ = better; sign flipped for ↓ metrics), mean ± std over seeds of the "
             "per-seed paired difference; per scale unless marked one-for-all:", ""]
    variants = list(dict.fromkeys((r["guidance"], r["refiner"], r["k"], r["real_n"]) for r in runs))
    for m, up in hib.items():
        lines += [f"**{m}** {'↑' if up else '↓'}", "",
                  "| guidance | refiner | k | real set | " + " | ".join(f"scale {s:g}" for s in scales) + " |",
                  "|---|---|---|---|" + "---|" * len(scales)]
        for g, name, k, n_real in variants:
            cells = []
            for s in scales:
                row = next((r for r in runs if (r["guidance"], r["scale"], r["refiner"], r["k"], r["real_n"])
                            == (g, s, name, k, n_real)), None)
                imp = row["improvement"][m] if row else None
                cells.append(f"{imp['mean']:+.3g} ± {imp['std']:.2g}" if imp else "")
            lines.append(f"| {g} | {name} | {k} | {n_real} | " + " | ".join(cells) + " |")
        lines.append("")
    head = " | ".join(f"{m} {'↑' if up else '↓'} before → after" for m, up in hib.items())
    lines += ["All rows (mean, after ± std over seeds):", "",
              f"| guidance | scale | refiner | k | real set | {head} |", "|---|---|---|---|---|" + "---|" * len(hib)]
    for r in runs:
        cells = [f"{r['before'][m]['mean']:.4g} → **{r['after'][m]['mean']:.4g}** (± {r['after'][m]['std']:.2g})"
                 for m in hib]
        lines.append(f"| {r['guidance']} | {r['scale']:g} | {r['refiner']} | {r['k']} | {r['real_n']} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def mnist_markdown(ds: dict) -> list[str]:
    """The MNIST section: one row per (scale, refiner, k), before → after and the refiner's share of sampling time."""
    hib = ds["higher_is_better"]
    head = " | ".join(f"{m} {'↑' if up else '↓'} before → after" for m, up in hib.items())
    lines = [f"Plan: {json.dumps(ds['plan'])}", "",
             f"| guidance | scale | refiner | {head} | refine / sampling time |",
             "|---|---|---|" + "---|" * (len(hib) + 1)]
    for r in ds["runs"]:
        cells = [f"{r['before'][m]['mean']:.4g} → **{r['after'][m]['mean']:.4g}** (± {r['after'][m]['std']:.2g})"
                 for m in hib]
        cells.append(f"{r['refine_vs_sampling']:.3f}")
        lines.append(f"| {r['guidance']} | {r['scale']:g} | {r['refiner']}, k {r['k']} | " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(results: dict) -> str:
    lines = ["# Flow refiner: before vs after (Zhao & Schwing 2025)", "",
             "Mean ± std over seeds of fresh samples (not the refiner's training samples); ↑ higher is better, "
             "↓ lower.", "", *(["**Smoke run: tiny counts, not evidence.**", ""] if results["meta"]["smoke"] else [])]
    for name, ds in results["datasets"].items():
        meta = ds.get("meta", results["meta"])
        lines += [f"## {name}", "", f"{meta['date']}, {meta['machine']}, {meta['runtime_s']:.0f} s"
                  f"{meta.get('note', '')}.", ""]
        lines += toy_markdown(ds) if name == "toy" else mnist_markdown(ds)
    return "\n".join(lines)


def machine() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run (CI): tiny counts, few iterations")
    parser.add_argument("--datasets", nargs="+", default=["toy", "mnist"], choices=["toy", "mnist"])
    parser.add_argument("--toy-seeds", nargs="+", type=int, help="run only these toy seeds (default: the plan's); "
                        "the tables summarise every seed cached under the same plan")
    parser.add_argument("--toy-guidance", nargs="+", default=["CFG", "CG"], choices=["CFG", "CG"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    plans = SMOKE if args.smoke else FULL
    datasets, grids = {}, {}
    if "toy" in args.datasets:
        print("toy:", flush=True)
        t0 = time.monotonic()
        cache = (args.out / "flow_refiner_cache" if args.smoke else CACHE) / "toy"
        datasets["toy"], grids["toy"] = toy_section(plans["toy"], cache, args.toy_guidance,
                                                    args.toy_seeds or list(plans["toy"]["seeds"]))
        datasets["toy"]["meta"] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                                   "runtime_s": time.monotonic() - t0,
                                   "note": f" (this run: {' '.join(args.toy_guidance)}, seeds "
                                           f"{' '.join(map(str, args.toy_seeds or plans['toy']['seeds']))}; "
                                           "the tables hold every cached seed)"}
    if "mnist" in args.datasets:
        print("mnist:", flush=True)
        t0 = time.monotonic()
        datasets["mnist"], grids["mnist"] = mnist_section(plans["mnist"], args.out, args.smoke)
        datasets["mnist"]["meta"] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                                     "runtime_s": time.monotonic() - t0}
    results = {"meta": {"date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "machine": machine()},
               "datasets": datasets}
    args.out.mkdir(parents=True, exist_ok=True)
    if grids.get("toy"):
        toy_grid(grids["toy"], args.out / "flow_refiner_toy.png")
    if grids.get("mnist"):
        mnist_grid(grids["mnist"], args.out / "flow_refiner_mnist.png")
    previous = args.out / "flow_refiner.json"
    if not args.smoke and previous.is_file():            # a run of some datasets keeps the others' results
        old = json.loads(previous.read_text())
        if not old["meta"].get("smoke"):
            for name, ds in old["datasets"].items():     # older files kept one run's date and time in the top meta
                shared = {k: old["meta"][k] for k in ("date", "machine", "runtime_s") if k in old["meta"]}
                ds.setdefault("meta", {**shared, "note": " (one run of every dataset together)"})
            results["datasets"] = {**old["datasets"], **datasets}
    previous.write_text(json.dumps(results, indent=1, default=str))
    table = markdown(results)
    (args.out / "flow_refiner.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
