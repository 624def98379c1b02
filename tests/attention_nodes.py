"""Helpers for the attention-guidance host tests: our nodes and core's with defaults, and a row counter."""
from __future__ import annotations

from guidekit.cli.inprocess import import_comfy

import_comfy()
from comfy_extras.nodes_pag import PerturbedAttentionGuidance as CorePAG  # noqa: E402
from comfy_extras.nodes_sag import SelfAttentionGuidance as CoreSAG  # noqa: E402

from guidekit.nodes.pag import PerturbedAttentionGuidanceGK  # noqa: E402
from guidekit.nodes.sag import SelfAttentionGuidanceGK  # noqa: E402
from guidekit.nodes.seg import SmoothedEnergyGuidanceGK  # noqa: E402

BRANCH = dict(layers="default", start_percent=0.0, end_percent=1.0, rescale=0.0, mode="extra pass",
              evaluation="separate")


def pag(model, scale=3.0, adaptive_scale=0.0, **kw):
    return PerturbedAttentionGuidanceGK.execute(model, scale=scale, adaptive_scale=adaptive_scale,
                                                **{**BRANCH, **kw}).result[0]


def seg(model, scale=3.0, blur_sigma=-1.0, **kw):
    return SmoothedEnergyGuidanceGK.execute(model, scale=scale, blur_sigma=blur_sigma, **{**BRANCH, **kw}).result[0]


def sag(model, scale=0.5, blur_sigma=2.0, layer="default", threshold=1.0, start_percent=0.0, end_percent=1.0, **kw):
    return SelfAttentionGuidanceGK.execute(model, scale=scale, blur_sigma=blur_sigma, layer=layer, threshold=threshold,
                                           start_percent=start_percent, end_percent=end_percent, **kw).result[0]


def core_pag(model, scale=3.0):
    return CorePAG.execute(model, scale).result[0]


def core_sag(model, scale=0.5, blur_sigma=2.0):
    return CoreSAG.execute(model, scale, blur_sigma).result[0]


class RowCounter:
    """A model_function_wrapper counting model calls and batch rows (the cost of a guidance method)."""

    def __init__(self):
        self.calls, self.rows = 0, 0

    def __call__(self, apply_model, args):
        self.calls += 1
        self.rows += args["input"].shape[0]
        return apply_model(args["input"], args["timestep"], **args["c"])

    def attach(self, model):
        m = model.clone()
        m.set_model_unet_function_wrapper(self)
        return m


def changed(a, b, at_least):
    return (a - b).abs().max().item() > at_least


def assert_same_guidance(ours, reference, unguided, rel=1e-2):
    """ours = reference up to 1 % of the guidance effect (reference − unguided), which must be real.

    Batched and separate calls, or a row in batches of different sizes, differ by float rounding that
    sampling amplifies; measured against the effect the comparison can neither pass vacuously nor flake.
    """
    effect = (reference - unguided).abs().max().item()
    error = (ours - reference).abs().max().item()
    assert effect > 1e-3, f"the guidance changed nothing (max |Δ| = {effect:.2e}): the comparison is vacuous"
    assert error <= rel * effect, f"max |ours − reference| = {error:.3e} > {rel:.0%} of the effect {effect:.3e}"
