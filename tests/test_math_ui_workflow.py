"""Tier 1: UI-format to API-format conversion on hand-made node definitions (no ComfyUI)."""
import pytest

from guidekit.cli.ui_workflow import WorkflowFormatError, is_ui_format, ui_to_api

OBJECT_INFO = {
    "Loader": {"input": {"required": {"name": [["a.safetensors", "b.safetensors"], {}]}}},
    "Sampler": {"input": {"required": {
        "model": ["MODEL", {}], "seed": ["INT", {"control_after_generate": True}], "steps": ["INT", {}],
        "cfg": ["FLOAT", {}]}, "optional": {"note": ["STRING", {}]}}},
}


def ui(nodes, links):
    return {"nodes": nodes, "links": links, "version": 0.4}


def test_widgets_by_position_links_through_reroutes_and_seed_control_skipped():
    wf = ui([
        {"id": 1, "type": "Loader", "widgets_values": ["b.safetensors"], "outputs": [{"links": [1]}]},
        {"id": 9, "type": "Reroute", "inputs": [{"name": "", "link": 1}], "outputs": [{"links": [2]}]},
        {"id": 2, "type": "Sampler", "title": "My sampler", "inputs": [{"name": "model", "link": 2}],
         "widgets_values": [42, "randomize", 20, 4.5, "hello"]},
        {"id": 3, "type": "Note", "widgets_values": ["text"]},
        {"id": 4, "type": "Loader", "mode": 2, "widgets_values": ["a.safetensors"]},
    ], [[1, 1, 0, 9, 0, "*"], [2, 9, 0, 2, 0, "MODEL"]])
    assert is_ui_format(wf)
    assert ui_to_api(wf, OBJECT_INFO) == {
        "1": {"class_type": "Loader", "inputs": {"name": "b.safetensors"}, "_meta": {"title": "Loader"}},
        "2": {"class_type": "Sampler", "inputs": {"model": ["1", 0], "seed": 42, "steps": 20, "cfg": 4.5,
                                                  "note": "hello"}, "_meta": {"title": "My sampler"}},
    }


def test_bypassed_and_unknown_nodes_are_refused_by_name():
    with pytest.raises(WorkflowFormatError, match=r"node 5 \(Loader\) is bypassed"):
        ui_to_api(ui([{"id": 5, "type": "Loader", "mode": 4, "widgets_values": ["a"]}], []), OBJECT_INFO)
    with pytest.raises(WorkflowFormatError, match="'Missing'.*not have installed"):
        ui_to_api(ui([{"id": 6, "type": "Missing"}], []), OBJECT_INFO)
    assert not is_ui_format({"1": {"class_type": "Loader", "inputs": {}}})
