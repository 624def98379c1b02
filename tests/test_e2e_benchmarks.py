"""Tier 3: the benchmark scripts' smoke versions run, so they cannot rot between full runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent


def test_attention_overhead_quick_run_prints_every_method():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "attention_overhead.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout.split("× CFG")[1]
    for method in ("cfg", "core PAG", "core SAG", "PAG separate", "PAG batched", "SEG", "SAG",
                   "PAG in place of uncond", "PAG 20-80 %"):
        assert f" {method} " in table, method
    assert "flux" in table and "quick run: results not written" in out.stdout


def test_dual_model_overhead_quick_run_prints_every_method():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dual_model_overhead.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout.split("× CFG")[1]
    for method in ("cfg", "AG half-width weak, cfg 1", "AG half-width weak + CFG 4", "AG full-width weak, cfg 1",
                   "AG degraded self, cfg 1", "ICG gaussian, cfg 4", "TSG, cfg 4"):
        assert f" {method} " in table, method
    assert "flux" in table and "quick run: results not written" in out.stdout


def test_loss_guidance_overhead_quick_run_prints_every_method():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "loss_guidance_overhead.py"), "--quick"],
                         capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout.split("step (ms)")[-1]
    for method in ("cfg", "FreeDoM + Polyak, TAESD", "MPGD + Polyak, full VAE", "LGD-MC n 4, TAESD",
                   "FreeDoM + Polyak + 4 augmented copies, TAESD", "recurrence 2"):
        assert method in table, method
    assert "quick run: results not written" in out.stdout


def run_script(*args, timeout=900):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=os.environ.copy(), cwd=REPO)


def test_loss_guidance_quality_smoke_writes_rows_and_verdicts(tmp_path):
    out = run_script(REPO / "benchmarks" / "loss_guidance_quality.py", "--smoke", "--out", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "loss_guidance.json").read_text())
    assert results["meta"]["smoke"] is True
    rows = [r for section in results["sections"].values() for r in section["rows"]]
    assert rows and all(0.0 <= r["metrics"]["judge accuracy"]["mean"] <= 1.0 for r in rows)
    assert set(results["verdicts"]) == {"claim 1", "claim 2", "fast gradient"}
    assert {r["gradient"] for r in results["sections"]["fast gradient"]["rows"]} == {"exact", "fast"}
    assert (tmp_path / "loss_guidance.md").is_file()


def test_flow_refiner_quality_smoke_scores_before_and_after(tmp_path):
    out = run_script(REPO / "benchmarks" / "flow_refiner_quality.py", "--smoke", "--out", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "flow_refiner.json").read_text())
    assert results["meta"]["smoke"] is True
    toy, mnist = results["datasets"]["toy"]["runs"], results["datasets"]["mnist"]["runs"]
    assert {(r["guidance"], r["refiner"]) for r in toy} == {("CFG", "per scale"), ("CFG", "one-for-all"),
                                                            ("CG", "per scale")}
    assert {r["refiner"] for r in mnist} == {"per scale", "one-for-all"}
    assert all(0.0 <= r["after"]["accuracy"]["mean"] <= 1.0 and r["refine_vs_sampling"] > 0 for r in mnist)
    assert (tmp_path / "flow_refiner.md").is_file() and (tmp_path / "flow_refiner_mnist.png").is_file()


def test_quality_smoke_scores_every_registered_method(tmp_path):
    out = run_script(REPO / "benchmarks" / "quality.py", "--smoke", "--out", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "quality.json").read_text())
    assert results["meta"]["smoke"] is True
    from evidence.methods import REGISTRY
    for dataset in ("toy", "toy-ref", "mnist", "mnist-uncond", "mnist-uncond-28"):
        ds = results["datasets"][dataset]
        unconditional = dataset.startswith("mnist-uncond")
        expected = {name for name, m in REGISTRY.items() if dataset in m.scales}
        assert {r["method"] for r in ds["runs"]} == expected
        assert ({"unguided"} if unconditional else {"unguided", "cfg"}) <= expected
        for run in ds["runs"]:
            for metric, summary in run["metrics"].items():
                assert len(summary["values"]) == 2 and summary["mean"] == summary["mean"], \
                    (dataset, run["label"], metric)
            assert run["time_ratio"] > 0
        assert ds["time_base"] == ("unguided" if unconditional else "cfg")
        assert Image.open(tmp_path / f"quality_{dataset}.png").size[0] > 100
    for dataset in ("toy", "toy-ref"):          # the toy example's four metrics beside ours (issue 22)
        assert {"clamped log p", "median log p", "inside", "sliced W1", "log-likelihood"} <= set(
            results["datasets"][dataset]["higher_is_better"])
    table = (tmp_path / "quality.md").read_text()
    assert "| *real data* |" in table and "| CFG 1.5 |" in table and "| PAG 1 |" in table
    assert "| AG w=1.5 |" in table and "| SIMS w=1.5 |" in table and "| TSG s=8 w=1.5 |" in table


def test_training_scripts_run_end_to_end(tmp_path):
    """Every model's training script, a few iterations each, writes weights the loaders accept."""
    for model in ("main", "uncond", "eval-classifier", "guidance-classifier"):
        out = run_script(REPO / "benchmarks" / "train_mnist.py", model, "--iters", 2, "--quiet",
                         "--out", tmp_path / f"{model}.safetensors")
        assert out.returncode == 0, out.stderr[-3000:]
    for sims in ("sims", "sims-28"):           # the 16×16 model's SIMS negative and the native model's
        out = run_script(REPO / "benchmarks" / "train_mnist.py", sims, "--iters", 2, "--synthetic", 8, "--quiet",
                         "--out", tmp_path / f"{sims}.safetensors")
        assert out.returncode == 0, out.stderr[-3000:]
    out = run_script(REPO / "benchmarks" / "train_toy.py", "--iters", 3, "--quiet", "--out-dir", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    check = ("import sys, pathlib;"
             "from evidence import comfy_models as c; p = pathlib.Path(sys.argv[1]);"
             "c.mnist_patcher(p / 'main.safetensors'); c.mnist_patcher(p / 'sims.safetensors'); "
             "c.mnist_patcher(p / 'sims-28.safetensors'); "
             "c.toy_patcher(p / 'toy-main.safetensors'); c.toy_patcher(p / 'toy-a-main.safetensors');"
             "c.toy_patcher(p / 'toy-ab-uncond.safetensors');"
             "c.toy_patcher(p / 'toy-weak.safetensors'); print('loaded')")
    out = subprocess.run([sys.executable, "-c", check, str(tmp_path)], capture_output=True, text=True,
                         env=os.environ.copy(), cwd=REPO, timeout=300)
    assert out.returncode == 0 and "loaded" in out.stdout, out.stderr[-3000:]
    names = {p.name for p in tmp_path.glob("*.safetensors")}
    assert {"toy-main.safetensors", "toy-weak.safetensors", "toy-uncond.safetensors", "toy-a-main.safetensors",
            "toy-a-weak.safetensors", "toy-ab-uncond.safetensors",
            "toy-classifier-linear.safetensors", "toy-classifier-mlp.safetensors"} <= names


def test_gpu_benchmark_smoke_runs_every_row_on_the_cpu_path(tmp_path):
    """benchmarks/gpu.py --smoke: the GPU benchmark's code on thin models on the CPU (nothing written)."""
    out = run_script(REPO / "benchmarks" / "gpu.py", "--smoke", "--models", "sd15", "--out", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ("cfg", "core PAG", "PAG batched", "PAG separate", "SEG batched", "SAG", "TPG batched", "STG batched",
                "NAG (cfg 1)", "FDG", "AG half-width weak (cfg 1)", "FreeDoM + Polyak exact, TAESD"):
        assert f"sd15  {row} " in out.stdout, (row, out.stdout[-2000:])
    assert "smoke run: results not written" in out.stdout and not (tmp_path / "gpu.json").exists()


def test_gpu_benchmark_without_a_gpu_says_so_and_succeeds(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the benchmark would run")
    out = run_script(REPO / "benchmarks" / "gpu.py", "--out", tmp_path)
    assert out.returncode == 0 and "no CUDA GPU on this machine" in out.stdout
    assert not (tmp_path / "gpu.json").exists()
