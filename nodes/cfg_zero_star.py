"""CFG-Zero* node: CFG around the optimized unconditional velocity, and zero-init steps (Fan et al. 2025).

ComfyUI core's CFGZeroStar applies the optimized scale to the unconditional *denoised* prediction; the
paper and its code apply it to the unconditional *velocity*. The two differ by x·(1 − s*)·(1 − w) whenever
s* ≠ 1 and w ≠ 1 (tests/test_host_cfg_zero_star.py measures it); this node follows the paper.
"""
from __future__ import annotations

import logging

import comfy.model_sampling
import torch
from comfy_api.latest import io

from ..guidance.cfg_zero_star import denoised_cfg_zero_star
from ..guidance.combine import cfg
from .base import GuideKitNode

NODE = "GuideKit CFG-Zero*"


def step_index(args: dict) -> int | None:
    """Which step of the sampler's schedule this call belongs to (None when the schedule is unknown)."""
    sigmas = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
    if sigmas is None:
        return None
    return int((sigmas.to(args["sigma"].device) > args["sigma"].max() * (1 + 1e-5)).sum())


def cfg_zero_star_function(zero_init_steps: int):
    """The post-CFG function: zero-init steps leave the sample where it is; later steps get CFG-Zero*'s scale."""
    def post_cfg(args: dict) -> torch.Tensor:
        denoised, x = args["denoised"], args["input"]
        index = step_index(args)
        if index is not None and index < zero_init_steps:
            return x.clone()                            # velocity 0: D = x, so the step does not move x
        if args.get("uncond") is None:                  # cfg 1: ComfyUI ran no unconditional pass
            return denoised
        cond, uncond, w = args["cond_denoised"], args["uncond_denoised"], args["cond_scale"]
        # replace CFG's share of `denoised`, keeping what other post-CFG functions added before this one
        return denoised + denoised_cfg_zero_star(x, cond, uncond, w) - cfg(cond, uncond, w)
    return post_cfg


class CFGZeroStarGK(GuideKitNode):
    COST = {"extra_passes": 0, "what": "rescales CFG's unconditional prediction; zero-init steps skip the update"}
    COMPARE = {"cfg-zero-star": {}}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitCFGZeroStar", display_name=NODE, category="GuideKit/cfg",
            description="CFG-Zero* (Fan et al. 2025): CFG around the unconditional velocity scaled by its optimal "
                        "projection on the conditional one, and zero-init (the first steps do not move the sample). "
                        "For flow models (SD3, Flux, Wan, …); works on any model. Guidance weight = the sampler's cfg.",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to guide (a patched copy is returned; this one is unchanged)."),
                io.Int.Input("zero_init_steps", default=1, min=0, max=10000,
                             tooltip="How many first steps of the sampler's schedule output zero velocity (the "
                                     "sample stays where it is); 0 = off. The paper zeroes the first step(s). "
                                     "Rectified-flow models only (SD3, Flux, Wan, …): others run the optimized "
                                     "scale alone."),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model.")],
        )

    @classmethod
    def execute(cls, model, zero_init_steps) -> io.NodeOutput:
        if zero_init_steps and not isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.CONST):
            # A step that leaves x in place is exact for rectified flow (x at t ≈ 1 is the noise itself); on a
            # σ-schedule (ε / v models) it leaves noise the next step does not expect, and images break.
            logging.warning("%s: zero-init applies to rectified-flow models (SD3, Flux, Wan, …); this model gets "
                            "the optimized scale only", NODE)
            zero_init_steps = 0
        m = model.clone()
        m.set_model_sampler_post_cfg_function(cfg_zero_star_function(zero_init_steps))
        return io.NodeOutput(m)
