"""NAG node: a negative prompt applied in attention space (Chen et al. 2025), for UNets and every DiT family.

Two routes to the negative's attention output Z⁻ at each chosen layer, both leaving the positive's image
stream the only one that matters:
- Keys in the layer, where the text enters only through cross-attention (UNets; DiTs whose family row names
  its text cross-attention, `text_cross`: Wan): the negative's keys and values are computed in the layer
  itself, from the negative prompt through that layer's own projections, and Z⁻ = attention(Q⁺, K⁻, V⁻).
  No extra rows: UNets through an attn2 patch; DiTs through the attention override, with the negative's text
  embedded once per call by the model's own embedder.
- Extra rows (joint-attention DiTs, whose text tokens share the sequence and change at every block): inside
  each model call that holds positive rows, GuideKit appends the negative's rows to that same call (every
  conditioning input copied from the positive's rows, the text from the negative), so it does not depend on
  ComfyUI batching the two prompts together (it splits them under memory pressure). At each chosen block the
  attention outputs of a positive row's and its negative row's image tokens are combined, and both rows
  continue with the result; with every block chosen (the default) the negative's rows see the positive's
  image stream at every layer (the official Flux code's shared image stream) and only their text differs.
  Their predictions are dropped.
With every block chosen the two routes compute the same Z⁻ on a cross-attention family (tested on Wan).
The UNet patch, the sampler step and the node are here; the DiT routes are in nag_keys.py and nag_rows.py.
"""
from __future__ import annotations

import comfy.conds
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy_api.latest import io

from . import registrar
from .attention_hooks import GRID, _rows, image_grid, label_blocks
from .base import GuideKitNode
from .block_hooks import layer_modules
from .common import range_inputs, sigma_override_inputs
from .layers import Architecture, Layer, architecture, is_default, parse_layers
from .nag_keys import KEYS, KeysAttention, NegativeKeys
from .nag_rows import PAIRS, DiTAttention, NegativeRows
from .nag_settings import NODE, Settings

TOKENS = "c_crossattn"


class UNetCrossAttention:
    """attn2 replace patch: NAG on the rows of positive (cond) chunks, Z⁻ from the negative's keys in this layer."""

    def __init__(self, module, negative: torch.Tensor, settings: Settings, previous):
        self.module, self.negative, self.settings, self.previous = module, negative, settings, previous
        self.moved: dict = {}

    def negative_keys(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """to_k / to_v of the negative prompt, at every call: the layer's weights may change between calls
        (LoRA strengths, hook keyframes), and ComfyUI's inference tensors keep no version counter to tell. The
        prompt itself is moved to the device once (a copy from host memory waits for the device)."""
        where = (like.device, like.dtype)
        if where not in self.moved:
            self.moved = {where: self.negative.to(like.device, like.dtype)}
        negative = self.moved[where]
        return self.module.to_k(negative), self.module.to_v(negative)

    def attention(self, q, k, v, extra_options):
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        return optimized_attention(q, k, v, extra_options["n_heads"], transformer_options=extra_options,
                                   attn_precision=extra_options.get("attn_precision"))

    def __call__(self, q, k, v, extra_options):
        out = self.attention(q, k, v, extra_options)
        sigmas = extra_options.get("sigmas")
        labels = extra_options.get("cond_or_uncond") or [0]
        if sigmas is None or 0 not in labels or not self.settings.active_at(sigmas):
            return out
        rows = _rows([j for j, c in enumerate(labels) if c == 0], q.shape[0] // len(labels), q.device)
        k_neg, v_neg = self.negative_keys(q)
        z_neg = optimized_attention(q[rows], k_neg.expand(len(rows), -1, -1), v_neg.expand(len(rows), -1, -1),
                                    extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))
        out[rows] = self.settings.combine(out[rows], z_neg)           # a fresh attention output: safe in place
        return out


class NAGStep:
    """The sampler's batch function on DiTs: while NAG is active, installs this step's route on a copy of the
    model options (the conds ComfyUI batches are left as they are)."""

    def __init__(self, arch: Architecture, layers: tuple[Layer, ...], negative: list, settings: Settings, previous,
                 share: bool = True):
        self.arch, self.layers, self.negative, self.settings, self.previous = arch, layers, negative, settings, previous
        self.share = share            # extra rows: compute what they share with the positive once (False: benchmarks)

    def negative_text(self, args: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The negative prompt's text tokens (and text mask) as the model's extra_conds make them."""
        x = args["input"]
        encoded = comfy.samplers.encode_model_conds(args["model"].extra_conds,
                                                    comfy.sampler_helpers.convert_cond(self.negative), x, x.device,
                                                    "negative")
        neg = encoded[0]["model_conds"]
        if TOKENS not in neg:
            raise ValueError(f"{NODE}: this model's conditioning has no text tokens ({sorted(neg)}); "
                             "NAG needs a text-conditioned model")
        mask = neg.get("attention_mask")
        return neg[TOKENS].cond, None if mask is None else mask.cond

    def __call__(self, args: dict) -> list[torch.Tensor]:
        conds, x = args["conds"], args["input"]
        if conds[0] is None or not self.settings.active.active(args["sigma"]):
            return registrar.run_calc(args, self.previous, conds, args["model_options"])
        tokens, mask = self.negative_text(args)
        mo = dict(args["model_options"])
        to = dict(mo.get("transformer_options", {}))
        mo["transformer_options"] = to
        to[GRID] = image_grid(self.arch, x.shape)
        previous = to.get("optimized_attention_override")
        if self.arch.text_cross is not None:
            key = f"{KEYS}_{id(self)}"
            wrapper = NegativeKeys(key, self.arch, self.layers, tokens)
            to["optimized_attention_override"] = KeysAttention(key, previous, self.settings)
        else:
            key = f"{PAIRS}_{id(self)}"
            constants = frozenset(name for entry in conds[0] for name, value in entry["model_conds"].items()
                                  if isinstance(value, comfy.conds.CONDConstant))
            wrapper = NegativeRows(key, tokens, mask, constants, self.share)
            to["optimized_attention_override"] = DiTAttention(key, self.layers, previous, self.arch, self.settings,
                                                              self.share)
        wrappers = {kind: dict(by_key) for kind, by_key in to.get("wrappers", {}).items()}
        wrappers.setdefault(comfy.patcher_extension.WrappersMP.APPLY_MODEL, {})[key] = [wrapper]
        to["wrappers"] = wrappers
        label_blocks(to, self.arch, self.layers)
        return registrar.run_calc(args, self.previous, conds, mo)


def patch(model, negative: list, scale: float, tau: float, alpha: float, layers: str, start_percent: float,
          end_percent: float, sigma_start: float = -1.0, sigma_end: float = -1.0):
    """The node's whole execute: a clone with NAG on `layers` (all cross/joint-attention blocks by default)."""
    arch = architecture(model, NODE)
    chosen = parse_layers("all" if is_default(layers) else layers, arch, NODE)
    settings = Settings(scale, tau, alpha, registrar.sigma_range(model, NODE, start_percent, end_percent,
                                                                 sigma_start, sigma_end))
    m = model.clone()
    if arch.family == "unet":
        tokens = negative[0][0]
        modules = layer_modules(model.get_model_object("diffusion_model"), arch)
        for layer in chosen:
            attn2 = getattr(modules[layer], "attn2", None)
            if attn2 is None:
                continue
            previous = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
            m.set_model_attn2_replace(UNetCrossAttention(attn2, tokens, settings, previous.get(layer)), *layer)
    else:
        previous = m.model_options.get("sampler_calc_cond_batch_function")
        step = NAGStep(arch, tuple(chosen), negative, settings, previous)
        m.set_model_sampler_calc_cond_batch_function(lambda args: step(args))
    return m


class NormalizedAttentionGuidanceGK(GuideKitNode):
    COST = {"extra_passes": 1, "what": "joint-attention DiTs: the negative prompt's rows (their image stream is the "
                                      "positive's); UNets and Wan: only the negative's keys and values in each "
                                      "cross-attention, no rows"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitNAG", display_name=NODE, category="GuideKit/attention",
            description="Normalized Attention Guidance: a negative prompt applied inside attention (extrapolate the "
                        "attention output away from the negative's, cap its L1 norm, blend), so negative prompts work "
                        "on distilled / few-step models at cfg 1. UNets and every DiT family the attention nodes "
                        "support.",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to guide (a patched copy is returned; this one is unchanged)."),
                io.Conditioning.Input("negative",
                                      tooltip="The negative prompt for NAG (the same as CFG's, or another one). "
                                              "Only its text tokens are used."),
                io.Float.Input("scale", default=5.0, min=1.0, max=50.0, step=0.01,
                               tooltip="NAG scale s: Z̃ = s·Z⁺ − (s − 1)·Z⁻ (1 = off). Official workflows: 5 (Flux, "
                                       "SD1.5, SD3.5), 6-11 (Wan), 3 (SDXL DMD2), 9 (HunyuanVideo)."),
                io.Float.Input("tau", default=2.5, min=1.0, max=20.0, step=0.01,
                               tooltip="Cap on the guided output's L1 norm relative to the positive's. Official: "
                                       "2.5; 3.5 for 4-step Wan."),
                io.Float.Input("alpha", default=0.25, min=0.0, max=1.0, step=0.01,
                               tooltip="Blend of the normalized guided output into the positive's (0 = off). "
                                       "Official: 0.25 (Flux, Wan, SD3.5), 0.38-0.5 (SD1.5, SDXL), 0.5 (4-step Wan)."),
                io.String.Input("layers", default="all",
                                tooltip="Blocks where NAG acts, in the layer syntax of PAG; 'all' = every block "
                                        "(the official choice)."),
                *range_inputs(),
                *sigma_override_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model; the input model is unchanged.")],
        )

    @classmethod
    def execute(cls, model, negative, scale, tau, alpha, layers, start_percent, end_percent, sigma_start=-1.0,
                sigma_end=-1.0) -> io.NodeOutput:
        if not negative:
            raise ValueError(f"{NODE}: input 'negative' is empty; connect a CLIP Text Encode with the negative prompt")
        return io.NodeOutput(patch(model, negative, scale, tau, alpha, layers, start_percent, end_percent,
                                   sigma_start, sigma_end))
