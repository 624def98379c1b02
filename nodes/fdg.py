"""FDG node: CFG with its own scale per frequency band (Sadat et al. 2025).

The sampler's cfg is the scale of the lowest band (layout, colour); `high_frequency_scale` that of the
highest (detail); bands between are interpolated. Like CFG-Zero*, a post-CFG function on the clone that
replaces CFG's share of `denoised` and keeps what other post-CFG functions added. Applied to x − D (the
velocity's direction, ε·σ for ε-models), where the paper works; the bands are linear, so only the optional
parallel weighting depends on that choice.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from comfy_api.latest import io

from ..guidance.combine import cfg
from ..guidance.fdg import fdg, level_scales, max_levels
from ..guidance.schedule import SigmaRange
from .base import GuideKitNode
from .common import range_inputs, sigma_override_inputs
from .registrar import sigma_range

NODE = "GuideKit FDG"


def fdg_function(high: float, levels: int, parallel_weight: float, active: SigmaRange) -> Callable:
    """The post-CFG function: inside `active`, CFG's share of denoised becomes FDG's."""
    def post_cfg(args: dict) -> torch.Tensor:
        denoised, x, sigma = args["denoised"], args["input"], args["sigma"]
        if args.get("uncond") is None or not active.active(sigma):
            return denoised
        cond, uncond, w = args["cond_denoised"], args["uncond_denoised"], args["cond_scale"]
        n = min(levels, max_levels(*x.shape[-2:]))
        guided = x - fdg(x - cond, x - uncond, level_scales(high, w, n), parallel_weight)
        return denoised + guided - cfg(cond, uncond, w)
    return post_cfg


class FrequencyDecoupledGuidanceGK(GuideKitNode):
    COST = {"extra_passes": 0, "what": "a Laplacian pyramid of the two predictions; the unconditional pass also "
                                      "runs at cfg 1"}
    COMPARE = {"fdg": {}}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitFDG", display_name=NODE, category="GuideKit/cfg",
            description="Frequency-Decoupled Guidance (Sadat et al. 2025): CFG with a separate scale per frequency "
                        "band of the prediction. The sampler's cfg guides the low frequencies (layout, colour: keep it "
                        "low to keep diversity and avoid saturation), high_frequency_scale the fine detail. Any model.",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to guide (a patched copy is returned; this one is unchanged)."),
                io.Float.Input("high_frequency_scale", default=10.0, min=0.0, max=100.0, step=0.01,
                               tooltip="CFG scale of the highest band (detail). The sampler's cfg is the scale of "
                                       "the lowest band. Paper (SDXL): 10 high with 5 low."),
                io.Int.Input("levels", default=2, min=2, max=6,
                             tooltip="Bands of the Laplacian pyramid (2 = high / low, the paper's setting); bands "
                                     "between get scales interpolated from high to low. Capped by the latent size "
                                     "(the coarsest band keeps 2×2)."),
                io.Float.Input("parallel_weight", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Weight of the guidance component parallel to the conditional prediction, per "
                                       "band (the paper's optional APG-style weighting); 1 = plain per-band CFG."),
                *range_inputs(),
                *sigma_override_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model.")],
        )

    @classmethod
    def execute(cls, model, high_frequency_scale, levels, parallel_weight, start_percent=0.0, end_percent=1.0,
                sigma_start=-1.0, sigma_end=-1.0) -> io.NodeOutput:
        active = sigma_range(model, NODE, start_percent, end_percent, sigma_start, sigma_end)
        m = model.clone()
        # at cfg 1 the low band is the conditional prediction alone, but the high band still needs the uncond pass
        m.set_model_sampler_post_cfg_function(fdg_function(high_frequency_scale, levels, parallel_weight, active),
                                              disable_cfg1_optimization=True)
        return io.NodeOutput(m)
