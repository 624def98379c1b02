"""NAG node: a negative prompt applied in attention space (Chen et al. 2025), for UNets and every DiT family.

Two routes to the negative's attention output Z⁻ at each chosen layer, both leaving the positive's image
stream the only one that matters:
- UNets (cross-attention to the text): the negative's keys and values are computed in the layer itself, from
  the negative prompt through that layer's own projections (an attn2 patch on the clone; no extra rows).
- DiTs: the negative prompt runs as extra rows of the sampler's model call, with every other conditioning
  input (pooled vector, guidance, references) taken from the positive; at each chosen block the attention
  outputs of the positive's and the negative's image tokens are combined, and both rows continue with the
  result, so the negative's rows see the positive's image stream at every layer (the official Flux code's
  shared image stream) and only their text differs. Its prediction is dropped.
"""
from __future__ import annotations

from collections.abc import Iterable

import comfy.sampler_helpers
import comfy.samplers
import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy_api.latest import io

from ..guidance.nag import nag
from ..guidance.schedule import SigmaRange
from . import registrar
from .attention_hooks import (
    GRID,
    IMAGE_TAIL,
    MARK,
    _heads_first,
    _marked_chunks,
    _rows,
    image_grid,
    image_start,
    label_blocks,
)
from .base import GuideKitNode
from .block_hooks import layer_modules
from .common import range_inputs, sigma_override_inputs
from .layers import Architecture, Layer, architecture, parse_layers

NODE = "GuideKit NAG"
TOKENS = "c_crossattn"


class Settings:
    def __init__(self, scale: float, tau: float, alpha: float, active: SigmaRange):
        self.scale, self.tau, self.alpha, self.active = scale, tau, alpha, active

    def combine(self, z_pos: torch.Tensor, z_neg: torch.Tensor) -> torch.Tensor:
        return nag(z_pos.float(), z_neg.float(), self.scale, self.tau, self.alpha).to(z_pos.dtype)


class UNetCrossAttention:
    """attn2 replace patch: NAG on the rows of positive (cond) chunks, Z⁻ from the negative's keys in this layer."""

    def __init__(self, module, negative: torch.Tensor, settings: Settings, previous):
        self.module, self.negative, self.settings, self.previous = module, negative, settings, previous

    def negative_keys(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """to_k / to_v of the negative prompt, at every call: the layer's weights may change between calls
        (LoRA strengths, hook keyframes), and ComfyUI's inference tensors keep no version counter to tell."""
        negative = self.negative.to(like.device, like.dtype)
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
        if sigmas is None or not self.settings.active.active(sigmas) or 0 not in labels:
            return out
        rows = _rows([j for j, c in enumerate(labels) if c == 0], q.shape[0] // len(labels), q.device)
        k_neg, v_neg = self.negative_keys(q)
        z_neg = optimized_attention(q[rows], k_neg.expand(len(rows), -1, -1), v_neg.expand(len(rows), -1, -1),
                                    extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))
        out[rows] = self.settings.combine(out[rows], z_neg)           # a fresh attention output: safe in place
        return out


class DiTAttention:
    """optimized_attention_override: in the chosen blocks, the positive's and the negative's image-token outputs
    become NAG's combination on both rows (text and other tokens keep their own)."""

    def __init__(self, token: object, layers: Iterable[Layer], previous, arch: Architecture, settings: Settings):
        self.token, self.layers, self.previous = token, frozenset(layers), previous
        self.arch, self.settings = arch, settings

    def __call__(self, func, *args, **kwargs):
        out = self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)
        to = kwargs.get("transformer_options") or {}
        if (to.get("block_type"), to.get("block_index")) not in self.layers:
            return out
        labels = to.get("cond_or_uncond") or [0]
        negative, _ = _marked_chunks(to, self.token)
        positive = [j for j, c in enumerate(labels) if c == 0]
        if not negative:
            return out
        if len(positive) != len(negative):
            raise ValueError(f"{NODE}: ComfyUI ran the positive prompt and NAG's negative in separate model calls "
                             "(it splits a batch when it estimates too little free memory for it, or when the two "
                             "prompts' token counts are more than 4× apart), and on this model NAG needs them in one "
                             "call; lower the resolution or the batch size, or bring the negative prompt's length "
                             "closer to the positive's")
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        seq = 2 if kwargs.get("skip_reshape", False) else 1
        n_image = to[GRID][0] * to[GRID][1] * to[GRID][2]
        q_len, k_len = q.shape[seq], k.shape[seq]
        if q_len == k_len == n_image:
            return out                    # image-only self-attention: the same on both rows, nothing to guide
        start = 0 if q_len != k_len else image_start(q_len, n_image, self.arch.image_first, self.arch.image_pad,
                                                     to.get(IMAGE_TAIL, 0))
        count = q_len if q_len != k_len else n_image          # cross-attention: every query is an image token
        heads_first = kwargs.get("skip_output_reshape", False)
        tokens = out.transpose(1, 2).flatten(2) if heads_first else out          # (B, L, heads·d)
        per_chunk = q.shape[0] // len(labels)
        tokens = tokens.clone()
        for p, n in zip(positive, negative):
            pos = slice(p * per_chunk, (p + 1) * per_chunk)
            neg = slice(n * per_chunk, (n + 1) * per_chunk)
            z = self.settings.combine(tokens[pos, start:start + count], tokens[neg, start:start + count])
            tokens[pos, start:start + count] = z
            tokens[neg, start:start + count] = z
        return _heads_first(tokens, heads) if heads_first else tokens


class NegativeRows:
    """The sampler's batch function on DiTs: adds the negative prompt's rows while NAG is active."""

    def __init__(self, arch: Architecture, layers, negative: list, settings: Settings, previous):
        self.arch, self.layers, self.negative, self.settings, self.previous = arch, layers, negative, settings, previous
        self.token = object()

    def conds(self, args: dict) -> list:
        """The positive's entries with their text tokens (and text mask) taken from the negative prompt."""
        x = args["input"]
        encoded = comfy.samplers.encode_model_conds(args["model"].extra_conds,
                                                    comfy.sampler_helpers.convert_cond(self.negative), x, x.device,
                                                    "negative")
        neg = encoded[0]["model_conds"]
        out = []
        for entry in args["conds"][0]:
            model_conds = dict(entry["model_conds"])
            if TOKENS not in model_conds or TOKENS not in neg:
                raise ValueError(f"{NODE}: this model's conditioning has no text tokens ({sorted(model_conds)}); "
                                 "NAG needs a text-conditioned model")
            for key in (TOKENS, "attention_mask"):
                if key in neg:
                    model_conds[key] = neg[key]
            out.append(dict(entry, model_conds=model_conds))
        return out

    def __call__(self, args: dict) -> list[torch.Tensor]:
        conds, x = args["conds"], args["input"]
        if conds[0] is None or not self.settings.active.active(args["sigma"]):
            return registrar.run_calc(args, self.previous, conds, args["model_options"])
        row = len(conds)
        mo = dict(args["model_options"])
        to = dict(mo.get("transformer_options", {}))
        mo["transformer_options"] = to
        to[MARK] = {**to.get(MARK, {}), row: self.token}
        to[GRID] = image_grid(self.arch, x.shape)
        to["optimized_attention_override"] = DiTAttention(self.token, self.layers,
                                                          to.get("optimized_attention_override"), self.arch,
                                                          self.settings)
        label_blocks(to, self.arch, self.layers)
        return registrar.run_calc(args, self.previous, [*conds, self.conds(args)], mo)[:-1]


def patch(model, negative: list, scale: float, tau: float, alpha: float, layers: str, start_percent: float,
          end_percent: float, sigma_start: float = -1.0, sigma_end: float = -1.0):
    """The node's whole execute: a clone with NAG on `layers` (all cross/joint-attention blocks by default)."""
    arch = architecture(model, NODE)
    chosen = parse_layers("all" if layers.strip().lower() in ("", "default") else layers, arch, NODE)
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
        rows = NegativeRows(arch, tuple(chosen), negative, settings, previous)
        m.set_model_sampler_calc_cond_batch_function(lambda args: rows(args))
    return m


class NormalizedAttentionGuidanceGK(GuideKitNode):
    COST = {"extra_passes": 1, "what": "DiTs: the negative prompt's rows (their image stream is the positive's); "
                                      "UNets: only the negative's keys and values in each cross-attention"}

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
