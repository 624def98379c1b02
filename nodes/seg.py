"""SEG node: guidance away from a pass whose self-attention queries are Gaussian-blurred (Hong 2024)."""
from __future__ import annotations

from comfy_api.latest import io

from ..guidance.seg import blur_image_queries
from .base import GuideKitNode
from .branch import patch_with_branch
from .common import CATEGORY, LAYERS_TOOLTIP, REPLACE_UNCOND_COST, branch_inputs, range_inputs, sigma_override_inputs
from .layers import architecture, is_default

NODE = "GuideKit SEG"


def blurred_queries(sigma: float, temporal_sigma: float = 0.0):
    """Blur the image queries over their 2D grid, any aspect ratio: (G * Q)Kᵀ = G * (QKᵀ) (SEG Prop. 3.1);
    video frames one by one, and along time too when `temporal_sigma` is set (-1: over the whole clip)."""
    def perturbation(q, k, v, grid):
        frames, height, width = grid
        return blur_image_queries(q, height, width, sigma, frames, temporal_sigma), k, v
    return perturbation


class SmoothedEnergyGuidanceGK(GuideKitNode):
    COST = {"extra_passes": 1, "what": "a pass of the positive with blurred attention queries",
            "overrides": [REPLACE_UNCOND_COST]}
    COMPARE = {"seg": {}}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitSEG", display_name=NODE, category=CATEGORY,
            description="Smoothed Energy Guidance: guide away from a pass whose chosen self-attention queries "
                        "are Gaussian-blurred over the image grid (any aspect ratio). UNet and DiT models.",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to guide (a patched copy is returned; this one is unchanged)."),
                io.Float.Input("scale", default=3.0, min=0.0, max=100.0, step=0.01,
                               tooltip="SEG scale in CFG + s·(cond − blurred); "
                                       "the paper fixes 3 and tunes blur_sigma."),
                io.Float.Input("blur_sigma", default=-1.0, min=-1.0, max=10000.0, step=0.01,
                               tooltip="Gaussian σ in tokens (kernel = smallest odd ≥ 6σ+1). ≤ 0 or ≥ 9999 = "
                                       "infinite: every query becomes the mean query (the paper's best)."),
                io.String.Input("layers", default="default", tooltip=LAYERS_TOOLTIP),
                *range_inputs(),
                *branch_inputs(),
                *sigma_override_inputs(),
                io.Float.Input("temporal_blur_sigma", default=0.0, min=-1.0, max=10000.0, step=0.01, optional=True,
                               tooltip="Video models: also blur the queries along time, σ in latent frames; 0 = "
                                       "each frame on its own (default), -1 = infinite (the clip's mean)."),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model; the input model is unchanged.")],
        )

    @classmethod
    def execute(cls, model, scale, blur_sigma, layers, start_percent, end_percent, rescale, mode, evaluation,
                sigma_start=-1.0, sigma_end=-1.0, temporal_blur_sigma=0.0) -> io.NodeOutput:
        if is_default(layers):       # the middle block, not PAG's measured block (docs/evidence.md: DiT presets)
            layers = architecture(model, NODE).default_block
        perturbation = blurred_queries(blur_sigma, temporal_blur_sigma)
        return io.NodeOutput(patch_with_branch(model, NODE, perturbation, scale, layers, start_percent, end_percent,
                                               rescale, mode, evaluation, sigma_start, sigma_end))
