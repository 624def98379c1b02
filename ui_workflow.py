"""Convert a UI-format workflow (what ComfyUI's editor saves) to the API format `/prompt` takes.

The UI format stores widget values by position; the node definitions from the server's /object_info
give their names. Links through Reroute nodes are followed; Note nodes are dropped; muted nodes are
left out. Bypassed nodes and subgraphs are refused with a message, because their meaning depends on
frontend logic that is not reproduced here.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
SEED_CONTROLS = {"fixed", "increment", "decrement", "randomize"}
MUTED, BYPASSED = 2, 4


class WorkflowFormatError(ValueError):
    pass


def is_ui_format(workflow: object) -> bool:
    return isinstance(workflow, dict) and "nodes" in workflow and "links" in workflow


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control(name: str, spec: list) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(opts.get("control_after_generate")) or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """API-format prompt for `workflow`, using the server's node definitions `object_info`."""
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowFormatError("workflows with subgraphs are not supported headless; export it with "
                                  "'Export (API)' from ComfyUI")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}     # [id, from_node, from_slot, to_node, to_slot, type]

    def source(link_id: int) -> list | None:
        """The (node id, output slot) feeding a link, following Reroute chains; None for a PrimitiveNode."""
        _, from_node, from_slot, *_ = links[link_id]
        node = nodes[from_node]
        if node["type"] == "Reroute":
            upstream = node["inputs"][0].get("link")
            return source(upstream) if upstream is not None else None
        if node["type"] == "PrimitiveNode":
            return None
        return [str(from_node), from_slot]

    prompt = {}
    for node in workflow["nodes"]:
        kind, nid = node["type"], node["id"]
        if kind in FRONTEND_ONLY or node.get("mode", 0) == MUTED:
            continue
        if node.get("mode", 0) == BYPASSED:
            raise WorkflowFormatError(f"node {nid} ({kind}) is bypassed; enable or delete it to run headless")
        info = object_info.get(kind)
        if info is None:
            raise WorkflowFormatError(f"node {nid} uses {kind!r}, which this ComfyUI does not have installed")
        if isinstance(node.get("widgets_values"), dict):
            raise WorkflowFormatError(f"node {nid} ({kind}) stores named widget values; export it with "
                                      "'Export (API)' from ComfyUI")
        values = list(node.get("widgets_values") or [])
        linked = {}
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                src = source(inp["link"])
                if src is not None:
                    linked[inp["name"]] = src
        inputs = {}
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name, spec in declared.items():
            if _is_widget(spec) and values:
                inputs[name] = values.pop(0)
                if _has_control(name, spec) and values and values[0] in SEED_CONTROLS:
                    values.pop(0)
            if name in linked:
                inputs[name] = linked[name]
        prompt[str(nid)] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title") or kind}}
    return prompt
