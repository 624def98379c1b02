"""Does the flow refiner improve samples at every guidance scale, most at large ones? (Zhao & Schwing 2025)

    python3 scripts/host.py run-python benchmarks/flow_refiner_quality.py [--smoke] [--datasets toy mnist] [--out DIR]

2D fractal, class A (the EDM toy model, Heun 32 steps): CFG and classifier guidance (the linear noisy
classifier, D = D_uncond + w σ² ∇log p(A | x_σ)) at scales 1-4; a refiner (MLP) per setting trained on
20,000 generated points towards the top-20 of 20,000 exact samples of the ground truth, plus one
one-for-all refiner on the pooled CFG scales; exact log-likelihood, off-support fraction and sliced W2 of
fresh samples before vs after. MNIST (the class-conditional demo model, euler 20 steps): CFG 1, 2, 3, 5;
refiners trained through the command line (cli/train_refiner.py) on 2,000 generated latents per scale
towards the 8,000 training digits (pixel neighbours, k 20 and 40, per scale and one-for-all) and applied
through the Flow Refine Latent node; FD / accuracy / precision / recall in the evaluation classifier's
features before vs after. Cost: refiner seconds vs one 20-step sampling run of the same samples.
Writes flow_refiner.json, flow_refiner.md and the grids flow_refiner_{toy,mnist}.png to --out
(default benchmarks/results/); the one-for-all k 20 MNIST refiner goes to benchmarks/weights/refiners/.
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
from evidence.datasets import MNISTSetting, ToySetting, _load_state  # noqa: E402
from evidence.grids import mnist_grid, toy_grid  # noqa: E402
from evidence.networks import ToyClassifier  # noqa: E402
from evidence.training import WEIGHTS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache" / "flow_refiner"
SHIPPED = WEIGHTS / "refiners" / "mnist-refiner-k20.safetensors"
FULL = {"toy": {"cfg": (1.0, 2.0, 3.0, 4.0), "cg": (1.0, 2.0, 3.0, 4.0), "train_n": 20_000, "real_n": 20_000,
                "iterations": 1500, "batch": 1024, "lr": 1e-3, "k": 20, "seeds": (0, 1, 2), "eval_n": 2000,
                "steps": 32, "ode": ("heun", 8)},
        "mnist": {"cfg": (1.0, 2.0, 3.0, 5.0), "train_n": 2000, "iterations": 800, "batch": 64, "lr": 5e-4,
                  "k": (20, 40), "k_per_scale": (20,), "seeds": (0, 1), "eval_n": 300, "steps": 20,
                  "ode": ("euler", 8)}}
SMOKE = {"toy": {**FULL["toy"], "cfg": (1.0, 3.0), "cg": (2.0,), "train_n": 256, "real_n": 512, "iterations": 20,
                 "batch": 128, "seeds": (0,), "eval_n": 64, "steps": 4},
         "mnist": {**FULL["mnist"], "cfg": (1.0, 3.0), "train_n": 24, "iterations": 4, "batch": 8, "k": (5,),
                   "k_per_scale": (5,),
                   "seeds": (0,), "eval_n": 10, "steps": 3}}


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "values": values}


# ------------------------------------------------------------------------------------------------- 2D toy

def classifier_guided(setting: ToySetting, w: float):
    """The toy model with classifier guidance: D = D_uncond + w σ² ∇_x log p(A | x_σ, σ) (Dhariwal & Nichol 2021)."""
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

    model = setting.model.clone()
    model.set_model_sampler_cfg_function(guided, disable_cfg1_optimization=True)
    return model


def toy_section(plan: dict) -> tuple[dict, list]:
    setting = ToySetting()
    real = setting.gt.sample(plan["real_n"], generator=torch.Generator().manual_seed(500))
    solver, ode_steps = plan["ode"]
    draws = {("CFG", s): (lambda seed, n, s=s: setting.sample(setting.model, s, seed, n, plan["steps"]))
             for s in plan["cfg"]}
    for s in plan["cg"]:
        model = classifier_guided(setting, s)
        draws[("CG", s)] = lambda seed, n, m=model: setting.sample(m, 2.0, seed, n, plan["steps"])

    def train(samples: torch.Tensor):
        nbrs = neighbours.top_k(samples, real, plan["k"])
        settings = TrainSettings(iterations=plan["iterations"], batch_size=plan["batch"], lr=plan["lr"], seed=0,
                                 checkpoint_every=0)
        return train_refiner(new_refiner(real), samples, real, nbrs, settings)

    train_sets = {key: draw(100, plan["train_n"]) for key, draw in draws.items()}
    refiners = {key: train(x) for key, x in train_sets.items()}
    cfg_keys = [key for key in draws if key[0] == "CFG"]
    one_for_all = train(pool_equal([train_sets[key] for key in cfg_keys]))
    rows, panels = [], []
    for key, draw in draws.items():
        variants = {"per scale": refiners[key]} | ({"one-for-all": one_for_all} if key in cfg_keys else {})
        before = {m: [] for m in setting.higher_is_better}
        after = {name: {m: [] for m in setting.higher_is_better} for name in variants}
        seconds = {name: [] for name in variants}
        for seed in plan["seeds"]:
            x = draw(seed, plan["eval_n"])
            for m, v in setting.score(x, seed).items():
                before[m].append(v)
            for name, result in variants.items():
                t0 = time.perf_counter()
                y = ode.refine(result.refiner, x, 1.0, ode_steps, solver, batch=4096)
                seconds[name].append(time.perf_counter() - t0)
                for m, v in setting.score(y, seed).items():
                    after[name][m].append(v)
                if seed == plan["seeds"][0] and name == "per scale" and key[1] in (1.0, max(plan["cfg"])):
                    panels += [(f"{key[0]} {key[1]:g}", x), (f"{key[0]} {key[1]:g} refined", y)]
        for name, result in variants.items():
            rows.append({"guidance": key[0], "scale": key[1], "refiner": name,
                         "before": {m: summarize(v) for m, v in before.items()},
                         "after": {m: summarize(v) for m, v in after[name].items()},
                         "train_seconds": result.seconds, "final_loss": result.losses[-1],
                         "refine_seconds": statistics.fmean(seconds[name])})
            print_row("toy", rows[-1], setting.higher_is_better)
    return {"higher_is_better": setting.higher_is_better, "plan": plan,
            "real": {"samples": plan["real_n"]}, "runs": rows}, panels


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
    print(f"  {name:5s} {row['guidance']} {row['scale']:g} {row['refiner']}{k}: {cells}", flush=True)


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = ["# Flow refiner: before vs after (Zhao & Schwing 2025)", "",
             f"{meta['date']}, {meta['machine']}, {meta['runtime_s']:.0f} s. Mean ± std over seeds of fresh "
             "samples (not the refiner's training samples); ↑ higher is better, ↓ lower.", "",
             *(["**Smoke run: tiny counts, not evidence.**", ""] if meta["smoke"] else [])]
    for name, ds in results["datasets"].items():
        hib = ds["higher_is_better"]
        plan = ds["plan"]
        head = " | ".join(f"{m} {'↑' if up else '↓'} before → after" for m, up in hib.items())
        extra = " | refine / sampling time" if name == "mnist" else ""
        lines += [f"## {name}", "", f"Plan: {json.dumps(plan)}", "",
                  f"| guidance | scale | refiner | {head}{extra} |",
                  "|---|---|---|" + "---|" * len(hib) + ("---|" if extra else "")]
        for r in ds["runs"]:
            cells = [f"{r['before'][m]['mean']:.4g} → **{r['after'][m]['mean']:.4g}** (± {r['after'][m]['std']:.2g})"
                     for m in hib]
            if extra:
                cells.append(f"{r['refine_vs_sampling']:.3f}")
            k = f", k {r['k']}" if "k" in r else ""
            lines.append(f"| {r['guidance']} | {r['scale']:g} | {r['refiner']}{k} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run (CI): tiny counts, few iterations")
    parser.add_argument("--datasets", nargs="+", default=["toy", "mnist"], choices=["toy", "mnist"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    plans = SMOKE if args.smoke else FULL
    t0 = time.monotonic()
    datasets, grids = {}, {}
    if "toy" in args.datasets:
        print("toy:", flush=True)
        datasets["toy"], grids["toy"] = toy_section(plans["toy"])
    if "mnist" in args.datasets:
        print("mnist:", flush=True)
        datasets["mnist"], grids["mnist"] = mnist_section(plans["mnist"], args.out, args.smoke)
    results = {"meta": {"date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "runtime_s": time.monotonic() - t0,
                        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, "
                                   f"torch {torch.__version__}"},
               "datasets": datasets}
    args.out.mkdir(parents=True, exist_ok=True)
    if "toy" in grids:
        toy_grid(grids["toy"], args.out / "flow_refiner_toy.png")
    if "mnist" in grids:
        mnist_grid(grids["mnist"], args.out / "flow_refiner_mnist.png")
    previous = args.out / "flow_refiner.json"
    if not args.smoke and previous.is_file():            # a run of some datasets keeps the others' results
        old = json.loads(previous.read_text())
        if not old["meta"].get("smoke"):
            results["datasets"] = {**old["datasets"], **datasets}
            results["meta"]["runtime_s"] += old["meta"]["runtime_s"] if set(old["datasets"]) - set(datasets) else 0
    previous.write_text(json.dumps(results, indent=1, default=str))
    table = markdown(results)
    (args.out / "flow_refiner.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
