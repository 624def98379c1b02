"""GuideKitNode, the base of every GuideKit node and the single source of what the pack knows about one.

The node class says everything once: its schema (inputs, defaults, display name, tooltips: define_schema),
its cost per sampling step (COST, read by the frontend badge), and the methods it adds to comparison grids
(COMPARE). Compare, the benchmarks, the routes, the generated help tables and the tests read these from the
registered classes (nodes/catalog.py) and call a node by keyword with its defaults (`run`). Every execute
first checks its inputs against the schema (nodes/validation.py).
"""
from __future__ import annotations

import functools
import inspect

from comfy_api.latest import io

from .validation import check_inputs

WIDGETS = (io.Float.Input, io.Int.Input, io.String.Input, io.Boolean.Input, io.Combo.Input)


class GuideKitNode(io.ComfyNode):
    COST: dict | None = None
    """Extra model passes per sampling step inside the node's range: {"extra_passes": n or "gradient", "what": …,
    optional "times": widget that multiplies it, "overrides": [{"widget", "value", "extra_passes", "what"}]}."""
    COMPARE: dict[str, dict] = {}
    """Compare-grid methods this node provides: name → {"inputs": {…overrides of its defaults}, "cfg": None or a
    sampler cfg that replaces the grid's}."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        execute = cls.__dict__.get("execute")
        # ComfyUI runs a locked subclass ("clone") of each node carrying the same execute: wrap only ours, once.
        if isinstance(execute, classmethod) and not getattr(execute.__func__, "checks_inputs", False):
            cls.execute = classmethod(_checked(execute.__func__))

    @classmethod
    def node_id(cls) -> str:
        return cls.define_schema().node_id

    @classmethod
    def title(cls) -> str:
        """The display name: how the node is shown and how its errors name it."""
        return cls.define_schema().display_name

    @classmethod
    def defaults(cls) -> dict:
        """Every widget input's default, as a freshly added node shows it (a combo without one: its first option)."""
        out = {}
        for spec in cls.define_schema().inputs:
            if isinstance(spec, WIDGETS):
                default = spec.default
                if default is None and isinstance(spec, io.Combo.Input) and spec.options:
                    default = spec.options[0]
                out[spec.id] = default
        return out

    @classmethod
    def run(cls, **inputs) -> tuple:
        """The node's outputs for these inputs, every widget left out at its default (how code calls a node)."""
        return cls.execute(**{**cls.defaults(), **inputs}).result


def _checked(execute):
    signature = inspect.signature(execute)

    @functools.wraps(execute)
    def run(cls, *args, **kwargs):
        bound = signature.bind(cls, *args, **kwargs)
        check_inputs(cls.define_schema(), bound.arguments)
        return execute(cls, *args, **kwargs)
    run.checks_inputs = True
    return run
