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
"""
from __future__ import annotations

from collections.abc import Iterable

import comfy.conds
import comfy.patcher_extension
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
    _heads_first,
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


PAIRS = "guidekit_nag_pairs"          # + node id, in transformer_options: ((positive chunk, its negative chunk), …)
KEYS = "guidekit_nag_keys"            # + node id, in transformer_options: the call's negative keys (NegativeKeys)
NEGATIVES = "guidekit_nag_negatives"  # transformer_options: chunks that are some NAG node's negative (not guided)


def _positive(to: dict) -> list[int]:
    """The chunks NAG guides: the positive's (label 0), not another NAG node's negative chunks."""
    negatives = to.get(NEGATIVES, ())
    return [j for j, c in enumerate(to.get("cond_or_uncond") or [0]) if c == 0 and j not in negatives]


def _tokens(out: torch.Tensor, heads_first: bool) -> torch.Tensor:
    """An attention output as (B, L, heads·d) tokens (a copy: safe to write)."""
    return out.transpose(1, 2).flatten(2) if heads_first else out.clone()


def _host_layout(tokens: torch.Tensor, heads: int, heads_first: bool) -> torch.Tensor:
    """(B, L, heads·d) tokens back in the layout the host's attention call returns."""
    return _heads_first(tokens, heads) if heads_first else tokens


class DiTAttention:
    """optimized_attention_override of the extra-row route: in the chosen blocks, the image-token outputs of
    each positive chunk and its negative chunk become NAG's combination on both (text tokens keep their own)."""

    def __init__(self, key: str, layers: Iterable[Layer], previous, arch: Architecture, settings: Settings):
        self.key, self.layers, self.previous = key, frozenset(layers), previous
        self.arch, self.settings = arch, settings

    def __call__(self, func, *args, **kwargs):
        out = self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)
        to = kwargs.get("transformer_options") or {}
        pairs = to.get(self.key)
        if not pairs or (to.get("block_type"), to.get("block_index")) not in self.layers:
            return out
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
        tokens = _tokens(out, heads_first)
        per_chunk = q.shape[0] // len(to.get("cond_or_uncond") or [0])
        for p, n in pairs:
            pos = slice(p * per_chunk, (p + 1) * per_chunk)
            neg = slice(n * per_chunk, (n + 1) * per_chunk)
            z = self.settings.combine(tokens[pos, start:start + count], tokens[neg, start:start + count])
            tokens[pos, start:start + count] = z
            tokens[neg, start:start + count] = z
        return _host_layout(tokens, heads, heads_first)


def _with_rows(value, rows: torch.Tensor, batch: int):
    """`value` with `rows` of every tensor whose first axis is the call's batch appended (lists, dicts too)."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value, value[rows.to(value.device)]]) if value.ndim and value.shape[0] == batch else value
    if isinstance(value, (list, tuple)):
        return type(value)(_with_rows(v, rows, batch) for v in value)
    if isinstance(value, dict):
        return {key: _with_rows(v, rows, batch) for key, v in value.items()}
    return value


def _join_text(tokens: torch.Tensor, mask: torch.Tensor | None, neg_tokens: torch.Tensor,
               neg_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The call's text tokens with the negative's rows appended. Unmasked: the shorter repeated to the
    common multiple of the lengths (ComfyUI's own padding; attention over repeated keys is unchanged); masked:
    the shorter zero-padded and masked out."""
    if mask is None and neg_mask is None:
        both = comfy.conds.CONDCrossAttn(tokens).concat([comfy.conds.CONDCrossAttn(neg_tokens)])
        return both, None
    mask = mask if mask is not None else torch.ones(tokens.shape[:2], dtype=neg_mask.dtype, device=tokens.device)
    neg_mask = neg_mask if neg_mask is not None else torch.ones(neg_tokens.shape[:2], dtype=mask.dtype,
                                                                device=tokens.device)
    if mask.ndim != 2 or neg_mask.ndim != 2:
        raise ValueError(f"{NODE}: this model's text attention mask has shape {tuple(mask.shape)}, not (batch, "
                         "tokens); NAG cannot add the negative's rows to it. Use a negative prompt of the "
                         "positive's token length")
    length = max(tokens.shape[1], neg_tokens.shape[1])

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1])) if t.ndim == 3 else \
            torch.nn.functional.pad(t, (0, length - t.shape[1]))
    return torch.cat([pad(tokens), pad(neg_tokens)]), torch.cat([pad(mask), pad(neg_mask.to(mask.dtype))])


class NegativeRows:
    """APPLY_MODEL wrapper of the extra-row route: every model call that holds positive chunks gets, in the same
    call, a negative chunk for each (the positive's rows and inputs, the negative's text); their outputs are
    dropped. So the negative's rows run beside their positive's however ComfyUI batches the conds."""
    def __init__(self, key: str, tokens: torch.Tensor, mask: torch.Tensor | None, constants: frozenset[str]):
        self.key, self.tokens, self.mask, self.constants = key, tokens, mask, constants

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        to = dict(transformer_options or {})
        labels = list(to.get("cond_or_uncond") or [0])
        positive = _positive(to)
        if not positive or c_crossattn is None:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        batch = x.shape[0]
        rows = _rows(positive, batch // len(labels), x.device)
        neg = self.tokens.to(c_crossattn.device, c_crossattn.dtype).expand(len(rows), -1, -1)
        neg_mask = None if self.mask is None else self.mask.to(c_crossattn.device).expand(len(rows), -1)
        c_crossattn, mask = _join_text(c_crossattn, kwargs.get("attention_mask"), neg, neg_mask)
        kwargs = {key: value if key in self.constants else _with_rows(value, rows, batch)
                  for key, value in kwargs.items()}
        if mask is not None:
            kwargs["attention_mask"] = mask
        for key in ("cond_or_uncond", "uuids"):
            if isinstance(to.get(key), list) and len(to[key]) == len(labels):
                to[key] = to[key] + [to[key][j] for j in positive]
        if isinstance(to.get("sigmas"), torch.Tensor):
            to["sigmas"] = _with_rows(to["sigmas"], rows, batch)
        to[self.key] = tuple(zip(positive, range(len(labels), len(labels) + len(positive))))
        to[NEGATIVES] = frozenset(to.get(NEGATIVES, ())) | {n for _, n in to[self.key]}
        out = executor(_with_rows(x, rows, batch), _with_rows(t, rows, batch), _with_rows(c_concat, rows, batch),
                       c_crossattn, _with_rows(control, rows, batch), to, **kwargs)
        return out[:batch]


def _chain(module: torch.nn.Module, names: tuple[str, ...]) -> list[torch.nn.Module]:
    """The submodules a family row names (e.g. a cross-attention's key projection and its norm), in order."""
    return [getattr(module, name) for name in names]


def _apply(modules: list[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """x through `modules` one after another."""
    for module in modules:
        x = module(x)
    return x


class CallKeys:
    """One model call's negative keys and values per chosen layer, and the positive's text keys of that call
    (to tell the text cross-attention call from the others: image cross-attention, self-attention)."""

    def __init__(self, tokens: torch.Tensor, cross, embedder: torch.nn.Module, modules: dict):
        self.tokens, self.cross, self.embedder, self.modules = tokens, cross, embedder, modules
        self.negative: dict = {}                  # layer → (K⁻, V⁻)
        self.positive: dict = {}                  # layer → the positive's key tensor of this call
        self.busy = False

    def embedded(self, module, inputs, output) -> None:
        """Forward hook on the text embedder: embed the negative's text alike and make its keys per layer."""
        if self.busy:
            return
        self.busy = True
        try:
            like = inputs[0]
            context = self.embedder(self.tokens.to(like.device, like.dtype))
            self.negative = {layer: (_apply(_chain(m, self.cross.key), context), _apply(_chain(m, self.cross.value),
                                                                                      context))
                             for layer, m in self.modules.items()}
        finally:
            self.busy = False

    def capture(self, layer: Layer):
        """Forward hook on a layer's last key module: remembers the positive's text keys of this call."""
        def hook(module, inputs, output) -> None:
            if not self.busy:
                self.positive[layer] = output
        return hook


class NegativeKeys:
    """APPLY_MODEL wrapper of the keys-in-the-layer route on DiTs: hooks, for this call only, the text embedder
    (to embed the negative's text) and each chosen layer's last key module (to know its text keys)."""
    def __init__(self, key: str, arch: Architecture, layers: tuple[Layer, ...], tokens: torch.Tensor):
        self.key, self.arch, self.layers, self.tokens = key, arch, layers, tokens

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        cross = self.arch.text_cross
        dm = executor.class_obj.diffusion_model
        blocks = layer_modules(dm, self.arch)
        modules = {layer: getattr(blocks[layer], cross.attention) for layer in self.layers}
        call = CallKeys(self.tokens, cross, getattr(dm, cross.embedder), modules)
        handles = [call.embedder.register_forward_hook(call.embedded)]
        try:
            handles += [_chain(m, cross.key)[-1].register_forward_hook(call.capture(layer))
                        for layer, m in modules.items()]
            to = dict(transformer_options or {}, **{self.key: call})
            return executor(x, t, c_concat, c_crossattn, control, to, **kwargs)
        finally:
            for handle in handles:
                handle.remove()


class KeysAttention:
    """optimized_attention_override of the keys-in-the-layer route: on a chosen layer's text cross-attention,
    the positive chunks' outputs become NAG(Z⁺, attention(Q⁺, K⁻, V⁻))."""

    def __init__(self, key: str, previous, settings: Settings):
        self.key, self.previous, self.settings = key, previous, settings

    def __call__(self, func, *args, **kwargs):
        out = self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)
        to = kwargs.get("transformer_options") or {}
        call = to.get(self.key)
        layer = (to.get("block_type"), to.get("block_index"))
        if call is None or layer not in call.negative or args[1] is not call.positive.get(layer):
            return out
        labels = to.get("cond_or_uncond") or [0]
        positive = _positive(to)
        if not positive:
            return out
        q = args[0]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        rows = _rows(positive, q.shape[0] // len(labels), q.device)
        k_neg, v_neg = (t.to(q.dtype).expand(len(rows), -1, -1) for t in call.negative[layer])
        if kwargs.get("skip_reshape", False):
            k_neg, v_neg = _heads_first(k_neg, heads), _heads_first(v_neg, heads)
        rest = dict(kwargs, mask=None)
        z_neg = func(q[rows], k_neg, v_neg, *args[3:], **rest)
        heads_first = kwargs.get("skip_output_reshape", False)
        tokens = _tokens(out, heads_first)
        tokens[rows] = self.settings.combine(tokens[rows], _tokens(z_neg, heads_first))
        return _host_layout(tokens, heads, heads_first)


class NAGStep:
    """The sampler's batch function on DiTs: while NAG is active, installs this step's route on a copy of the
    model options (the conds ComfyUI batches are left as they are)."""

    def __init__(self, arch: Architecture, layers: tuple[Layer, ...], negative: list, settings: Settings, previous):
        self.arch, self.layers, self.negative, self.settings, self.previous = arch, layers, negative, settings, previous

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
            wrapper = NegativeRows(key, tokens, mask, constants)
            to["optimized_attention_override"] = DiTAttention(key, self.layers, previous, self.arch, self.settings)
        wrappers = {kind: dict(by_key) for kind, by_key in to.get("wrappers", {}).items()}
        wrappers.setdefault(comfy.patcher_extension.WrappersMP.APPLY_MODEL, {})[key] = [wrapper]
        to["wrappers"] = wrappers
        label_blocks(to, self.arch, self.layers)
        return registrar.run_calc(args, self.previous, conds, mo)


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
