"""Every GuideKit node, found by its class, and the tables the rest of the pack derives from the classes."""
from __future__ import annotations

import importlib
import pkgutil
import sys

from .base import GuideKitNode


def _discover() -> list[type[GuideKitNode]]:
    """Every GuideKitNode subclass defined in a module of this package, by module and definition order:
    defining the class registers the node (ComfyUI's runtime clones live elsewhere and are not listed)."""
    found = []
    for info in sorted(pkgutil.iter_modules(sys.modules[__package__].__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__package__}.{info.name}")
        found += [value for value in vars(module).values() if isinstance(value, type)
                  and issubclass(value, GuideKitNode) and value is not GuideKitNode
                  and value.__module__ == module.__name__]
    return found


NODES: list[type[GuideKitNode]] = _discover()


def by_id() -> dict[str, type[GuideKitNode]]:
    return {cls.node_id(): cls for cls in NODES}


def costs() -> dict[str, dict]:
    """node id → extra model passes per step (the frontend badge's table, GET /guidekit/costs)."""
    return {cls.node_id(): cls.COST for cls in NODES if cls.COST is not None}


def extra_passes(node_id: str, widgets: dict) -> int | str | None:
    """A node's extra passes per step with these widget values (None: not a sampling-time node)."""
    entry = by_id()[node_id].COST if node_id in by_id() else None
    if entry is None:
        return None
    for rule in entry.get("overrides", []):
        if widgets.get(rule["widget"]) == rule["value"]:
            return rule["extra_passes"]
    return entry["extra_passes"]


def compare_methods() -> dict[str, dict]:
    """Compare-grid methods: name → {"node": node id or None (plain CFG), "inputs": overrides, "cfg": …}."""
    methods = {"cfg": {"node": None, "inputs": {}, "cfg": None}}
    for cls in NODES:
        for name, spec in cls.COMPARE.items():
            methods[name] = {"node": cls.node_id(), "inputs": spec.get("inputs", {}), "cfg": spec.get("cfg")}
    return methods
