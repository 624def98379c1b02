"""NAG's extra-rows route (joint-attention DiTs), out of nag.py: the negative's rows added to each call."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable

import comfy.conds
import torch

from .attention_hooks import GRID, IMAGE_TAIL, _heads_first, _rows, image_start
from .layers import Architecture, Layer
from .nag_settings import NODE, Settings
from .nag_shared import SharedTokens, split_joint_attention

PAIRS = "guidekit_nag_pairs"          # + node id, in transformer_options: ((positive chunk, its negative chunk), …)
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
    each positive chunk and its negative chunk become NAG's combination on both (text tokens keep their own).
    Image-only self-attention (cross-attention families, image refiners) is attended once where the two rows'
    inputs are equal; joint attention attends over the shared image keys once (split_joint_attention) unless
    another attention patch comes after this one (it sees every row then)."""

    def __init__(self, key: str, layers: Iterable[Layer], previous, arch: Architecture, settings: Settings,
                 share: bool = True):
        self.key, self.layers, self.previous = key, frozenset(layers), previous
        self.arch, self.settings, self.share = arch, settings, share

    def attend(self, func, args: tuple, kwargs: dict):
        return self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)

    def shared(self, func, args: tuple, kwargs: dict, to: dict, pairs) -> torch.Tensor | None:
        """Image-only self-attention whose negative rows equal their positives' in q, k and v (every block
        chosen): attended once, without the negative chunks (the call's last), which get the positives'
        outputs. None where that does not hold (then the caller attends over every row)."""
        q = args[0]
        labels = list(to.get("cond_or_uncond") or [0])
        first = min(n for _, n in pairs)
        if sorted(n for _, n in pairs) != list(range(first, len(labels))) or \
                (len(args) > 4 and args[4] is not None) or kwargs.get("mask") is not None:
            return None
        per_chunk = q.shape[0] // len(labels)
        kept = first * per_chunk
        positives = [p for p, _ in sorted(pairs, key=lambda pair: pair[1])]
        pos = slice(positives[0] * per_chunk, (positives[0] + len(positives)) * per_chunk) \
            if positives == list(range(positives[0], positives[0] + len(positives))) \
            else _rows(positives, per_chunk, q.device)
        if not all(torch.equal(t[kept:], t[pos]) for t in args[:3]):
            return None
        sub = dict(to, cond_or_uncond=labels[:first])
        if isinstance(to.get("uuids"), list) and len(to["uuids"]) == len(labels):
            sub["uuids"] = to["uuids"][:first]
        out = self.attend(func, (*(t[:kept] for t in args[:3]), *args[3:]), dict(kwargs, transformer_options=sub))
        return torch.cat([out, out[pos]])

    def __call__(self, func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        pairs = to.get(self.key)
        q, k = args[0], args[1]
        seq = 2 if kwargs.get("skip_reshape", False) else 1
        n_image = to[GRID][0] * to[GRID][1] * to[GRID][2] if pairs else 0
        q_len, k_len = q.shape[seq], k.shape[seq]
        if pairs and q_len == k_len == n_image:   # image-only self-attention: the same on both rows, not guided
            out = self.shared(func, args, kwargs, to, pairs) if self.share else None
            return out if out is not None else self.attend(func, args, kwargs)
        if not pairs or (to.get("block_type"), to.get("block_index")) not in self.layers:
            return self.attend(func, args, kwargs)
        start = 0 if q_len != k_len else image_start(q_len, n_image, self.arch.image_first, self.arch.image_pad,
                                                     to.get(IMAGE_TAIL, 0))
        if self.share and self.previous is None and q_len == k_len:
            out = split_joint_attention(lambda a, kw: func(*a, **kw), args, kwargs, to, pairs,
                                        slice(start, start + n_image), self.settings.combine)
            if out is not None:
                return out
        out = self.attend(func, args, kwargs)
        heads = args[3] if len(args) > 3 else kwargs["heads"]
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
    dropped. So the negative's rows run beside their positive's however ComfyUI batches the conds. The tokens a
    negative row shares with its positive row are computed once in every Linear layer (nag_shared.py)."""
    def __init__(self, key: str, tokens: torch.Tensor, mask: torch.Tensor | None, constants: frozenset[str],
                 share: bool = True):
        self.key, self.tokens, self.mask, self.constants, self.share = key, tokens, mask, constants, share

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
        shared = SharedTokens(to[self.key], batch // len(labels), batch + len(rows))
        with shared.installed(executor.class_obj.diffusion_model) if self.share else contextlib.nullcontext():
            out = executor(_with_rows(x, rows, batch), _with_rows(t, rows, batch), _with_rows(c_concat, rows, batch),
                           c_crossattn, _with_rows(control, rows, batch), to, **kwargs)
        return out[:batch]
