"""Shared fixtures: the real ComfyUI host (in-process and as a server) and the thin models."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

if not os.environ.get("COMFYUI_PATH"):
    pytest.exit("COMFYUI_PATH is not set: run the tests with `python3 scripts/host.py test`", returncode=4)

DEFAULT_CHECKPOINT = "guidekit-thin-sd15.safetensors"


@pytest.fixture(scope="session")
def comfy():
    from guidekit.cli.inprocess import import_comfy
    return import_comfy()


@pytest.fixture(scope="session")
def thin(comfy):
    import thin_models
    return thin_models


@pytest.fixture(scope="module")
def built(thin):
    """arch → its thin model (std 0.1), built once per test module; skips families this ComfyUI lacks."""
    cache = {}

    def get(arch):
        if arch not in thin.SPECS:
            pytest.skip(f"no thin spec {arch}")
        if thin.missing(arch):
            pytest.skip(f"this ComfyUI has no {thin.missing(arch)}")
        if arch not in cache:
            cache[arch] = thin.build(arch, std=0.1)
        return cache[arch]
    return get


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, comfy) -> Path:
    """A models folder holding the thin SD1.5 checkpoint and the loss-guidance assets (built once per host cache)."""
    import thin_models
    root = Path(os.environ.get("GUIDEKIT_MODELS_DIR") or tmp_path_factory.mktemp("models"))
    ckpt = root / "checkpoints" / DEFAULT_CHECKPOINT
    if not ckpt.exists():
        thin_models.write_checkpoint(ckpt)
    thin_models.write_guidance_files(root)
    return root


@pytest.fixture(scope="session")
def server(models_dir, tmp_path_factory):
    """One real ComfyUI server (main.py --cpu on loopback) with the pack in custom_nodes, the test-only nodes
    (tests/host_nodes) and its own input folder."""
    from thin_workflows import TEST_NODES

    from guidekit.cli.run import ComfyServer
    srv = ComfyServer(Path(os.environ["COMFYUI_PATH"]), models_dir, custom_nodes=TEST_NODES,
                      input_dir=tmp_path_factory.mktemp("comfyui-input")).start()
    yield srv
    srv.stop()
    for trained in (models_dir / "guidekit_refiners").glob("guidekit_template_refiner_*.safetensors"):
        trained.unlink()                                  # written by the mnist_train_flow_refiner template


@pytest.fixture(scope="module", params=["host_frontend", "extra_frontend"])
def frontend_server(request, models_dir):
    """A ComfyUI server per frontend, for the browser tests: the frontend the host ships with, and the
    frontend package whose static folder $GUIDEKIT_EXTRA_FRONTEND names (scripts/host.py sets it)."""
    from guidekit.cli.run import ComfyServer
    root = None
    if request.param == "extra_frontend":
        if not os.environ.get("GUIDEKIT_EXTRA_FRONTEND"):
            pytest.skip("GUIDEKIT_EXTRA_FRONTEND is not set: no extra frontend to test (scripts/host.py sets it "
                        "once the newest comfyui-frontend-package is installed)")
        root = Path(os.environ["GUIDEKIT_EXTRA_FRONTEND"])
        if not (root / "index.html").is_file():
            pytest.fail(f"GUIDEKIT_EXTRA_FRONTEND={root} is not a frontend's static folder (no index.html)")
    srv = ComfyServer(Path(os.environ["COMFYUI_PATH"]), models_dir, front_end_root=root).start()
    yield srv
    srv.stop()
