"""Tier 1: the runner's workflow loading and --set overrides, without a server."""
import json

import pytest

from guidekit.cli.run import RunError, apply_sets, load_workflow

PROMPT = {
    "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a"}, "_meta": {"title": "Positive"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "b"}, "_meta": {"title": "Negative"}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 0, "cfg": 5.0}},
}


def test_set_by_id_class_type_and_title_with_json_values():
    out = apply_sets(PROMPT, ["3.seed=7", "KSampler.cfg=4.5", "Positive.text=a cat", "2.text=[1, 2]"])
    assert out["3"]["inputs"] == {"seed": 7, "cfg": 4.5}
    assert out["1"]["inputs"]["text"] == "a cat" and out["2"]["inputs"]["text"] == [1, 2]
    assert PROMPT["3"]["inputs"]["seed"] == 0, "the original workflow must not change"


@pytest.mark.parametrize("item,message", [
    ("CLIPTextEncode.text=x", "2 nodes match"),
    ("Nope.text=x", "no node"),
    ("KSampler.seed", "NODE.INPUT=VALUE"),
    ("seed=3", "NODE.INPUT=VALUE"),
])
def test_bad_set_is_a_clear_usage_error(item, message):
    with pytest.raises(RunError, match=message) as err:
        apply_sets(PROMPT, [item])
    assert err.value.status == 2


def test_load_workflow_accepts_api_and_ui_and_rejects_others(tmp_path):
    api = tmp_path / "api.json"
    api.write_text(json.dumps(PROMPT))
    assert load_workflow(api) == PROMPT
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    assert load_workflow(ui) == {"nodes": [], "links": []}
    bad = tmp_path / "list.json"
    bad.write_text("[1, 2]")
    with pytest.raises(RunError, match="neither"):
        load_workflow(bad)
