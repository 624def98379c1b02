"""Tier 3: the compare entry point (python -m guidekit.cli.compare) through a real ComfyUI server."""
import json

import pytest
from PIL import Image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_compare_writes_a_labelled_grid_with_step_times(server, tmp_path):
    from guidekit.cli.compare import compare
    record = compare(server, ["cfg", "pag", "sag"], tmp_path, steps=3, width=64, height=64)
    assert [r["method"] for r in record["methods"]] == ["cfg", "pag", "sag"]
    assert [r["node"] for r in record["methods"]] == [None, "GuideKitPAG", "GuideKitSAG"]
    assert all(r["seconds_per_step"] > 0 for r in record["methods"])
    assert record["methods"][0]["vs_cfg"] == pytest.approx(1.0)
    cfg_step, pag_step = (r["seconds_per_step"] for r in record["methods"][:2])
    assert cfg_step > 0.2 * pag_step, "the CFG run must sample, not come from ComfyUI's cache"
    with Image.open(tmp_path / "compare.png") as grid:
        assert grid.size == (3 * 256, 256 + 34)
    images = [Image.open(tmp_path / r["image"]).convert("RGB").tobytes() for r in record["methods"]]
    assert images[0] != images[1] and images[0] != images[2], "each method must change the image"
    assert json.loads((tmp_path / "compare.json").read_text())["methods"][1]["node"] == "GuideKitPAG"


def test_compare_method_defaults_come_from_the_server(server):
    from guidekit.cli.compare import base_prompt, method_prompt, server_methods
    info = server.object_info()
    prompt = method_prompt(base_prompt("x.safetensors", "p", "", 0, 2, 4.0, 64, 64), "pag-only", info, 4.0,
                           server_methods(server))
    assert prompt["100"]["class_type"] == "GuideKitPAG" and prompt["5"]["inputs"]["model"] == ["100", 0]
    assert prompt["5"]["inputs"]["cfg"] == 1.0
    assert prompt["100"]["inputs"]["scale"] == info["GuideKitPAG"]["input"]["required"]["scale"][1]["default"]


def test_compare_cli_rejects_unknown_methods(capsys):
    from guidekit.cli.compare import main
    assert main(["--methods", "cfg,nope"]) == 2
    assert "unknown method(s) ['nope']" in capsys.readouterr().err
