"""Tier 3: the runner and compare spread over two real ComfyUI servers (round-robin on their queues, retry)."""
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "workflows" / "api" / "txt2img_default.json"        # thin SD1.5 checkpoint (random weights)


@pytest.fixture(scope="module")
def second(models_dir):
    """A second ComfyUI server beside the session's `server`."""
    from guidekit.cli.run import ComfyServer
    srv = ComfyServer(Path(os.environ["COMFYUI_PATH"]), models_dir).start()
    yield srv
    srv.stop()


def demo(steps: int = 2, seed: int = 0) -> dict:
    prompt = json.loads(DEMO.read_text())
    prompt["5"]["inputs"].update(steps=steps, seed=seed)
    return prompt


def history(srv) -> set[str]:
    with urllib.request.urlopen(srv.url + "/history", timeout=30) as r:
        return set(json.load(r))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_runner_spreads_runs_round_robin_over_two_servers(server, second, tmp_path):
    workflow = tmp_path / "demo.json"
    workflow.write_text(json.dumps(demo()))
    before = history(server), history(second)
    out = subprocess.run([sys.executable, "-m", "guidekit.cli.run", str(workflow), "--repeat", "4",
                          "--server", server.url, "--server", second.url + "/", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    finished = [line.split(" finished on ")[1].split(" in ")[0] for line in out.stdout.splitlines()
                if " finished on " in line]
    assert finished == [server.url, second.url, server.url, second.url], out.stdout
    assert len(history(server) - before[0]) == 2 and len(history(second) - before[1]) == 2   # each queue got two
    images = [sorted((tmp_path / "out" / f"demo-{r}").glob("*.png")) for r in range(4)]
    assert all(len(found) == 1 for found in images), images
    assert [str(found[0]) for found in images] == [line for line in out.stdout.splitlines() if line.endswith(".png")]
    assert not np.array_equal(pixels(images[0][0]), pixels(images[1][0])), "--repeat must offset the seed"
    again = server.run(demo(seed=1), tmp_path / "again")                  # run 1 was on the second server
    assert np.array_equal(pixels(again.images[0]), pixels(images[1][0])), "a server must not change the image"


def test_compare_spreads_methods_over_two_servers(server, second, tmp_path):
    from guidekit.cli.compare import compare
    record = compare([server, second], ["cfg", "pag", "sag"], tmp_path, steps=2, width=64, height=64)
    assert [r["method"] for r in record["methods"]] == ["cfg", "pag", "sag"]
    assert [r["server"] for r in record["methods"]] == [server.url, second.url, server.url]
    assert all(r["seconds_per_step"] > 0 for r in record["methods"])
    images = [pixels(tmp_path / r["image"]) for r in record["methods"]]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[0], images[2])
    assert (tmp_path / "compare.png").is_file()


def test_a_stopped_server_is_left_out_and_its_runs_go_to_the_other(server, second, tmp_path):
    from guidekit.cli.run import RunResult, free_port, run_prompts
    second.stop()                                                      # the last test of the module to use it
    logged = []
    results = run_prompts([server, second], [demo(1, seed) for seed in range(3)],
                          [tmp_path / str(seed) for seed in range(3)], log=logged.append)
    assert all(isinstance(r, RunResult) and r.server == server.url and r.images for r in results), results
    assert len(logged) == 1 and second.url in logged[0] and "did not answer" in logged[0], logged
    workflow = tmp_path / "demo.json"
    workflow.write_text(json.dumps(demo(1)))
    dead = f"http://127.0.0.1:{free_port()}"
    out = subprocess.run([sys.executable, "-m", "guidekit.cli.run", str(workflow), "--server", dead,
                          "--server", server.url, "--out", str(tmp_path / "cli")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"{dead} did not answer" in out.stderr and f"finished on {server.url}" in out.stdout
    assert len(list((tmp_path / "cli").glob("*.png"))) == 1              # one run: its images in --out itself
    out = subprocess.run([sys.executable, "-m", "guidekit.cli.run", str(workflow), "--server", dead],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 3 and "no server answered" in out.stderr
