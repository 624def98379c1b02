"""TPG node: guidance away from a pass whose chosen transformer blocks see their tokens shuffled (Rajabi 2025)."""
from __future__ import annotations

from comfy_api.latest import io

from ..guidance.tpg import shuffle_tokens
from .base import GuideKitNode
from .block_hooks import BlockPerturbation, default_block
from .branch import patch_with_branch
from .common import CATEGORY, REPLACE_UNCOND_COST, branch_inputs, range_inputs, sigma_override_inputs
from .layers import Architecture, architecture, format_layers, is_default

NODE = "GuideKit TPG"
SHUFFLE = BlockPerturbation("TPG", before=lambda tokens, grid, gen: shuffle_tokens(tokens, gen))


def default_layers(arch: Architecture) -> str:
    """The official SDXL choice generalised: the down path's transformer blocks after its first quarter (SDXL:
    d6-d23 of 24 = input.7.2-9, input.8); on DiTs, which the paper does not cover, the middle block."""
    if arch.family != "unet":
        return default_block(arch)
    down = [layer for layer in arch.layers if layer[0] == "input"]
    return format_layers(down[len(down) // 4:]) if down else arch.default_layers


class TokenPerturbationGuidanceGK(GuideKitNode):
    COST = {"extra_passes": 1, "what": "a pass of the positive with shuffled tokens in the chosen blocks",
            "overrides": [REPLACE_UNCOND_COST]}
    COMPARE = {"tpg": {}}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitTPG", display_name=NODE, category=CATEGORY,
            description="Token Perturbation Guidance: guide away from a pass whose chosen transformer blocks get "
                        "their input tokens in a random order (norm-preserving, no training). UNets and every DiT "
                        "family the attention nodes support.",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to guide (a patched copy is returned; this one is unchanged)."),
                io.Float.Input("scale", default=3.0, min=0.0, max=100.0, step=0.01,
                               tooltip="TPG scale s in CFG + s·(cond − shuffled); 0 = off. Paper: 3 (SDXL)."),
                io.String.Input("layers", default="default",
                                tooltip="Transformer blocks whose input tokens are shuffled, in the layer syntax of "
                                        "PAG (e.g. 'input.7-8', 'double.3-5'). 'default': the official SDXL set "
                                        "(input.7.2-9, input.8.0-9: the down path after its first quarter; the same "
                                        "share on other UNets), the middle block on DiTs."),
                *range_inputs(),
                *branch_inputs(),
                *sigma_override_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model; the input model is unchanged.")],
        )

    @classmethod
    def execute(cls, model, scale, layers, start_percent, end_percent, rescale, mode, evaluation,
                sigma_start=-1.0, sigma_end=-1.0) -> io.NodeOutput:
        if is_default(layers):
            layers = default_layers(architecture(model, NODE))
        return io.NodeOutput(patch_with_branch(model, NODE, SHUFFLE, scale, layers, start_percent, end_percent,
                                               rescale, mode, evaluation, sigma_start, sigma_end))
