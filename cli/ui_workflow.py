"""Convert a UI-format workflow (what ComfyUI's editor saves) to the API format `/prompt` takes.

The UI format stores widget values by position; the node definitions from the server's /object_info
give their names. Links through Reroute nodes are followed; Note nodes are dropped; muted nodes are
left out. Bypassed nodes and subgraphs are refused with a message, because their meaning depends on
frontend logic that is not reproduced here.
"""
from __future__ import annotations

import uuid

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


def _depths(prompt: dict) -> dict[str, int]:
    """Column of each node: the longest chain of links from a node without linked inputs."""
    memo: dict[str, int] = {}

    def depth(nid: str, seen: frozenset = frozenset()) -> int:
        if nid not in memo:
            sources = [str(v[0]) for v in prompt[nid]["inputs"].values()
                       if isinstance(v, list) and len(v) == 2 and str(v[0]) in prompt and str(v[0]) not in seen]
            memo[nid] = 1 + max((depth(s, seen | {nid}) for s in sources), default=-1)
        return memo[nid]
    return {nid: depth(nid) for nid in prompt}


def _height(n_slots: int, n_widgets: int, multiline: int) -> int:
    return 46 + 22 * n_slots + 24 * n_widgets + 110 * multiline


def api_to_ui(prompt: dict, object_info: dict) -> dict:
    """A UI-format workflow (a template the editor opens) for an API-format prompt.

    Every widget value must be in the prompt (ui_to_api of the result gives the prompt back); nodes are
    laid out left to right by link depth, stacked in each column. Seed-like inputs get the 'fixed' control
    so templates reproduce.
    """
    ids = sorted(prompt, key=int)
    depths = _depths(prompt)
    column_y: dict[int, int] = {}
    links, out_links, nodes = [], {}, []
    for order, nid in enumerate(ids):
        node = prompt[nid]
        info = object_info.get(node["class_type"])
        if info is None:
            raise WorkflowFormatError(f"node {nid} uses {node['class_type']!r}, which this ComfyUI does not have")
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        inputs, values, filled, multiline = [], [], 0, 0   # filled: trailing defaults for absent optionals
        for name, spec in declared.items():
            value = node["inputs"].get(name)
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt:
                link_id = len(links) + 1
                kind = spec[0] if isinstance(spec[0], str) else "COMBO"
                links.append([link_id, int(value[0]), value[1], int(nid), len(inputs), kind])
                out_links.setdefault((str(value[0]), value[1]), []).append(link_id)
                inputs.append({"name": name, "type": kind, "link": link_id})
            elif _is_widget(spec):
                absent = name not in node["inputs"]
                if absent and name not in info["input"].get("optional", {}):
                    raise WorkflowFormatError(f"node {nid} ({node['class_type']}) has no value for widget {name!r}")
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                multiline += bool(options.get("multiline"))
                values.append(options.get("default") if absent else value)
                filled = filled + 1 if absent else 0
                if _has_control(name, spec):
                    values.append("fixed")
                    filled = filled + 1 if absent else 0
        values = values[:len(values) - filled]
        outputs = list(zip(info.get("output_name", info["output"]), info["output"]))
        height = _height(max(len(inputs), len(outputs)), len(values), multiline)
        column = depths[nid]
        y = column_y.get(column, 60)
        column_y[column] = y + height + 60
        nodes.append({"id": int(nid), "type": node["class_type"], "pos": [40 + 420 * column, y],
                      "size": [360, height], "flags": {}, "order": order, "mode": 0,
                      "inputs": inputs, "properties": {"Node name for S&R": node["class_type"]},
                      "widgets_values": values, "title": node.get("_meta", {}).get("title", node["class_type"]),
                      "_outputs": outputs})
    for node in nodes:
        node["outputs"] = [{"name": name, "type": kind, "links": out_links.get((str(node["id"]), slot), []),
                            "slot_index": slot} for slot, (name, kind) in enumerate(node.pop("_outputs"))]
    signature = ",".join(f"{nid}:{prompt[nid]['class_type']}" for nid in ids)
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "guidekit:" + signature)), "revision": 0,
            "last_node_id": max(map(int, ids)),
            "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}
