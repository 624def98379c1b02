"""Tier 1: scaling out the flow refiner (postprocess/): DDP on 2 gloo processes = one process, resume across
world sizes, the IVF neighbour index's recall against exact search, the feature cache, the benchmark's smoke run.

DDP equality is checked in float64. The two runs differ only in how float sums are grouped (each rank's
gradient over its half of the batch, then the average): float64 rounding (u ≈ 1.1e-16) on per-sample
gradients of size O(1) gives gradient differences ~1e-16; AdamW's step lr·m/(√v + ε) amplifies a gradient
change by at most lr/ε = 2e-3/1e-8 = 2e5, so ~2e-11 per step and ~4e-10 after 20 steps at worst. The
tolerance 1e-8 holds that with margin (measured: ~1e-15), while training on other batches (another seed)
moves the weights by more than 1e3 times the tolerance (checked below).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from guidekit.postprocess import features, neighbours
from guidekit.postprocess.refiner import load_refiner
from guidekit.postprocess.train import TrainSettings, new_refiner, train_refiner

REPO = Path(__file__).resolve().parent.parent
TOL = 1e-8                       # float64, 20 steps: see the module docstring
SETTINGS = {"iterations": 20, "batch_size": 32, "lr": 2e-3, "checkpoint_every": 0}


def blobs(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.cat([torch.randn(n, 2, generator=g) * 0.05 + torch.tensor([1.0, 0.0]),
                      torch.randn(n, 2, generator=g) * 0.05 - torch.tensor([1.0, 0.0])])
    return torch.randn(n, 2, generator=g) * 0.6, real


def train64(iterations=20, checkpoint=None):
    """The float64 run every process makes (same data, seed and initial weights)."""
    generated, real = blobs()
    nbrs = neighbours.top_k(generated, real, 5)
    torch.manual_seed(0)
    refiner = new_refiner(real).double()
    return train_refiner(refiner, generated.double(), real.double(), nbrs,
                         TrainSettings(**(SETTINGS | {"iterations": iterations})), checkpoint)


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    """One DDP process (spawned): the same runs under a 2-process gloo group; rank-tagged results in `out`."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    out = Path(out)
    try:
        full = train64()                                                  # 20 steps at world size 2
        half = train64(10, out / "ddp10.ckpt")                            # 10 steps, checkpoint for a 1-process resume
        resumed = train64(20, out / "single10.ckpt")                      # the parent's 10 steps, resumed here
        torch.save({"full": full.refiner.state_dict(), "full_losses": full.losses,
                    "resumed": resumed.refiner.state_dict(), "half_steps": half.iterations},
                   out / f"rank{rank}.pt")
        try:
            generated, real = blobs()
            train_refiner(new_refiner(real), generated, real, neighbours.top_k(generated, real, 5),
                          TrainSettings(**(SETTINGS | {"batch_size": 33})))
        except ValueError as e:
            (out / f"error{rank}.txt").write_text(str(e))
    finally:
        torch.distributed.destroy_process_group()


def assert_close(a: dict, b: dict, tol: float = TOL) -> float:
    worst = 0.0
    assert a.keys() == b.keys()
    for key in a:
        worst = max(worst, (a[key].double() - b[key].double()).abs().max().item())
    assert worst <= tol, f"largest weight difference {worst:.3g} > {tol:g}"
    return worst


@pytest.mark.slow
def test_ddp_on_two_processes_equals_one_process_and_resumes_across_world_sizes(tmp_path):
    single = train64()
    train64(10, tmp_path / "single10.ckpt")
    torch.multiprocessing.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in ranks[0]["full"]:                                          # the ranks stay in lockstep, bit for bit
        assert torch.equal(ranks[0]["full"][key], ranks[1]["full"][key]), key
    want = single.refiner.state_dict()
    print(f"float64, 20 steps, 2 processes vs 1: largest weight difference {assert_close(ranks[0]['full'], want):.3g}")
    assert ranks[0]["full_losses"] == pytest.approx(single.losses, rel=1e-12)
    assert ranks[0]["half_steps"] == 10
    assert_close(ranks[0]["resumed"], want)                               # world size 1 → 2
    state = torch.load(tmp_path / "ddp10.ckpt", weights_only=True)
    assert state["step"] == 10 and state["world_size"] == 2 and state["batch_size"] == 32
    assert_close(train64(20, tmp_path / "ddp10.ckpt").refiner.state_dict(), want)   # world size 2 → 1
    generated, real = blobs()                                             # the tolerance can see other batches
    torch.manual_seed(0)
    other = train_refiner(new_refiner(real).double(), generated.double(), real.double(),
                          neighbours.top_k(generated, real, 5), TrainSettings(**(SETTINGS | {"seed": 1})))
    assert max((want[k] - other.refiner.state_dict()[k]).abs().max().item() for k in want) > 1e3 * TOL
    for rank in (0, 1):
        assert "global batch (33) must be divisible by the number of processes (2)" in \
            (tmp_path / f"error{rank}.txt").read_text()


@pytest.mark.slow
def test_command_line_under_torchrun_matches_one_process(tmp_path):
    """torchrun --standalone --nproc_per_node 2 -m guidekit.cli.train_refiner (gloo) = the command in one process."""
    from guidekit.cli import train_refiner as cli
    generated, real = blobs(64)
    for name, x in (("gen", generated), ("real", real)):
        save_file({"samples": x}, str(tmp_path / f"{name}.safetensors"))
    common = ["--generated", str(tmp_path / "gen.safetensors"), "--real", str(tmp_path / "real.safetensors"),
              "--k", "4", "--iterations", "10", "--batch-size", "16", "--lr", "1e-3", "--seed", "3", "--quiet"]
    assert cli.main(common + ["--out", str(tmp_path / "one.safetensors")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "guidekit.cli.train_refiner",
                          *common, "--out", str(tmp_path / "two.safetensors")],
                         capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    one, two = load_refiner(tmp_path / "one.safetensors"), load_refiner(tmp_path / "two.safetensors")
    assert two.metadata["guidekit.processes"] == "2" and one.metadata["guidekit.processes"] == "1"
    assert json.loads(two.metadata["guidekit.neighbour_index"])["index"] == "flat"
    # float32 (u ≈ 6e-8): the same steps up to rounding of the regrouped sums; the float64 test above is the tight one
    worst = assert_close(one.refiner.state_dict(), two.refiner.state_dict(), tol=1e-5)
    print(f"float32 CLI, 10 steps: largest weight difference {worst:.3g}")


def mixture(n: int, d: int, components: int, seed: int, centres=None):
    """A Gaussian mixture: clustered like encoder features, with per-cluster spreads."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = np.random.default_rng(1234).standard_normal((components, d)).astype(np.float32)
    label = rng.integers(components, size=n)
    spread = 0.25 + 0.5 * np.random.default_rng(4321).random(components).astype(np.float32)
    return torch.from_numpy(centres[label] + rng.standard_normal((n, d)).astype(np.float32) * spread[label, None])


def test_ivf_index_reaches_the_recall_target_against_exact_search():
    database, queries = mixture(40_000, 32, 64, 0), mixture(2_000, 32, 64, 1)
    exact = neighbours.search(queries, database, 10, index="flat")
    assert exact.index == "flat" and torch.equal(exact.indices, neighbours.top_k(queries, database, 10))
    ivf = neighbours.search(queries, database, 10, index="ivf")
    assert ivf.index == "ivf" and ivf.nlist == neighbours.ivf_nlist(40_000) == 200
    assert 1 <= ivf.nprobe < ivf.nlist                                  # it probes a fraction of the cells
    measured = neighbours.recall_at_k(ivf.indices.numpy(), exact.indices.numpy())
    assert measured >= 0.95 and ivf.recall >= 0.95, (measured, ivf.recall, ivf.nprobe)
    assert abs(measured - ivf.recall) < 0.03                            # the calibration sample predicts it
    higher = neighbours.search(queries, database, 10, index="ivf", target_recall=0.99)
    assert higher.nprobe > ivf.nprobe and higher.recall >= 0.99


def test_auto_index_is_exact_below_the_threshold_and_ivf_above(monkeypatch):
    database, queries = mixture(5_000, 16, 16, 2), mixture(300, 16, 16, 3)
    assert neighbours.search(queries, database, 5).index == "flat"
    monkeypatch.setattr(neighbours, "IVF_FROM", 4_000)
    found = neighbours.search(queries, database, 5)
    assert found.index == "ivf" and found.recall >= 0.95
    with pytest.raises(ValueError, match="index must be one of"):
        neighbours.search(queries, database, 5, index="hnsw")


def test_ivf_never_returns_missing_neighbours():
    """A query whose probed cell holds fewer than k rows gets exact neighbours, never FAISS's -1."""
    database, queries = mixture(2_000, 8, 8, 4), mixture(200, 8, 8, 5)
    found = neighbours.search(queries, database, 40, index="ivf", nlist=200, nprobe=1)
    assert found.nprobe == 1 and (found.indices >= 0).all() and (found.indices < 2_000).all()
    exact = neighbours.top_k(queries, database, 40)
    assert neighbours.recall_at_k(found.indices.numpy(), exact.numpy()) > 0.5


@pytest.mark.skipif(not hasattr(__import__("faiss"), "get_num_gpus") or __import__("faiss").get_num_gpus() < 2,
                    reason="needs a FAISS GPU build with 2+ GPUs (sharded index)")
def test_sharded_gpu_search_equals_the_cpu_search():
    database, queries = mixture(20_000, 32, 32, 6), mixture(500, 32, 32, 7)
    gpu = neighbours.search(queries, database, 10, index="flat")
    assert gpu.gpus >= 2
    assert neighbours.recall_at_k(gpu.indices.numpy(),
                                  neighbours.search(queries, database, 10, index="flat", use_gpu=False)
                                  .indices.numpy()) > 0.999


class MeanPool(torch.nn.Module):
    """A stand-in vision tower: the pooled feature is the image's mean colour."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x.mean(dim=(2, 3)) * self.scale


def test_features_are_computed_in_batches_and_cached_by_their_inputs(tmp_path):
    images = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    seen, calls = [], []

    def compute(x=images):
        calls.append(1)
        return features.open_clip_features(MeanPool(), x, (8, 8), (0.5,) * 3, (0.5,) * 3, "pooled", batch=4,
                                           progress=seen.append)
    key = features.cache_key("open_clip", "weights-sha", "pooled", (8, 8), images)
    first, hit = features.cached(tmp_path, key, compute)
    assert not hit and seen == [4, 4, 2] and first.shape == (10, 3)
    again, hit = features.cached(tmp_path, key, compute)
    assert hit and len(calls) == 1 and torch.equal(first, again)
    assert features.cache_key("open_clip", "weights-sha", "pooled", (8, 8), images + 1e-3) != key
    assert features.cache_key("open_clip", "other-weights", "pooled", (8, 8), images) != key
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.npy"]


def test_neighbour_search_benchmark_quick_run():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "neighbour_search.py"), "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "quick run: results not written" in out.stdout
    assert "ivf" in out.stdout and "flat" in out.stdout


# ------------------------------------------------------------------------------------------------------
# Several servers: round-robin and retry against stub servers (two real servers: tests/test_e2e_multi_server.py)

class StubServer:
    """An HTTP server on loopback that answers like a ComfyUI that is broken (every request HTTP 503) or that
    rejects every workflow (the websocket opens, POST /prompt answers 400 with ComfyUI's error body)."""

    def __init__(self, mode: str):
        import asyncio
        import threading

        from aiohttp import web
        self.mode, self.requests = mode, []

        @web.middleware
        async def record(request, handler):
            self.requests.append(request.path)
            if self.mode == "503":
                return web.Response(status=503, text="unavailable")
            return await handler(request)

        async def ws(request):
            sock = web.WebSocketResponse()
            await sock.prepare(request)
            async for _ in sock:
                pass
            return sock

        async def prompt(request):
            return web.json_response({"error": {"message": "Prompt outputs failed validation", "details": ""},
                                      "node_errors": {"5": {"class_type": "KSampler",
                                                            "errors": [{"message": "Value too big"}]}}}, status=400)

        app = web.Application(middlewares=[record])
        app.add_routes([web.get("/ws", ws), web.post("/prompt", prompt)])
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self):
        import asyncio
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def stubs():
    made = []
    yield lambda mode: made.append(StubServer(mode)) or made[-1]
    for stub in made:
        stub.close()


def dead_address() -> str:
    from guidekit.cli.run import free_port
    return f"http://127.0.0.1:{free_port()}"                          # nothing listens there


def test_a_server_that_does_not_answer_is_left_out_and_a_workflow_error_is_not_retried(stubs):
    from guidekit.cli.run import RunError, ServerUnavailable, remote_server, run_prompts
    rejecting, broken, dead = stubs("400"), stubs("503"), dead_address()
    logged = []
    results = run_prompts([remote_server(rejecting.url), remote_server(broken.url), remote_server(dead)],
                          [{"1": {"class_type": "X", "inputs": {}}}] * 3, [None] * 3, log=logged.append)
    # prompt 0 → the rejecting server: a workflow error, reported and not retried; prompt 1 → the broken server
    # (503): left out, retried on the dead one (refused), then on the rejecting one; prompt 2 → the dead one: left
    # out once a prompt found it down, then on to the rejecting one
    assert all(isinstance(r, RunError) and not isinstance(r, ServerUnavailable) for r in results), results
    assert all("Prompt outputs failed validation" in str(r) and "node 5 (KSampler)" in str(r) for r in results)
    assert rejecting.requests.count("/prompt") == 3
    assert broken.requests == ["/ws"]                                   # asked once, then left out
    assert any(broken.url in m and "HTTP 503" in m for m in logged) and any(dead in m for m in logged)
    assert all(broken.url in m or dead in m for m in logged) and len(logged) <= 3, logged
    results = run_prompts([remote_server(broken.url), remote_server(dead_address())], [{}], [None])
    assert isinstance(results[0], ServerUnavailable) and results[0].status == 3
    assert "no server answered" in str(results[0])


def test_runner_names_runs_offsets_seeds_and_checks_server_addresses():
    from guidekit.cli.run import RunError, jobs, remote_server, with_seed_offset
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "cfg": 4.0}},
              "9": {"class_type": "SamplerCustom", "inputs": {"noise_seed": 1, "add_noise": True}}}
    shifted = with_seed_offset(prompt, 2)
    assert shifted["3"]["inputs"] == {"seed": 7, "cfg": 4.0} and shifted["9"]["inputs"]["noise_seed"] == 3
    assert prompt["3"]["inputs"]["seed"] == 5, "the original workflow must not change"
    runs = jobs([Path("a/x.json"), Path("b/x.json"), Path("y.json")], [prompt] * 3, 2)
    assert [name for name, _ in runs] == ["x-0-0", "x-0-1", "x-1-0", "x-1-1", "y-0", "y-1"]
    assert [p["3"]["inputs"]["seed"] for _, p in runs] == [5, 6] * 3
    assert [name for name, _ in jobs([Path("y.json")], [prompt], 1)] == ["y"]
    assert remote_server("http://127.0.0.1:8188/").url == "http://127.0.0.1:8188"
    for bad in ("127.0.0.1:8188", "ftp://host", "http://"):
        with pytest.raises(RunError, match="expected a ComfyUI address") as err:
            remote_server(bad)
        assert err.value.status == 2
