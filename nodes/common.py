"""Inputs every attention-perturbation node shares, so PAG, SEG and SAG read the same way in the UI."""
from __future__ import annotations

from comfy_api.latest import io

from .branch import EVALUATIONS, MODES

CATEGORY = "GuideKit/attention"
REPLACE_UNCOND_COST = {"widget": "mode", "value": MODES[1], "extra_passes": 0,       # PAG's and SEG's COST
                       "what": "the perturbed pass takes the unconditional pass's place"}

LAYERS_TOOLTIP = ("Self-attention layers to perturb, comma-separated: place[.ids[.indices]] with numbers or "
                  "ranges a-b, a missing part meaning all; 'all' = every layer. UNet: input / middle / output, "
                  "e.g. 'middle', 'output.0-2', 'input.4.1'. Flux/Chroma, HunyuanVideo, AuraFlow: "
                  "'double.3, single.0-5'. SD3: 'joint.1'. Qwen-Image, Lumina 2 / Z-Image, OmniGen2: 'double.15'. "
                  "Wan, LTX-Video, Mochi, Cosmos: 'block.15'. 'default' = the mid block on UNets (the paper's), "
                  "joint.1 on SD3 (diffusers' SD3 pipeline); on other DiTs PAG's is the block at 5/8 of the "
                  "depth (measured on our DiTs), SEG's and Degraded Model's the middle block. A wrong name lists "
                  "this model's layers in the error.")


def range_inputs() -> list:
    return [
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Guidance starts at this fraction of the schedule (0 = first step)."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Guidance ends at this fraction of the schedule (1 = last step). Outside the "
                               "range the extra model pass is skipped entirely."),
    ]


def sigma_override_inputs() -> list:
    return [
        io.Float.Input("sigma_start", default=-1.0, min=-1.0, max=10000.0, step=0.01, optional=True,
                       tooltip="Overrides start_percent with a σ (active while σ ≤ sigma_start); -1 = off."),
        io.Float.Input("sigma_end", default=-1.0, min=-1.0, max=10000.0, step=0.01, optional=True,
                       tooltip="Overrides end_percent with a σ (active while σ ≥ sigma_end); -1 = off."),
    ]


def branch_inputs() -> list:
    return [
        io.Float.Input("rescale", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Rescale the guided result's std to the conditional one (Lin et al. 2023); "
                               "0 = off, 0.7 is the paper's value."),
        io.Combo.Input("mode", options=MODES, default=MODES[0],
                       tooltip="'extra pass': CFG + scale·(cond − perturbed), 3 passes per step. 'replace "
                               "uncond': the perturbed pass takes the unconditional one's place (2 passes): "
                               "cond + scale·(cond − perturbed), the sampler's cfg and negative are unused "
                               "inside the range."),
        io.Combo.Input("evaluation", options=EVALUATIONS, default=EVALUATIONS[0],
                       tooltip="How the extra pass runs: 'batched' with cond/uncond in one model call, "
                               "'separate' as its own call, 'auto' = separate on CPU, batched on GPU "
                               "(measured in benchmarks/attention_overhead.py). Same result either way."),
    ]
