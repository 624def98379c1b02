"""The methods quality.py scores, one registry entry each: a new guidance node is one `register` call.

An entry turns (model, scale) into (patched model, the sampler's cfg) using the pack's real nodes, so
the benchmark measures exactly what users run. `scales` maps dataset → sweep; a dataset missing from
it is skipped (e.g. attention methods on the 2D MLP, which has no attention). The 2D settings use the
toy example's models (`toy-a-main`, guides `toy-a-weak` and `toy-ab-uncond`, no class input); methods that need
a class input run on the earlier class-conditional `toy-main` and say so in their label ("earlier toy-main")
or in `conditional` below (ICG, CFG-Zero*).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Callable

import torch

from guidekit.cli.inprocess import import_comfy

import_comfy()                   # ComfyUI in-process (CPU) before anything below imports it

from guidekit.nodes.autoguidance import AutoguidanceGK, DegradedModelGK  # noqa: E402
from guidekit.nodes.cfg_zero_star import CFGZeroStarGK  # noqa: E402
from guidekit.nodes.fdg import FrequencyDecoupledGuidanceGK  # noqa: E402
from guidekit.nodes.icg import IndependentConditionGuidanceGK  # noqa: E402
from guidekit.nodes.nag import NormalizedAttentionGuidanceGK  # noqa: E402
from guidekit.nodes.pag import PerturbedAttentionGuidanceGK  # noqa: E402
from guidekit.nodes.sag import SelfAttentionGuidanceGK  # noqa: E402
from guidekit.nodes.seg import SmoothedEnergyGuidanceGK  # noqa: E402
from guidekit.nodes.stg import SpatiotemporalSkipGuidanceGK  # noqa: E402
from guidekit.nodes.tpg import TokenPerturbationGuidanceGK  # noqa: E402
from guidekit.nodes.tsg import TimestepGuidanceGK  # noqa: E402

from .comfy_models import comfy, demo_mnist, mnist_patcher, toy_patcher  # noqa: F401  (ComfyUI first, CPU)
from .networks import toy_context
from .training import WEIGHTS

Apply = Callable[[object, float, str], tuple[object, float]]     # (model, scale, dataset) → (model, cfg)


@dataclass(frozen=True)
class Method:
    name: str
    label: str                                   # how the table and grid name it; {s} = the scale
    scales: dict[str, tuple[float, ...]]         # dataset → scale sweep
    apply: Apply
    dataset_labels: dict[str, str] = field(default_factory=dict)   # dataset → label, where it differs

    def label_for(self, dataset: str, scale: float) -> str:
        return self.dataset_labels.get(dataset, self.label).format(s=f"{scale:g}")


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    REGISTRY[method.name] = method
    return method


TOY = ("toy", "toy-ref")           # the 2D settings: our sampling protocol, and the toy example's


def is_toy(dataset: str) -> bool:
    return dataset in TOY


def cfg(model, s: float, dataset: str):
    """CFG. On the 2D settings, as in the toy example: the class-A model guided by a separate model of A∪B
    without a condition (`toy-ab-uncond`), D_AB + w·(D_A − D_AB) — the two-model form, run through the
    Autoguidance node (its equation is exactly this with the unconditional model as the 'weak' one)."""
    if is_toy(dataset):
        return autoguided(model, trained("toy-ab-uncond"), s), 1.0
    return model, s


def conditional(model, dataset: str):
    """Methods that need a class input (CFG's null token, ICG, CFG-Zero*): on the 2D settings the earlier
    class-conditional model `toy-main` (A, B, null), since the toy example's models have no class input."""
    return trained("toy-main") if is_toy(dataset) else model


# The DiT's depth sweep (issue 20): CFG's scales, and one fixed PAG / SEG scale on one block at a time.
DIT_CFG = (1.5, 2.0, 3.0)
DIT_BLOCKS = 8                      # mnist-dit-28's double.0 … double.7
DIT_PAG_SCALE = 1.0                 # PAG 3 on the middle block over-guides this model (a 60-digit pilot: FD 554 vs
                                    # unguided 313, accuracy 0.50 vs 0.68), as PAG 3 did on mnist-main; it runs as a row
DIT_SEG_SCALE = 3.0                 # SEG's paper scale
DIT_SEG_BLOCKS = (0, 4, 7)          # first, middle (the documented default of a DiT without a published layer), last
DIT_SEEDS = ("mnist-dit-s1", "mnist-dit-s2")   # the same recipe from other seeds: one scale per method


def _on_seeds(scales: tuple) -> dict:
    return dict.fromkeys(DIT_SEEDS, scales)


register(Method("unguided", "unguided",
                {"toy": (1.0,), "toy-ref": (1.0,), "mnist": (1.0,), "mnist-uncond": (1.0,), "mnist-28": (1.0,),
                 "mnist-uncond-28": (1.0,), "mnist-dit": (1.0,), **_on_seeds((1.0,))},
                lambda m, s, d: (m, 1.0)))
register(Method("cfg", "CFG {s}", {"toy": (1.5, 2.0, 3.0, 4.0), "toy-ref": (2.0, 4.0),
                                   "mnist": (1.5, 2.0, 3.0, 5.0), "mnist-28": (1.5, 2.0, 3.0),
                                   "mnist-dit": DIT_CFG, **_on_seeds((2.0,))},
                cfg))
register(Method("cfg-null", "earlier toy-main: CFG {s} (null token)",
                {"toy": (1.0, 2.0, 4.0), "toy-ref": (1.0, 2.0)},
                lambda m, s, d: (conditional(m, d), s)))
register(Method("pag", "PAG {s}", {"mnist": (1.0, 3.0), "mnist-28": (3.0,)},
                lambda m, s, d: (PerturbedAttentionGuidanceGK.run(model=m, scale=s)[0], 1.0)))
register(Method("seg", "SEG {s}", {"mnist": (1.0, 3.0), "mnist-28": (3.0,)},
                lambda m, s, d: (SmoothedEnergyGuidanceGK.run(model=m, scale=s)[0], 1.0)))
register(Method("seg-16", "SEG {s} on the 16×16 layers", {"mnist-28": (3.0,)},      # input.3 and output.2-3
                lambda m, s, d: (SmoothedEnergyGuidanceGK.run(model=m, scale=s, layers="input.3, output.2-3")[0], 1.0)))


def _pag_on(layers: str) -> Apply:
    return lambda m, s, d: (PerturbedAttentionGuidanceGK.run(model=m, scale=s, layers=layers)[0], 1.0)


def _seg_on(layers: str) -> Apply:
    return lambda m, s, d: (SmoothedEnergyGuidanceGK.run(model=m, scale=s, layers=layers)[0], 1.0)


for _block in range(DIT_BLOCKS):
    scales = (DIT_PAG_SCALE, 3.0) if _block == DIT_BLOCKS // 2 else (DIT_PAG_SCALE,)
    register(Method(f"pag-double.{_block}", f"PAG {{s}} on double.{_block}",
                    {"mnist-dit": scales, **_on_seeds((DIT_PAG_SCALE,))}, _pag_on(f"double.{_block}")))
# issue 20: no single block helps both trained DiTs but double.5 — do spans of blocks (one extra pass, as one block)
# hold across the models? The spans are relative depths any family has: all, the middle third, the second half
DIT_PAG_SPANS = {"all": ("all", (0.5, 1.0)), "middle-third": ("double.3-5", (1.0,)),
                 "second-half": ("double.4-7", (1.0,))}
for _span, (_layers, _scales) in DIT_PAG_SPANS.items():
    register(Method(f"pag-{_span}", f"PAG {{s}} on {_layers}", {"mnist-dit": _scales, **_on_seeds(_scales)},
                    _pag_on(_layers)))
register(Method("seg-middle-third", "SEG {s} on double.3-5",
                {"mnist-dit": (DIT_SEG_SCALE,), **_on_seeds((DIT_SEG_SCALE,))}, _seg_on("double.3-5")))
for _block in DIT_SEG_BLOCKS:
    seeds = _on_seeds((DIT_SEG_SCALE,)) if _block == DIT_BLOCKS // 2 else {}   # the middle: every model
    register(Method(f"seg-double.{_block}", f"SEG {{s}} on double.{_block}", {"mnist-dit": (DIT_SEG_SCALE,), **seeds},
                    _seg_on(f"double.{_block}")))
register(Method("sag", "SAG {s}", {"mnist": (0.5, 1.0), "mnist-28": (1.0,)},
                lambda m, s, d: (SelfAttentionGuidanceGK.run(model=m, scale=s)[0], 1.0)))
register(Method("cfg+pag", "CFG 2 + PAG {s}", {"mnist": (2.0,)},
                lambda m, s, d: (PerturbedAttentionGuidanceGK.run(model=m, scale=s)[0], 2.0)))


# --- dual-model and condition guidance (issue 4) ------------------------------------------------------------

@cache
def trained(name: str):
    """A second trained model of a dataset, loaded once: 'toy-weak', 'mnist-weak', 'mnist-sims', ..."""
    path = WEIGHTS / f"{name}.safetensors"
    return toy_patcher(path) if name.startswith("toy") else mnist_patcher(path)


def autoguided(model, weak, w: float):
    return AutoguidanceGK.run(model=model, weak_model=weak, w=w)[0]


def class_pool(dataset: str) -> list:
    """Every class as one conditioning row: ICG's 'random class' (toy: A and B; MNIST: 0-9)."""
    if is_toy(dataset):
        return [[toy_context(torch.tensor([0, 1])), {}]]
    return [[demo_mnist.digit_context(list(range(10))), {}]]


def icg(model, mode: str, dataset: str):
    pool = class_pool(dataset) if mode == "pool" else None
    return IndependentConditionGuidanceGK.run(model=conditional(model, dataset), mode=mode, pool=pool)[0]


WEAK = {"toy": "toy-a-weak", "toy-ref": "toy-a-weak", "mnist": "mnist-weak",   # the autoguidance guide per setting
        "mnist-28": "mnist-weak-28"}
SIMS_NEGATIVE = {"mnist": "mnist-sims", "mnist-28": "mnist-sims-28"}

register(Method("autoguidance", "AG w={s}", {"toy": (2.0, 3.0, 4.0), "toy-ref": (2.0, 3.0, 4.0),
                                             "mnist": (1.5, 2.0, 2.5, 3.0), "mnist-28": (1.5, 2.5)},
                lambda m, s, d: (autoguided(m, trained(WEAK[d]), s), 1.0)))
register(Method("ag-earlier", "earlier toy-main: AG w={s} (toy-weak)", {"toy": (2.0, 3.0), "toy-ref": (3.0,)},
                lambda m, s, d: (autoguided(trained("toy-main"), trained("toy-weak"), s), 1.0)))
register(Method("ag-degraded", "AG degraded self w={s}", {"mnist": (2.0, 3.0)},
                lambda m, s, d: (autoguided(m, DegradedModelGK.run(model=m)[0], s), 1.0)))
register(Method("icg", "ICG gaussian {s}", {"toy": (1.5, 2.0, 3.0), "mnist": (1.5, 2.0, 3.0)},
                lambda m, s, d: (icg(m, "gaussian", d), s),
                {"toy": "earlier toy-main: ICG gaussian {s}"}))
register(Method("icg-class", "ICG random class {s}", {"toy": (2.0,), "mnist": (2.0, 3.0)},
                lambda m, s, d: (icg(m, "pool", d), s),
                {"toy": "earlier toy-main: ICG random class {s}"}))
register(Method("sims", "SIMS w={s}", {"mnist": (1.5, 2.0, 3.0), "mnist-28": (3.0,)},
                lambda m, s, d: (autoguided(m, trained(SIMS_NEGATIVE[d]), s), 1.0)))
register(Method("tsg", "TSG s=8 w={s}", {"mnist-uncond": (1.5, 2.0, 3.0), "mnist-uncond-28": (2.0,)},
                lambda m, s, d: (TimestepGuidanceGK.run(model=m, noise_scale=8.0)[0], s)))
register(Method("tsg-s4", "TSG s=4 w={s}", {"mnist-uncond": (2.0,)},
                lambda m, s, d: (TimestepGuidanceGK.run(model=m, noise_scale=4.0)[0], s)))


# --- NAG, TPG, STG, FDG, CFG-Zero* (issue 21) ---------------------------------------------------------------

def nag_negative() -> list:
    """NAG's negative on MNIST: the learned unconditional class token, the same one CFG's negative uses."""
    return [[demo_mnist.digit_context([demo_mnist.NULL]), {}]]


register(Method("nag", "NAG {s} (cfg 1)", {"mnist": (2.0, 4.0)},
                lambda m, s, d: (NormalizedAttentionGuidanceGK.run(model=m, negative=nag_negative(), scale=s,
                                                                   alpha=0.5)[0], 1.0)))
register(Method("cfg+nag", "CFG 2 + NAG {s}", {"mnist": (2.0,)},
                lambda m, s, d: (NormalizedAttentionGuidanceGK.run(model=m, negative=nag_negative(), scale=s,
                                                                   alpha=0.5)[0], 2.0)))
register(Method("tpg", "TPG {s}", {"mnist": (1.0, 3.0)},
                lambda m, s, d: (TokenPerturbationGuidanceGK.run(model=m, scale=s)[0], 1.0)))
register(Method("cfg+tpg", "CFG 2 + TPG {s}", {"mnist": (2.0,)},
                lambda m, s, d: (TokenPerturbationGuidanceGK.run(model=m, scale=s)[0], 2.0)))
register(Method("stg", "STG {s}", {"mnist": (1.0, 2.0)},
                lambda m, s, d: (SpatiotemporalSkipGuidanceGK.run(model=m, scale=s)[0], 1.0)))
register(Method("fdg", "FDG low 2 high {s}", {"mnist": (4.0, 6.0)},
                lambda m, s, d: (FrequencyDecoupledGuidanceGK.run(model=m, high_frequency_scale=s)[0], 2.0)))
register(Method("cfg-zero-star", "CFG-Zero* {s}", {"toy": (2.0, 4.0), "mnist": (2.0, 3.0)},
                lambda m, s, d: (CFGZeroStarGK.run(model=conditional(m, d), zero_init_steps=0)[0], s),
                {"toy": "earlier toy-main: CFG-Zero* {s}"}))
