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
    from comfy_host import import_comfy
    return import_comfy()


@pytest.fixture(scope="session")
def thin(comfy):
    import thin_models
    return thin_models


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
def server(models_dir):
    """One real ComfyUI server (main.py --cpu on loopback) with the pack in custom_nodes."""
    from guidekit.run import ComfyServer
    srv = ComfyServer(Path(os.environ["COMFYUI_PATH"]), models_dir).start()
    yield srv
    srv.stop()
    for trained in (models_dir / "guidekit_refiners").glob("guidekit_template_refiner_*.safetensors"):
        trained.unlink()                                  # written by the mnist_train_flow_refiner template
