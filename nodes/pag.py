"""PAG node: guidance away from a pass whose self-attention maps are the identity (Ahn et al. 2024)."""
from __future__ import annotations

from comfy_api.latest import io

from ..guidance.pag import joint_identity_attention
from .base import GuideKitNode
from .branch import patch_with_branch
from .common import CATEGORY, LAYERS_TOOLTIP, REPLACE_UNCOND_COST, branch_inputs, range_inputs, sigma_override_inputs

NODE = "GuideKit PAG"


def identity_perturbation(q, k, v, grid):
    """Image→image attention map := I (text attention, if any, kept): PSA(Q, K, V) = V (PAG eq. 6)."""
    return joint_identity_attention(q, k, v, grid[0] * grid[1] * grid[2])


class PerturbedAttentionGuidanceGK(GuideKitNode):
    COST = {"extra_passes": 1, "what": "a pass of the positive with identity self-attention",
            "overrides": [REPLACE_UNCOND_COST]}
    COMPARE = {"pag": {}, "pag-only": {"cfg": 1.0}}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitPAG", display_name=NODE, category=CATEGORY,
            description="Perturbed-Attention Guidance: guide away from a pass whose chosen self-attention maps "
                        "are replaced by the identity. UNets (SD1.x/SDXL) and DiTs: SD3, Flux, Flux 2, Chroma, Wan, "
                        "Qwen-Image, Lumina 2 / Z-Image, HiDream, OmniGen2, Cosmos Predict2, HunyuanVideo, LTX-Video, "
                        "Mochi, AuraFlow, Kandinsky 5, Krea 2.",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to guide (a patched copy is returned; this one is unchanged)."),
                io.Float.Input("scale", default=3.0, min=0.0, max=100.0, step=0.01,
                               tooltip="PAG scale s in CFG + s·(cond − perturbed); 0 = off. "
                                       "Papers: 3 with CFG, 5 alone."),
                io.String.Input("layers", default="default", tooltip=LAYERS_TOOLTIP),
                *range_inputs(),
                io.Float.Input("adaptive_scale", default=0.0, min=0.0, max=1.0, step=0.0001,
                               tooltip="diffusers' schedule s_t = max(0, s − a·(1000 − t)), t the timestep "
                                       "on a 0-1000 scale: the scale fades as sampling proceeds; 0 = constant."),
                *branch_inputs(),
                *sigma_override_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model; the input model is unchanged.")],
        )

    @classmethod
    def execute(cls, model, scale, layers, start_percent, end_percent, adaptive_scale, rescale, mode,
                evaluation, sigma_start=-1.0, sigma_end=-1.0) -> io.NodeOutput:
        return io.NodeOutput(patch_with_branch(model, NODE, identity_perturbation, scale, layers,
                                               start_percent, end_percent, rescale, mode, evaluation,
                                               sigma_start, sigma_end, adaptive=adaptive_scale))

