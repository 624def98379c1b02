"""Inputs checked against the node's own schema before it runs: every GuideKit node, whatever the host checks.

ComfyUI does not check everything a schema declares (0.3.75 runs V3 nodes with unknown combo values, and
no version refuses NaN, which passes every min/max comparison), and headless API callers send any JSON.
A NaN scale gives an all-black "success"; an unknown mode silently runs the default. So each GuideKit
node's execute first checks its inputs (nodes/base.py wraps it): numbers finite and inside [min, max],
integers whole, combo values among the options. Errors name the node, the input and the fix.
"""
from __future__ import annotations

import math

from comfy_api.latest import io


def check_inputs(schema: io.Schema, values: dict) -> None:
    """Raise ValueError naming the node and input for the first value the schema does not allow."""
    node = schema.display_name or schema.node_id
    for spec in schema.inputs:
        value = values.get(spec.id)
        if value is None:
            continue
        if isinstance(spec, io.Float.Input):
            _check_number(node, spec, value, whole=False)
        elif isinstance(spec, io.Int.Input):
            _check_number(node, spec, value, whole=True)
        elif isinstance(spec, io.Combo.Input) and spec.options and value not in spec.options:
            shown = spec.options if len(spec.options) <= 12 else [*spec.options[:12], "…"]
            raise ValueError(f"{node}: input '{spec.id}' = {_short(value)} is not one of its options; "
                             f"choose one of {shown}")


def _check_number(node: str, spec, value, whole: bool) -> None:
    kind = "a whole number" if whole else "a finite number"
    ok = isinstance(value, int) if whole else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (not whole and not math.isfinite(value)):
        raise ValueError(f"{node}: input '{spec.id}' = {_short(value)} is not {kind}; set {_bounds(spec)}")
    if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
        raise ValueError(f"{node}: input '{spec.id}' = {value} is out of range; set {_bounds(spec)}")


def _bounds(spec) -> str:
    low = "-∞" if spec.min is None else f"{spec.min:g}"
    high = "∞" if spec.max is None else f"{spec.max:g}"
    return f"a value from {low} to {high} (default {spec.default})"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
