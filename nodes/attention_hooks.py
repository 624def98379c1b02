"""The shared host adapter: perturb chosen self-attention layers on chosen batch rows of a model call.

A perturbation sees (B, heads, L, d) queries, keys and values plus the image-token grid (frames, h, w) (image
tokens are the last frames·h·w of L: families that put them first, pad them (Z-Image) or follow them with
reference-image tokens (Flux Kontext, Qwen-Image Edit) are reordered for it and back) and returns
the attention output, or new (q, k, v) for the host's own attention to run on (so masks, precision and fast
kernels stay the host's), or None to leave the rows be. On DiTs only self-attention is perturbed: calls whose
keys are as many as the queries and hold the image grid (cross-attention to text or reference images is not).

Hooks are installed per call on a *copy* of model_options (never on the patched model), with the rows to
perturb named in transformer_options[MARK] = {cond index: branch token}; ComfyUI labels each chunk of a
batched call with its cond index (transformer_options["cond_or_uncond"]), so batching, memory chunking
and batch sizes > 1 all work. Whatever sat in a slot before (a core patch, another GuideKit node) keeps
running on every other row: UNet attn1 replace patches and the DiT attention override both chain.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import optimized_attention

from ..guidance.blur import token_grid
from . import compat
from .layers import Architecture, Layer

MARK = "guidekit_rows"
GRID = "guidekit_grid"
IMAGE_TAIL = "guidekit_image_tail"           # reference-image tokens after the image (Flux Kontext, Qwen Edit)

Grid = tuple[int, int, int]          # image tokens as (frames, height, width); images have 1 frame
Perturbation = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Grid],
                        "torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None"]


def install(model_options: dict, arch: Architecture, layers: Iterable[Layer], token: object,
            perturb: Perturbation, rows: Iterable[int], grid: Grid) -> dict:
    """A copy of model_options whose `layers` run `perturb` on the chunks of cond indices `rows`."""
    mo = dict(model_options)
    to = dict(mo.get("transformer_options", {}))
    mo["transformer_options"] = to
    to[MARK] = {**to.get(MARK, {}), **{row: token for row in rows}}
    replace = dict(to.get("patches_replace", {}))
    to["patches_replace"] = replace
    if arch.family == "unet":
        attn1 = dict(replace.get("attn1", {}))
        for layer in layers:
            attn1[layer] = UNetSelfAttention(token, perturb, attn1.get(layer) or attn1.get(layer[:2]))
        replace["attn1"] = attn1
        return mo
    to[GRID] = grid
    to["optimized_attention_override"] = DiTSelfAttention(token, perturb, layers,
                                                          to.get("optimized_attention_override"), arch)
    label_blocks(to, arch, layers)
    return mo


def label_blocks(to: dict, arch: Architecture, layers: Iterable[Layer]) -> None:
    """Make the chosen DiT blocks known to the attention override of a call (transformer_options `to`, a copy)."""
    replace = to["patches_replace"] = dict(to.get("patches_replace", {}))
    if arch.dit_keys:               # families whose blocks are not named to the attention call: label them
        dit, keys = dict(replace.get("dit", {})), dict(arch.dit_keys)
        for layer in layers:
            key = (keys[layer[0]], layer[1])
            dit[key] = BlockLabel(layer, dit.get(key))
        replace["dit"] = dit
    if arch.wrapped or arch.refs_after is not None:     # blocks to name, reference tokens to count: per call
        wrappers = {kind: dict(by_key) for kind, by_key in to.get("wrappers", {}).items()}
        apply_model = wrappers.setdefault(comfy.patcher_extension.WrappersMP.APPLY_MODEL, {})
        apply_model.setdefault(CallContext.KEY, [CallContext(arch)])
        to["wrappers"] = wrappers


def image_grid(arch: Architecture, latent_shape: torch.Size) -> Grid:
    """Token grid of a DiT for a latent (B, C, H, W) or video latent (B, C, T, H, W), padded to whole patches."""
    pt, ph, pw = arch.patch
    frames = -(-latent_shape[-3] // pt) if len(latent_shape) == 5 else 1
    return frames, -(-latent_shape[-2] // ph), -(-latent_shape[-1] // pw)


def image_start(length: int, n_image: int, first: bool, pad_multiple: int = 0, tail: int = 0) -> int:
    """Where the n_image image tokens start in a self-attention sequence of `length` tokens: at 0, or at the
    end before the padding that rounds them up to a multiple of `pad_multiple` and `tail` reference tokens."""
    if first:
        return 0
    return length - n_image - ((-n_image) % pad_multiple if pad_multiple > 1 else 0) - tail


def _image_last(tensors, start: int, n_image: int):
    """q, k, v with the image tokens [start, start + n_image) moved last (the tensors themselves when they are)."""
    if start + n_image == tensors[0].shape[2]:
        return tensors
    return [torch.cat([t[:, :, :start], t[:, :, start + n_image:], t[:, :, start:start + n_image]], dim=2)
            for t in tensors]


def _image_back(out: torch.Tensor, start: int, n_image: int) -> torch.Tensor:
    """Undo _image_last on a (B, heads, L, d) output."""
    if start + n_image == out.shape[2]:
        return out
    rest, image = out[:, :, :-n_image], out[:, :, -n_image:]
    return torch.cat([rest[:, :, :start], image, rest[:, :, start:]], dim=2)


def _marked_chunks(transformer_options: dict, token: object) -> tuple[list[int], list[int]]:
    """(chunks to perturb, other chunks) of a batched call, by ComfyUI's cond_or_uncond labels."""
    labels = transformer_options.get("cond_or_uncond") or [0]
    marks = transformer_options.get(MARK) or {}
    mine = [j for j, c in enumerate(labels) if marks.get(c) is token]
    return mine, [j for j in range(len(labels)) if j not in mine]


def _rows(chunks: list[int], per_chunk: int, device) -> torch.Tensor:
    return torch.cat([torch.arange(j * per_chunk, (j + 1) * per_chunk, device=device) for j in chunks])


def _restricted(transformer_options: dict, chunks: list[int]) -> dict:
    """transformer_options as the host would give a call holding only `chunks`."""
    out = dict(transformer_options)
    for key in ("cond_or_uncond", "uuids"):
        if isinstance(out.get(key), list) and len(out[key]) > max(chunks):
            out[key] = [out[key][j] for j in chunks]
    return out


def _heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads·d) or (B, L, heads, d) host layout → (B, heads, L, d)."""
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def _replaced(tensors, rows, new, heads_first: bool):
    """Full-batch copies of q, k, v with `rows` replaced by the perturbation's, in each one's host layout."""
    out = []
    for full, part in zip(tensors, new):
        full = full.clone()
        if not heads_first:
            part = part.transpose(1, 2).reshape(part.shape[0], *full.shape[1:])
        full[rows] = part.to(full.dtype)
        out.append(full)
    return out


def _merge(total: int, mine_rows, mine_out, other_rows, other_out) -> torch.Tensor:
    out = mine_out.new_empty((total, *mine_out.shape[1:]))
    out[mine_rows] = mine_out
    out[other_rows] = other_out.to(mine_out.dtype)
    return out


class UNetSelfAttention:
    """attn1 replace patch: `perturb` on marked rows, the previous patch (or plain attention) on the rest."""

    def __init__(self, token: object, perturb: Perturbation, previous: Callable | None):
        self.token, self.perturb, self.previous = token, perturb, previous

    def default(self, q, k, v, extra_options):
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        return optimized_attention(q, k, v, extra_options["n_heads"],
                                   attn_precision=extra_options.get("attn_precision"),
                                   transformer_options=extra_options)

    def __call__(self, q, k, v, extra_options):
        mine, other = _marked_chunks(extra_options, self.token)
        if not mine:
            return self.default(q, k, v, extra_options)
        heads, per_chunk = extra_options["n_heads"], q.shape[0] // (len(mine) + len(other))
        rows = _rows(mine, per_chunk, q.device)
        shape = extra_options["original_shape"]
        grid = (1, *token_grid(q.shape[1], shape[-2], shape[-1]))
        split = [_heads_first(t[rows], heads) for t in (q, k, v)]
        out = self.perturb(*split, grid)
        if out is None:
            return self.default(q, k, v, extra_options)
        if isinstance(out, tuple):
            return self.default(*_replaced((q, k, v), rows, out, False), extra_options)
        out = out.transpose(1, 2).flatten(2)
        if not other:
            return out
        other_rows = _rows(other, per_chunk, q.device)
        rest = self.default(q[other_rows], k[other_rows], v[other_rows], _restricted(extra_options, other))
        return _merge(q.shape[0], rows, out, other_rows, rest)


class DiTSelfAttention:
    """optimized_attention_override: `perturb` on marked rows of the chosen blocks; all else unchanged. `arch`
    says where the family's image tokens sit in the sequence."""

    def __init__(self, token: object, perturb: Perturbation, layers: Iterable[Layer], previous: Callable | None,
                 arch: Architecture):
        self.token, self.perturb, self.layers, self.previous = token, perturb, frozenset(layers), previous
        self.arch = arch

    def default(self, func, *args, **kwargs):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        if (to.get("block_type"), to.get("block_index")) not in self.layers:
            return self.default(func, *args, **kwargs)
        mine, other = _marked_chunks(to, self.token)
        if not mine:
            return self.default(func, *args, **kwargs)
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        skip_reshape = kwargs.get("skip_reshape", False)
        args, kwargs = compat.ungrouped_keys(args, kwargs, heads)
        q, k, v = args[:3]
        seq = 2 if skip_reshape else 1
        grid = to[GRID]
        n_image = grid[0] * grid[1] * grid[2]
        if q.shape[seq] != k.shape[seq] or q.shape[seq] < n_image:       # cross-attention: text, references
            return self.default(func, *args, **kwargs)
        per_chunk = q.shape[0] // (len(mine) + len(other))
        rows = _rows(mine, per_chunk, q.device)
        if skip_reshape:
            split = [t[rows] for t in (q, k, v)]
        else:
            split = [_heads_first(t[rows], heads) for t in (q, k, v)]
        start = image_start(q.shape[seq], n_image, self.arch.image_first, self.arch.image_pad, to.get(IMAGE_TAIL, 0))
        out = self.perturb(*_image_last(split, start, n_image), grid)
        if out is None:
            return self.default(func, *args, **kwargs)
        if isinstance(out, tuple):
            out = [_image_back(t, start, n_image) for t in out]
            return self.default(func, *_replaced((q, k, v), rows, out, skip_reshape), *args[3:], **kwargs)
        out = _image_back(out, start, n_image)
        if kwargs.get("mask") is not None and not _masks_nothing(kwargs["mask"]):
            raise NotImplementedError("GuideKit: this perturbation does not support attention masks (masked "
                                      "text conditioning); remove the mask or use SEG, which keeps the host's "
                                      "attention")
        if not kwargs.get("skip_output_reshape", False):
            out = out.transpose(1, 2).flatten(2)
        if not other:
            return out
        other_rows = _rows(other, per_chunk, q.device)
        rest_kwargs = dict(kwargs, transformer_options=_restricted(to, other))
        mask = kwargs.get("mask")
        if isinstance(mask, torch.Tensor) and mask.ndim >= 3 and mask.shape[0] == q.shape[0]:
            rest_kwargs["mask"] = mask[other_rows]
        rest = self.default(func, q[other_rows], k[other_rows], v[other_rows], *args[3:], **rest_kwargs)
        return _merge(q.shape[0], rows, out, other_rows, rest)


def _masks_nothing(mask: torch.Tensor) -> bool:
    """A boolean mask all True or an additive one all zero (Lens passes one even when no text is padded)."""
    return bool(mask.all()) if mask.dtype == torch.bool else not bool(mask.any())


class BlockLabel:
    """A dit replace patch that only tells the attention override which block is running."""

    def __init__(self, layer: Layer, previous: Callable | None):
        self.layer, self.previous = layer, previous

    def __call__(self, args: dict, extra: dict) -> dict:
        to = dict(args.get("transformer_options") or {}, block_type=self.layer[0], block_index=self.layer[1])
        args = dict(args, transformer_options=to)
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)


class CallContext:
    """APPLY_MODEL wrapper: what the hooks learn from one model call itself. Reference latents (Flux Kontext,
    Qwen-Image Edit) become tokens after the image: their count goes to transformer_options[IMAGE_TAIL]. For
    families whose blocks ComfyUI neither names to the attention call nor lets a dit patch replace, each
    block's forward is wrapped for the length of the call (an instance attribute, removed afterwards,
    whatever happens) so that it passes its (place, index) in transformer_options."""
    KEY = "guidekit_call_context"

    def __init__(self, arch: Architecture):
        self.arch = arch

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        to = dict(transformer_options or {})
        dm = executor.class_obj.diffusion_model
        refs = kwargs.get("ref_latents") or ()
        if self.arch.refs_after is not None and refs and self.arch.refs_after(dm, kwargs):
            to[IMAGE_TAIL] = sum(math.prod(image_grid(self.arch, ref.shape[:2] + ref.shape[-2:])) for ref in refs)
        wrapped = []
        try:
            for place, attr in self.arch.wrapped:
                for index, block in enumerate(getattr(dm, attr)):
                    before = block.__dict__.get("forward")
                    block.forward = _labelled_forward(block, (place, index), before)
                    wrapped.append((block, before))
            return executor(x, t, c_concat, c_crossattn, control, to, **kwargs)
        finally:
            for block, before in wrapped:
                if before is None:
                    del block.forward
                else:
                    block.forward = before


def _labelled_forward(block, layer: Layer, before: Callable | None) -> Callable:
    forward = before or type(block).forward.__get__(block)

    def labelled(*args, **kwargs):
        kwargs["transformer_options"] = dict(kwargs.get("transformer_options") or {}, block_type=layer[0],
                                             block_index=layer[1])
        return forward(*args, **kwargs)
    return labelled
