"""The methods quality.py scores, one registry entry each: a new guidance node is one `register` call.

An entry turns (model, scale) into (patched model, the sampler's cfg) using the pack's real nodes, so
the benchmark measures exactly what users run. `scales` maps dataset → sweep; a dataset missing from
it is skipped (e.g. attention methods on the 2D MLP, which has no attention).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .comfy_models import comfy  # noqa: F401  (ComfyUI imported, CPU, before the pack's nodes)

from guidekit.nodes.pag import PerturbedAttentionGuidanceGK  # noqa: E402
from guidekit.nodes.sag import SelfAttentionGuidanceGK  # noqa: E402
from guidekit.nodes.seg import SmoothedEnergyGuidanceGK  # noqa: E402

Apply = Callable[[object, float], tuple[object, float]]


@dataclass(frozen=True)
class Method:
    name: str
    label: str                                   # how the table and grid name it; {s} = the scale
    scales: dict[str, tuple[float, ...]]         # dataset → scale sweep
    apply: Apply


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    REGISTRY[method.name] = method
    return method


BRANCH = dict(layers="default", start_percent=0.0, end_percent=1.0, rescale=0.0, mode="extra pass",
              evaluation="auto")

register(Method("unguided", "unguided", {"toy": (1.0,), "mnist": (1.0,)}, lambda m, s: (m, 1.0)))
register(Method("cfg", "CFG {s}", {"toy": (1.5, 2.0, 3.0, 4.0), "mnist": (1.5, 2.0, 3.0, 5.0)},
                lambda m, s: (m, s)))
register(Method("pag", "PAG {s}", {"mnist": (1.0, 3.0)},
                lambda m, s: (PerturbedAttentionGuidanceGK.execute(m, scale=s, adaptive_scale=0.0, **BRANCH).result[0], 1.0)))
register(Method("seg", "SEG {s}", {"mnist": (1.0, 3.0)},
                lambda m, s: (SmoothedEnergyGuidanceGK.execute(m, scale=s, blur_sigma=-1.0, **BRANCH).result[0], 1.0)))
register(Method("sag", "SAG {s}", {"mnist": (0.5, 1.0)},
                lambda m, s: (SelfAttentionGuidanceGK.execute(m, scale=s, blur_sigma=2.0, layer="default", threshold=1.0,
                                                              start_percent=0.0, end_percent=1.0).result[0], 1.0)))
register(Method("cfg+pag", "CFG 2 + PAG {s}", {"mnist": (2.0,)},
                lambda m, s: (PerturbedAttentionGuidanceGK.execute(m, scale=s, adaptive_scale=0.0, **BRANCH).result[0], 2.0)))
