"""Autoguidance nodes (Karras et al. 2024): guide the model with a weaker version of itself.

GuideKit Autoguidance patches a MODEL for KSampler: out = CFG + (w − 1)·(D_main(c) − D_weak(c)), so with
the sampler's cfg at 1 it is the paper's D_weak + w·(D_main − D_weak) and with cfg > 1 CFG rides on top.
GuideKit Autoguidance Guider is the same for SamplerCustomAdvanced. GuideKit Degraded Model makes a weak
model out of the main one (chosen self-attention layers perturbed) for users who own one checkpoint.
"""
from __future__ import annotations

import comfy.patcher_extension
import comfy.samplers
from comfy_api.latest import io

from ..guidance.autoguidance import autoguidance_term
from . import registrar
from .attention_hooks import image_grid, install
from .base import GuideKitNode
from .common import LAYERS_TOOLTIP, range_inputs, sigma_override_inputs
from .dual_model import WeakModel
from .layers import architecture, is_default, parse_layers
from .pag import identity_perturbation
from .seg import blurred_queries

CATEGORY = "GuideKit/dual model"
NODE = "GuideKit Autoguidance"
GUIDER_NODE = "GuideKit Autoguidance Guider"
DEGRADE_NODE = "GuideKit Degraded Model"

WEAK_TOOLTIP = ("The weak model, same architecture and latent space: an earlier or shorter-trained checkpoint, "
                "a smaller sibling, the same checkpoint at a lower LoRA strength, or GuideKit Degraded Model. "
                "The same file as 'model' works (no copy needed).")
W_TOOLTIP = ("Autoguidance weight w in D_weak + w·(D_main − D_weak); 1 = the main model alone. Paper: 2-3 "
             "(ImageNet 512: 2.05-2.45; 2D toy: 3).")


def patch_autoguidance(node: str, model, weak_model, w: float, start_percent: float, end_percent: float,
                       sigma_start: float = -1.0, sigma_end: float = -1.0):
    """Clone `model` and add the autoguidance term against `weak_model`; the node's whole execute."""
    active = registrar.sigma_range(model, node, start_percent, end_percent, sigma_start, sigma_end)
    m, weak = WeakModel.attach(model, weak_model, node)
    term = autoguidance_term(w)
    registrar.register(m, registrar.Guidance(node, weak, active, lambda sigma: term, batched=lambda x: False))
    return m


def weight_inputs() -> list:
    return [io.Model.Input("model", tooltip="The main model."),
            io.Model.Input("weak_model", tooltip=WEAK_TOOLTIP),
            io.Float.Input("w", default=2.0, min=0.0, max=20.0, step=0.01, tooltip=W_TOOLTIP),
            *range_inputs()]


class AutoguidanceGK(GuideKitNode):
    COST = {"extra_passes": 1, "what": "the weak model on the positive"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitAutoguidance", display_name=NODE, category=CATEGORY,
            description="Autoguidance (Karras et al. 2024): guide the model away from a weaker version of itself "
                        "given the same conditioning. Sampler cfg 1 = the paper's method; cfg > 1 adds CFG on top.",
            inputs=[*weight_inputs(), *sigma_override_inputs()],
            outputs=[io.Model.Output(tooltip="A patched copy of the model that also loads the weak model.")],
        )

    @classmethod
    def execute(cls, model, weak_model, w, start_percent, end_percent, sigma_start=-1.0,
                sigma_end=-1.0) -> io.NodeOutput:
        return io.NodeOutput(patch_autoguidance(NODE, model, weak_model, w, start_percent, end_percent,
                                                sigma_start, sigma_end))


class AutoguidanceGuiderGK(GuideKitNode):
    COST = {"extra_passes": 1, "what": "the weak model on the positive"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitAutoguidanceGuider", display_name=GUIDER_NODE, category=CATEGORY,
            description="Autoguidance as a GUIDER for SamplerCustomAdvanced: D_weak + w·(D_main − D_weak) on the "
                        "positive, plus optional CFG (cfg > 1 needs 'negative').",
            inputs=[*weight_inputs(),
                    io.Conditioning.Input("positive", tooltip="The prompt's conditioning."),
                    io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                                   tooltip="CFG on top of autoguidance; 1 = off (the paper's setting)."),
                    io.Conditioning.Input("negative", optional=True,
                                          tooltip="Only used when cfg ≠ 1."),
                    *sigma_override_inputs()],
            outputs=[io.Guider.Output(tooltip="A guider for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, weak_model, w, start_percent, end_percent, positive, cfg, negative=None,
                sigma_start=-1.0, sigma_end=-1.0) -> io.NodeOutput:
        if negative is None and cfg != 1.0:
            raise ValueError(f"{GUIDER_NODE}: cfg is {cfg} but input 'negative' is not connected; connect a "
                             "negative conditioning or set cfg to 1")
        patched = patch_autoguidance(GUIDER_NODE, model, weak_model, w, start_percent, end_percent,
                                     sigma_start, sigma_end)
        guider = comfy.samplers.CFGGuider(patched)
        guider.set_conds(positive, negative if negative is not None else positive)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)


DEGRADATIONS = {"identity attention (PAG)": lambda blur: identity_perturbation,
                "blurred queries (SEG)": lambda blur: blurred_queries(blur)}


class DegradedModelGK(GuideKitNode):
    COST = {"extra_passes": 0, "what": "perturbs every pass of this model; adds none"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitDegradedModel", display_name=DEGRADE_NODE, category=CATEGORY,
            description="A weak model made from the model itself: chosen self-attention layers perturbed on every "
                        "pass. Feed it to GuideKit Autoguidance as 'weak_model' when you own one checkpoint.",
            inputs=[io.Model.Input("model", tooltip="The model to degrade (weights shared, not copied)."),
                    io.Combo.Input("degradation", options=list(DEGRADATIONS), default=list(DEGRADATIONS)[0],
                                   tooltip="What the chosen layers do: attention map := identity (PAG), or "
                                           "queries Gaussian-blurred over the image (SEG)."),
                    io.String.Input("layers", default="default", tooltip=LAYERS_TOOLTIP),
                    io.Float.Input("blur_sigma", default=-1.0, min=-1.0, max=10000.0, step=0.01,
                                   tooltip="SEG blur σ; -1 = infinite (the queries' mean). Unused by PAG.")],
            outputs=[io.Model.Output(tooltip="A copy of the model, degraded on every pass; weights shared.")],
        )

    @classmethod
    def execute(cls, model, degradation, layers, blur_sigma) -> io.NodeOutput:
        if degradation not in DEGRADATIONS:
            raise ValueError(f"{DEGRADE_NODE}: input 'degradation' = {degradation!r}; "
                             f"choose one of {list(DEGRADATIONS)}")
        arch = architecture(model, DEGRADE_NODE)
        chosen = parse_layers(arch.default_block if is_default(layers) else layers, arch, DEGRADE_NODE)
        perturb = DEGRADATIONS[degradation](blur_sigma)
        token = object()

        def degrade_every_pass(executor, base_model, conds, x, timestep, model_options):
            mo = install(model_options, arch, chosen, token, perturb, range(len(conds)), image_grid(arch, x.shape))
            return executor(base_model, conds, x, timestep, mo)

        m = model.clone()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "guidekit_degraded",
                               degrade_every_pass)
        return io.NodeOutput(m)
