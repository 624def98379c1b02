"""SAG node: blur x0 where the model's self-attention looks, re-noise, and guide away (Hong et al. 2023)."""
from __future__ import annotations

from dataclasses import dataclass, field

import comfy.samplers
import torch
from comfy_api.latest import io

from ..guidance.sag import degrade, key_saliency, saliency_mask
from . import registrar
from .attention_hooks import image_grid, install
from .base import GuideKitNode
from .common import CATEGORY, range_inputs, sigma_override_inputs
from .layers import Architecture, Layer, architecture, format_layers, is_default, parse_layers

NODE = "GuideKit SAG"


@dataclass
class BlurredAttendedRegion(registrar.Negative):
    """SAG's pair: the x0 of the pass that already ran, blurred where the layer's attention concentrates
    (D_pos), and the model's prediction on that blurred x0 re-noised (D_neg)."""
    arch: Architecture
    layer: Layer
    blur_sigma: float
    threshold: float
    token: object = field(default_factory=object)
    _records: list = field(default_factory=list)    # [(input tensor, saliency (B, N), grid)] of this step

    def record(self, model_options: dict, x: torch.Tensor, row: int) -> dict:
        """model_options whose hook keeps the key saliency of `row` and changes nothing."""
        def perturbation(q, k, v, grid):
            self._records.append((x, key_saliency(q, k, grid[0] * grid[1] * grid[2]), grid))
            return None
        return install(model_options, self.arch, [self.layer], self.token, perturbation, [row],
                       image_grid(self.arch, x.shape))

    def observe(self, args: dict) -> dict:
        """Record the attention of the uncond rows (cond when CFG is off) inside the sampler's own call."""
        self._records.clear()
        return self.record(args["model_options"], args["input"], 1 if args["conds"][1] is not None else 0)

    def pair(self, args: dict, batched: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x, sigma, model = args["input"], args["sigma"], args["model"]
        use_uncond = args.get("uncond") is not None
        branch_cond = args["uncond"] if use_uncond else args["cond"]
        x0 = args["uncond_denoised"] if use_uncond else args["cond_denoised"]
        records = [r for r in self._records if r[0] is x]
        self._records.clear()
        if not records:     # a guider bypassed the batch function: record in a pass of our own
            x0 = registrar.denoise(args, branch_cond, self.record(args["model_options"], x, 0))
            records = [r for r in self._records if r[0] is x]
            self._records.clear()
        _, saliency, (frames, h, w) = records[-1]
        # ADM attention_masking: blur x0 where attention concentrates, re-noise with the model's own noise.
        mask = saliency_mask(saliency.to(x0.dtype), h, w, self.threshold, frames)
        degraded = degrade(x0, mask, self.blur_sigma)
        signal = model.model_sampling.noise_scaling(sigma, torch.zeros_like(x), torch.ones_like(x))  # x = s·x0 + σ·ε
        x_degraded = x + signal * (degraded - x0)
        # SAG eq. 25 in D-space: + s·(x̄0 − D(x̄_t)), the uncond prediction's degraded-input counterpart.
        sag = comfy.samplers.calc_cond_batch(model, [branch_cond], x_degraded, sigma, args["model_options"])[0]
        return degraded, sag


class SelfAttentionGuidanceGK(GuideKitNode):
    COST = {"extra_passes": 1, "what": "a pass on the blurred, re-noised prediction"}
    COMPARE = {"sag": {}}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitSAG", display_name=NODE, category=CATEGORY,
            description="Self-Attention Guidance: blur the predicted image where the chosen self-attention layer "
                        "concentrates, re-noise it, and guide away from the model's answer on it. Works with "
                        "batches, any aspect ratio, chunked batches, UNet and DiT models.",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to guide (a patched copy is returned; this one is unchanged)."),
                io.Float.Input("scale", default=0.5, min=0.0, max=5.0, step=0.01,
                               tooltip="SAG scale s; 0 = off. SD: 0.5-0.75 (diffusers 0.75, ComfyUI core 0.5)."),
                io.Float.Input("blur_sigma", default=2.0, min=0.01, max=10.0, step=0.01,
                               tooltip="σ of the 9×9 Gaussian that degrades the attended region "
                                       "(core: 2, diffusers: 1)."),
                io.String.Input("layer", default="default",
                                tooltip="The one self-attention layer whose map makes the mask, e.g. 'middle.0.0' "
                                        "(the default on UNets, as in the paper and core) or 'single.9' on Flux."),
                io.Float.Input("threshold", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Keys receiving more than threshold × average attention "
                                       "are blurred (paper: 1)."),
                *range_inputs(),
                *sigma_override_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model; the input model is unchanged.")],
        )

    @classmethod
    def execute(cls, model, scale, blur_sigma, layer, threshold, start_percent, end_percent,
                sigma_start=-1.0, sigma_end=-1.0) -> io.NodeOutput:
        arch = architecture(model, NODE)
        text = arch.default_sag_layer if is_default(layer) else layer
        chosen = parse_layers(text, arch, NODE, "layer")
        if len(chosen) != 1:
            raise ValueError(f"{NODE}: input 'layer' must name exactly one layer, {layer!r} names "
                             f"{len(chosen)}: {format_layers(chosen)}")
        negative = BlurredAttendedRegion(arch, chosen[0], blur_sigma, threshold)
        active = registrar.sigma_range(model, NODE, start_percent, end_percent, sigma_start, sigma_end)
        m = model.clone()
        registrar.register(m, registrar.Guidance(NODE, negative, active, lambda sigma: scale, batched=lambda x: False))
        return io.NodeOutput(m)
