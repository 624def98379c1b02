"""Does loss guidance steer? Every method of GuideKit Loss Guidance, and two claims of Shen et al. (2024).

    python3 scripts/host.py run-python benchmarks/loss_guidance_quality.py [--smoke | --probe]
                                        [--seeds 0 1 2] [--samples 300] [--out DIR]

The unconditional MNIST model (weights/mnist-uncond) is guided by the pack's real nodes: GuideKit Loss
Guidance with the Classifier Loss of the weak, clean-trained guidance classifier (mnist-classifier-guidance),
target digit i % 10 for image i; euler, normal schedule, guidance over the first 80 % of the schedule
(the node's default end_percent 0.8), no recurrence, cfg 1. The augmentation-trained evaluation classifier
(mnist-classifier-eval) judges the samples: target-class accuracy, and FD / precision / recall in its
feature space against held-out digits (MNISTUncondSetting). Sections:
  1. methods: FreeDoM, MPGD, UG, LGD-MC, DPS with the Polyak step, and DPS / FreeDoM with their papers' rules
     (fixed / rms), two probed scales each.
  2. claim 1: random augmentation raises the judge's accuracy at equal guidance-network loss.
  3. claim 2: the Polyak step reaches a given accuracy in fewer sampling steps than FreeDoM's rms rule
     (and the fixed step), at 20 / 50 / 100 steps (first two seeds, at most 200 samples each).
  4. fast gradient: the class-conditional model (mnist-main) at CFG 1.5 (prompt digit i % 10, the null token as
     negative), FreeDoM + Polyak with the exact gradient (through both rows) vs the fast one (conditional row
     only); the quality cost of the fast mode at equal scale.
`--only NAME ...` runs those sections and merges them into --out's existing loss_guidance.json.
Scales were probed on this model (`--probe`: 100 samples of seed 100, not an evaluation seed; writes
loss_guidance_probe.md). Writes loss_guidance.json, loss_guidance.md and loss_guidance_mnist.png to --out
(default benchmarks/results/). `--smoke` is the seconds-long version (8 samples, 2 steps, 2 configs a section).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from guidekit.cli.inprocess import import_comfy

import_comfy()                   # ComfyUI in-process (CPU) before anything below imports it

from quality import summarize  # noqa: E402

from guidekit.nodes import loss_networks, loss_terms  # noqa: E402
from guidekit.nodes.loss_guidance import LossGuidanceGK  # noqa: E402

from evidence import metrics  # noqa: E402
from evidence.comfy_models import demo_mnist  # noqa: E402
from evidence.datasets import MNISTSetting, MNISTUncondSetting  # noqa: E402  (imports ComfyUI in-process, CPU)
from evidence.grids import mnist_grid  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GUIDANCE_NET = "mnist-classifier-guidance.safetensors"
AUGMENTATIONS = "color,translation,resize,cutout"
END_PERCENT = 0.8
COPIES = 8
REAL = "real data"                                       # reference row: training digits of classes i % 10
# Scales from `--probe` (loss_guidance_probe.md: 100 samples of seed 100, 20 steps). Section 1: per method and rule
# the probed scale of best judge accuracy (ties: the smaller) and the next smaller probed scale.
METHOD_SCALES = {("FreeDoM", "polyak"): (0.05, 0.1), ("MPGD", "polyak"): (0.5, 1.0), ("UG", "polyak"): (0.1, 0.25),
                 ("LGD-MC", "polyak"): (0.05, 0.1), ("DPS", "polyak"): (0.01, 0.02), ("DPS", "fixed"): (2.0, 4.0),
                 ("FreeDoM", "rms"): (0.01, 0.02)}
AUGMENT_SCALES = (0.005, 0.0075, 0.01, 0.02, 0.05)    # claim 1: both sweeps span the same guidance losses in the probe
RULE_SCALES = {"polyak": 0.1, "rms": 0.02, "fixed": 1.0}       # claim 2: each rule's best probed 20-step scale
PROBE_SCALES = {"polyak": (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 4.0),
                "rms": (0.01, 0.02, 0.05, 0.1, 0.25, 1.0), "fixed": (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)}
FULL = {"seeds": (0, 1, 2), "samples": 300, "steps": 20, "sweep_steps": (20, 50, 100), "sweep_seeds": 2,
        "sweep_samples": 200, "configs": None}
SMOKE = {"seeds": (0,), "samples": 8, "steps": 2, "sweep_steps": (2, 3), "sweep_seeds": 1, "sweep_samples": 8,
         "configs": 2}
FAST_CFG = 1.5                                          # section 4: CFG where accuracy is not saturated (0.90)
# section 4: FreeDoM's (rule, scale): Polyak at its best probed cfg-1 scale, and FreeDoM's own rms rule at claim 2's
# scale (Polyak's ‖ε‖/‖∇‖² step grows where the loss is already low, as on the conditional model)
FAST_RUNS = (("polyak", 0.05), ("rms", 0.02))
METRICS = {"judge accuracy": True, "guide accuracy": True, "guide loss": False, "FD": False, "precision": True,
           "recall": True}


@dataclass(frozen=True)
class Run:
    """One sampling configuration (method 'unguided' = the plain model)."""
    method: str = "unguided"
    rule: str = ""
    scale: float = 0.0
    copies: int = 0
    steps: int = 20
    cfg: float = 1.0             # > 1: the class-conditional model, prompt digit i % 10 against the null token
    gradient: str = "exact"

    @property
    def label(self) -> str:
        cond = f" cfg {self.cfg:g}" if self.cfg != 1.0 else ""
        if self.method in ("unguided", REAL):
            return "real digits 0-9" if self.method == REAL else f"unguided{cond} {self.steps} st"
        aug = f" aug{self.copies}" if self.copies else ""
        fast = " fast" if self.gradient == "fast" else ""
        return f"{self.method} {self.rule} {self.scale:g}{aug}{fast}{cond} {self.steps} st"


@dataclass(frozen=True)
class Section:
    title: str
    runs: tuple[Run, ...]
    seeds: tuple[int, ...]
    samples: int


class Bench:
    """The models, their pixel 'VAE', the guidance classifier and the judge; runs measured once each."""

    def __init__(self):
        loss_networks.register_model_folders()
        self.uncond = MNISTUncondSetting()
        self.cond: MNISTSetting | None = None                   # section 4's class-conditional model, on demand
        self.vae = demo_mnist.pixel_space_vae()
        self.net = loss_terms.NetworkLoaderGK.execute(GUIDANCE_NET, "auto", "auto", 0).result[0]
        self.done: dict = {}
        self.kept: dict = {}             # --only: rows of --out's JSON reused by label (same seeds and size)

    def setting_of(self, run: Run) -> MNISTSetting:
        """The unconditional setting at cfg 1, the class-conditional one under CFG."""
        if run.cfg == 1.0:
            return self.uncond
        self.cond = self.cond or MNISTSetting()
        return self.cond

    def model(self, run: Run, n: int):
        """The base model patched by Loss Guidance with the classifier loss toward digit i % 10."""
        base = self.setting_of(run).model
        if run.method == "unguided":
            return base
        targets = ",".join(map(str, MNISTSetting.labels(n)))
        loss = loss_terms.ClassifierLossGK.execute(self.net, targets, 1.0).result[0]
        return LossGuidanceGK.execute(base, self.vae, loss, run.method, run.rule, run.scale, run.copies,
                                      AUGMENTATIONS, 1, 0.3, 0.7, 0.0, END_PERCENT, 4, 0, 0.1,
                                      gradient=run.gradient).result[0]

    def score(self, samples: torch.Tensor, seed: int) -> dict[str, float]:
        """Judge and guidance-network accuracy toward i % 10, guidance cross-entropy, FD / precision / recall."""
        targets = torch.tensor(MNISTSetting.labels(samples.shape[0]))
        judge = self.uncond.classifier
        logits = self.net(samples.expand(-1, 3, -1, -1)).float()
        return {"judge accuracy": metrics.accuracy(judge.head(judge.features(samples)), targets),
                "guide accuracy": metrics.accuracy(logits, targets),
                "guide loss": float(F.cross_entropy(logits, targets)), **self.uncond.score(samples, seed)}

    def real_digits(self, seed: int, n: int) -> torch.Tensor:
        """n training digits of classes i % 10 (MNISTSetting.reference with the class-conditional labels)."""
        labelled = SimpleNamespace(labels=MNISTSetting.labels, split=self.uncond.split, train=self.uncond.train)
        return MNISTSetting.reference(labelled, seed, n)

    def draw(self, model, run: Run, seed: int, n: int) -> tuple[torch.Tensor, float]:
        """n samples of a run (real digits for the reference row) and the seconds they took."""
        t0 = time.perf_counter()
        samples = (self.real_digits(seed, n) if model is None
                   else self.setting_of(run).sample(model, run.cfg, seed, n, run.steps))
        return samples, time.perf_counter() - t0

    def measure(self, run: Run, seeds: tuple[int, ...], n: int) -> tuple[dict, torch.Tensor]:
        """Metrics (mean ± std over seeds), time vs unguided and the first seed's samples; cached.

        The time ratio pairs the first seed's batch with an unguided batch of the same seed, steps and size drawn
        right after it, so that load from other processes on the machine shifts both alike.
        """
        key = (run, seeds, n)
        kept = self.kept.get(run.label)
        if key not in self.done and kept and kept["seeds"] == list(seeds) and kept["samples_per_seed"] == n:
            print(f"  {run.label:28s} kept from the earlier run", flush=True)
            self.done[key] = (kept, None)
        if key not in self.done:
            model = None if run.method == REAL else self.model(run, n)
            if model is not None:
                self.setting_of(run).sample(model, run.cfg, seeds[0], 4, 2)  # untimed warm-up of this patcher
            values, seconds, first, ratio = {k: [] for k in METRICS}, [], None, None
            for seed in seeds:
                samples, took = self.draw(model, run, seed, n)
                seconds.append(took)
                if not torch.isfinite(samples).all():
                    raise RuntimeError(f"{run.label}: non-finite samples")
                if first is None and model is not None:
                    base = took if run.method == "unguided" else self.draw(self.setting_of(run).model, run, seed, n)[1]
                    ratio = took / base
                first = samples if first is None else first
                for k, v in self.score(samples, seed).items():
                    values[k].append(v)
            row = {**asdict(run), "label": run.label, "samples_per_seed": n, "seeds": list(seeds),
                   "metrics": {k: summarize(v) for k, v in values.items()},
                   "seconds_per_batch": statistics.fmean(seconds), "seconds": seconds, "time_ratio": ratio}
            self.done[key] = (row, first)
            print(f"  {run.label:28s} " + "  ".join(f"{k} {row['metrics'][k]['mean']:.3f}" for k in METRICS)
                  + f"  {row['seconds_per_batch']:.1f} s  ×{ratio or 0:.2f}", flush=True)
        return self.done[key]

    def section(self, section: Section) -> list[dict]:
        return [self.measure(run, section.seeds, section.samples)[0] for run in section.runs]


def sections(plan: dict, seeds: tuple[int, ...], n: int) -> dict[str, Section]:
    """The three sections of the benchmark (smoke: the first `configs` runs of each)."""
    steps, first = plan["steps"], plan["configs"]
    methods = [Run(REAL, steps=0), Run(steps=steps)] + [
        Run(m, r, s, 0, steps) for (m, r), scales in METHOD_SCALES.items() for s in scales]
    augment = [Run("FreeDoM", "polyak", s, c, steps) for c in (0, COPIES) for s in AUGMENT_SCALES]
    sweep = [Run(steps=k) for k in plan["sweep_steps"]] + [
        Run("FreeDoM", r, s, 0, k) for r, s in RULE_SCALES.items() for k in plan["sweep_steps"]]
    sweep_seeds, sweep_n = seeds[:plan["sweep_seeds"]], min(n, plan["sweep_samples"])
    fast = [Run(steps=steps, cfg=FAST_CFG)] + [Run("FreeDoM", rule, scale, 0, steps, FAST_CFG, g)
                                                for rule, scale in FAST_RUNS for g in ("exact", "fast")]
    if first:
        fast = fast[:3]
        methods, augment = methods[:first + 1], [augment[0], augment[len(AUGMENT_SCALES)]]
        fewer, more = plan["sweep_steps"][:2]
        sweep = [Run("FreeDoM", "polyak", RULE_SCALES["polyak"], 0, fewer),
                 Run("FreeDoM", "rms", RULE_SCALES["rms"], 0, more)]
    return {"methods": Section("Methods (Polyak step; DPS fixed and FreeDoM rms: the papers' rules)", tuple(methods),
                               seeds, n),
            "claim 1": Section(f"Claim 1: random augmentation ({COPIES} copies) at matched guidance loss",
                               tuple(augment), seeds, n),
            "claim 2": Section("Claim 2: Polyak vs FreeDoM's rms rule (and fixed) over sampling steps", tuple(sweep),
                               sweep_seeds, sweep_n),
            "fast gradient": Section(f"Fast gradient (conditional row only) vs exact, class-conditional model at "
                                     f"CFG {FAST_CFG:g}", tuple(fast), seeds, n)}


def probe_section(steps: int, n: int) -> Section:
    """A wide scale sweep of every method and rule, on a seed no evaluation uses."""
    combos = [(m, "polyak") for m in ("FreeDoM", "MPGD", "UG", "LGD-MC", "DPS")]
    combos += [("DPS", "fixed"), ("FreeDoM", "rms"), ("FreeDoM", "fixed")]
    runs = [Run(steps=steps)] + [Run(m, r, s, 0, steps) for m, r in combos for s in PROBE_SCALES[r]]
    runs += [Run("FreeDoM", "polyak", s, COPIES, steps) for s in PROBE_SCALES["polyak"]]
    return Section("Scale probe (seed 100)", tuple(runs), (100,), n)


def judge(row: dict) -> tuple[float, int]:
    """Mean judge accuracy and the number of samples behind it (all seeds)."""
    return row["metrics"]["judge accuracy"]["mean"], row["samples_per_seed"] * len(row["seeds"])


def significant(a: float, na: int, b: float, nb: int) -> float:
    """(a − b) in units of its binomial standard error."""
    se = math.sqrt(max(a * (1 - a), 1e-4) / na + max(b * (1 - b), 1e-4) / nb)
    return (a - b) / se


def at_loss(rows: list[dict], loss: float, key: str) -> float | None:
    """Metric `key` of the rows linearly interpolated at this guidance loss (None outside their loss range)."""
    points = sorted((r["metrics"]["guide loss"]["mean"], r["metrics"][key]["mean"]) for r in rows)
    for (l0, v0), (l1, v1) in zip(points, points[1:]):
        if l0 <= loss <= l1:
            return v0 + (v1 - v0) * ((loss - l0) / (l1 - l0) if l1 > l0 else 0.0)
    return None


def verdict_augmentation(rows: list[dict]) -> dict:
    """Judge accuracy (and FD) with augmentation vs without, the latter interpolated at the same guidance loss."""
    plain = [r for r in rows if r["copies"] == 0]
    points = []
    for r in (r for r in rows if r["copies"] > 0):
        loss, (acc, n) = r["metrics"]["guide loss"]["mean"], judge(r)
        base = at_loss(plain, loss, "judge accuracy")
        point = {"run": r["label"], "guide loss": loss, "judge accuracy": acc, "matched": base is not None}
        if base is not None:
            point.update({"plain accuracy at that loss": base, "gain": acc - base,
                          "z": significant(acc, n, base, judge(plain[0])[1]), "FD": r["metrics"]["FD"]["mean"],
                          "plain FD at that loss": at_loss(plain, loss, "FD")})
        points.append(point)
    matched = [p for p in points if p["matched"]]
    wins = sum(p["z"] > 2 for p in matched)
    if not matched:
        outcome = "inconclusive (the guidance-loss ranges do not overlap)"
    else:
        outcome = "reproduced" if wins == len(matched) else "partly" if wins else "not reproduced"
    rule = ("each augmented run is compared with the unaugmented FreeDoM+Polyak sweep linearly interpolated at its "
            "guidance loss (runs outside that loss range are unmatched); a win is a judge-accuracy gain above 2 "
            "binomial standard errors; reproduced = every matched run wins, partly = some, not reproduced = none")
    return {"verdict": outcome, "rule": rule, "points": points}


def verdict_steps(rows: list[dict]) -> dict:
    """Polyak at each step count vs FreeDoM's rms rule (the claim) and the fixed step at the next larger count."""
    acc = {(r["rule"], r["steps"]): judge(r) for r in rows if r["method"] == "FreeDoM"}
    counts = sorted({k for _, k in acc})
    pairs, same = [], []
    for other in ("rms", "fixed"):
        for fewer, more in zip(counts, counts[1:]):
            if ("polyak", fewer) in acc and (other, more) in acc:
                z = significant(*acc["polyak", fewer], *acc[other, more])
                pairs.append({"other": other, "polyak steps": fewer, "polyak": acc["polyak", fewer][0],
                              "other steps": more, "other accuracy": acc[other, more][0], "z": z, "matches": z > -2})
        same += [{"other": other, "steps": k, "polyak": acc["polyak", k][0], "other accuracy": acc[other, k][0],
                  "z": significant(*acc["polyak", k], *acc[other, k])}
                 for k in counts if ("polyak", k) in acc and (other, k) in acc]
    rms_pairs = [p for p in pairs if p["other"] == "rms"]
    matches = sum(p["matches"] for p in rms_pairs)
    ahead = any(s["z"] > 2 for s in same if s["other"] == "rms")
    if not rms_pairs:
        outcome = "inconclusive (no step pairs)"
    elif matches == len(rms_pairs) and ahead:
        outcome = "reproduced"
    else:
        outcome = "partly" if matches or ahead else "not reproduced"
    rule = ("against FreeDoM's rms rule: Polyak at N steps 'matches' the rms rule at the next larger count M if its "
            "judge accuracy is not lower by more than 2 binomial standard errors; reproduced = every (N, M) pair "
            "matches and Polyak is ahead (> 2 standard errors) at some equal step count, partly = only some of that, "
            "not reproduced = none (pairs against the fixed step are listed, not judged)")
    return {"verdict": outcome, "rule": rule, "pairs": pairs, "equal steps": same}


def verdict_fast(rows: list[dict]) -> dict:
    """The fast gradient's quality cost: per scale, fast − exact in judge accuracy (binomial z) and FD (in units
    of the seeds' spread)."""
    by = {(r["rule"], r["scale"], r["gradient"]): r for r in rows if r["method"] == "FreeDoM"}
    pairs = []
    for rule, scale in sorted({k[:2] for k in by}):
        if (rule, scale, "exact") not in by or (rule, scale, "fast") not in by:
            continue
        exact, fast = by[rule, scale, "exact"], by[rule, scale, "fast"]
        fd_e, fd_f = exact["metrics"]["FD"], fast["metrics"]["FD"]
        spread = math.sqrt(fd_e["std"] ** 2 + fd_f["std"] ** 2)            # 0 with one seed: FD not judged
        pairs.append({"rule": rule, "scale": scale, "exact accuracy": judge(exact)[0], "fast accuracy": judge(fast)[0],
                      "z": significant(*judge(fast), *judge(exact)), "exact FD": fd_e["mean"], "fast FD": fd_f["mean"],
                      "FD difference / seeds' spread": (fd_f["mean"] - fd_e["mean"]) / spread if spread else None,
                      "time exact": exact["time_ratio"], "time fast": fast["time_ratio"]})
    if not pairs:
        outcome = "inconclusive (no exact/fast pair)"
    elif all(abs(p["z"]) <= 2 and abs(p["FD difference / seeds' spread"] or 0) <= 2 for p in pairs):
        outcome = "no measurable quality cost"
    else:
        outcome = "a measurable difference"
    rule = ("per scale, fast vs exact: judge accuracy differing by more than 2 binomial standard errors or FD by more "
            "than 2× the seeds' combined standard deviation counts as measurable")
    return {"verdict": outcome, "rule": rule, "pairs": pairs}


def cell(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = ["# GuideKit loss guidance benchmark (MNIST)", "",
             f"{meta['date']}, {meta['machine']}, {meta['runtime_s']:.0f} s. {meta['setup']}", "",
             "Time is wall clock on a shared machine: other processes add noise"
             + (" (load average 1 / 5 / 15 min at the end: {:.1f} / {:.1f} / {:.1f}).".format(*meta["load_average"])
                if "load_average" in meta else "."), "",
             f"Scales: {meta['scales']}", "",
             *(["**Smoke run: tiny counts, not evidence.**", ""] if meta["smoke"] else []),
             "Mean ± std over seeds; ↑ higher is better, ↓ lower. judge = evaluation classifier's accuracy on the "
             "target digit; guide acc / guide CE = the guidance classifier's accuracy and cross-entropy on the final "
             "samples; time = seconds of the first seed's batch relative to an unguided batch of the same seed, "
             "steps and size drawn right after it.", ""]
    head = "| run | method | rule | scale | aug | steps | " + " | ".join(
        f"{k.replace('accuracy', 'acc').replace('judge acc', 'judge').replace('guide loss', 'guide CE')} "
        f"{'↑' if up else '↓'}" for k, up in METRICS.items()) + " | time |"
    for name, sec in results["sections"].items():
        lines += [f"## {sec['title']}", "", f"{sec['samples_per_seed']} samples × {len(sec['seeds'])} seeds "
                  f"({', '.join(map(str, sec['seeds']))}).", "", head, "|---" * (7 + len(METRICS)) + "|"]
        for r in sec["rows"]:
            cells = [r["label"], r["method"], r["rule"] or "–", f"{r['scale']:g}", str(r["copies"]), str(r["steps"])]
            cells += [cell(r["metrics"][k], 2 if k == "FD" else 3) for k in METRICS]
            cells.append(f"{r['time_ratio']:.2f}" if r["time_ratio"] else "–")
            lines.append("| " + " | ".join(cells) + " |")
        if name in results["verdicts"]:
            v = results["verdicts"][name]
            lines += ["", f"**Verdict: {v['verdict']}.** Rule: {v['rule']}.", ""]
            lines += [f"- {json.dumps({k: round(x, 3) if isinstance(x, float) else x for k, x in p.items()})}"
                      for p in v.get("points", []) + v.get("pairs", []) + v.get("equal steps", [])]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run: 8 samples, 2 steps, 2 configs")
    parser.add_argument("--probe", action="store_true", help="wide scale sweep on seed 100 (picks scales)")
    parser.add_argument("--seeds", nargs="+", type=int, help="sampling seeds (default 0 1 2; smoke 0)")
    parser.add_argument("--samples", type=int, help="samples per seed (default 300; smoke 8)")
    parser.add_argument("--render", action="store_true", help="only rebuild verdicts and tables from --out's JSON")
    parser.add_argument("--only", nargs="+", choices=("methods", "claim 1", "claim 2", "fast gradient"),
                        help="run only these sections, merged into --out's existing loss_guidance.json")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if args.render:
        results = json.loads((args.out / "loss_guidance.json").read_text())
        return write(results, claims(results["sections"]), args.out)
    torch.set_flush_denormal(True)
    plan = SMOKE if args.smoke else FULL
    seeds, n = tuple(args.seeds or plan["seeds"]), args.samples or plan["samples"]
    t0 = time.monotonic()
    with torch.inference_mode():
        bench = Bench()
        if args.only:
            earlier = json.loads((args.out / "loss_guidance.json").read_text())["sections"]
            bench.kept = {r["label"]: r for name in args.only if name in earlier for r in earlier[name]["rows"]}
        plan_sections = {"probe": probe_section(plan["steps"], n)} if args.probe else sections(plan, seeds, n)
        plan_sections = {k: v for k, v in plan_sections.items() if not args.only or k in args.only}
        done = {}
        for name, sec in plan_sections.items():
            print(f"{sec.title}:", flush=True)
            started = time.monotonic()
            done[name] = {"title": sec.title, "seeds": list(sec.seeds), "samples_per_seed": sec.samples,
                          "rows": bench.section(sec), "date": time.strftime("%Y-%m-%d"),
                          "runtime_s": time.monotonic() - started}
    if args.only:
        results = json.loads((args.out / "loss_guidance.json").read_text())
        results["sections"].update(done)
        return write(results, claims(results["sections"]), args.out)
    results = {"meta": {
        "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "probe": args.probe, "runtime_s": time.monotonic() - t0,
        "load_average": os.getloadavg(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "setup": (f"Unconditional MNIST model (section 4: the class-conditional one at CFG {FAST_CFG:g}), euler, "
                  f"normal schedule, cfg 1; GuideKit Loss Guidance with the "
                  f"classifier loss of {GUIDANCE_NET} toward digit i % 10 for image i, end_percent {END_PERCENT}, "
                  f"recurrence 1, LGD-MC 4 Monte-Carlo samples, UG without backward steps, augmentations "
                  f"{AUGMENTATIONS}. Judge: mnist-classifier-eval (FD / precision / recall in its feature space, "
                  "MNISTUncondSetting)."),
        "scales": ("probed on this model with --probe (100 samples, seed 100, 20 steps; loss_guidance_probe.md): "
                   "section 1 = the best-judge-accuracy scale and the next smaller probed one; claim 1 = scales whose "
                   "guidance losses overlap with and without augmentation; claim 2 = each rule's best 20-step scale. "
                   "Not tuned on the evaluation seeds: "
                   + ", ".join(f"{m} {r} {s}" for (m, r), s in METHOD_SCALES.items())
                   + f"; claim 1 {AUGMENT_SCALES}; claim 2 {RULE_SCALES}.")},
        "sections": done}
    if args.probe:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "loss_guidance_probe.md").write_text(markdown({**results, "verdicts": {}}))
        return 0
    grid: dict = {}
    for (run, _, _), (_, samples) in bench.done.items():
        if run.steps in (0, plan["steps"]):
            grid.setdefault(run.label, samples)                           # one row a run: its first measurement
    mnist_grid(list(grid.items()), args.out / "loss_guidance_mnist.png")
    return write(results, claims(done), args.out)


def claims(sections: dict) -> dict:
    verdicts = {"claim 1": verdict_augmentation(sections["claim 1"]["rows"]),
                "claim 2": verdict_steps(sections["claim 2"]["rows"])}
    if "fast gradient" in sections:
        verdicts["fast gradient"] = verdict_fast(sections["fast gradient"]["rows"])
    return verdicts


def write(results: dict, verdicts: dict, out: Path) -> int:
    """loss_guidance.json and .md in `out`, with the verdicts; prints the tables."""
    results = {**results, "verdicts": verdicts}
    out.mkdir(parents=True, exist_ok=True)
    (out / "loss_guidance.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / "loss_guidance.md").write_text(table)
    print(table)
    print(f"wrote {out}/loss_guidance.json, .md and _mnist.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
