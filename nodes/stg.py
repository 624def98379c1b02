"""STG node: guidance away from a pass that skips chosen spatiotemporal blocks of a video model (Hyung 2025)."""
from __future__ import annotations

from comfy_api.latest import io

from .base import GuideKitNode
from .block_hooks import BlockPerturbation, default_block
from .branch import patch_with_branch
from .common import CATEGORY, REPLACE_UNCOND_COST, branch_inputs, range_inputs, sigma_override_inputs
from .layers import Architecture, architecture, format_layers, is_default
from .pag import identity_perturbation

NODE = "GuideKit STG"
SKIPS = ["block", "attention"]
SKIP_BLOCK = BlockPerturbation("STG", skip=True)
OFFICIAL_LAYERS = {"ltxv": ("block", 19), "hunyuan_video": ("double", 2), "mochi": ("block", 34)}   # STGuidance


def default_layers(arch: Architecture) -> str:
    """The official repository's block for LTX-Video (19), HunyuanVideo (2) and Mochi (34) when the model has
    it; otherwise (other families, smaller variants) the middle block of the stack."""
    official = OFFICIAL_LAYERS.get(arch.family)
    return format_layers([official]) if official in arch.layers else default_block(arch)


class SpatiotemporalSkipGuidanceGK(GuideKitNode):
    COST = {"extra_passes": 1, "what": "a pass of the positive with the chosen blocks skipped",
            "overrides": [REPLACE_UNCOND_COST]}
    COMPARE = {"stg": {}}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitSTG", display_name=NODE, category=CATEGORY,
            description="Spatiotemporal Skip Guidance: guide away from a pass that skips chosen blocks (or only "
                        "their self-attention) — an implicitly weaker model, for video DiTs (Wan, HunyuanVideo, "
                        "LTX-Video, Mochi, Cosmos, Kandinsky 5) and every other family the attention nodes support.",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to guide (a patched copy is returned; this one is unchanged)."),
                io.Float.Input("scale", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="STG scale s in CFG + s·(cond − skipped); 0 = off. Official: 1 (≤ 2)."),
                io.Combo.Input("skip", options=SKIPS, default=SKIPS[0],
                               tooltip="'block': the chosen blocks pass their input through on the perturbed pass "
                                       "(the official STG code). 'attention': only their self-attention is skipped, "
                                       "its output becoming the values (STG-A, ComfyUI's LTXV STG node)."),
                io.String.Input("layers", default="default",
                                tooltip="Blocks to skip, in the layer syntax of PAG (e.g. 'block.19', 'double.2'). "
                                        "'default': the official block for LTX-Video (block.19), HunyuanVideo "
                                        "(double.2) and Mochi (block.34) when the model has it, else the middle "
                                        "block."),
                *range_inputs(),
                *branch_inputs(),
                *sigma_override_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model; the input model is unchanged.")],
        )

    @classmethod
    def execute(cls, model, scale, skip, layers, start_percent, end_percent, rescale, mode, evaluation,
                sigma_start=-1.0, sigma_end=-1.0) -> io.NodeOutput:
        if is_default(layers):
            layers = default_layers(architecture(model, NODE))
        perturbation = SKIP_BLOCK if skip == SKIPS[0] else identity_perturbation
        return io.NodeOutput(patch_with_branch(model, NODE, perturbation, scale, layers, start_percent, end_percent,
                                               rescale, mode, evaluation, sigma_start, sigma_end))
