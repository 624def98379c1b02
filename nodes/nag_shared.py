"""Work computed once in NAG's extra-row route: a negative row's tokens that equal its positive row's.

Every chosen block writes one combined attention output to both rows of a pair, so with every block chosen
(the default) the negative's image tokens stay the positive's from the first layer to the last: only its
text tokens differ. Without a block form per family, this module computes what the two rows share once, as
the official Flux code's shared image stream does: a layer whose input is equal on both rows (an image
stream's norms, projections, activations) runs on the positive's rows alone; one whose input is equal on
some tokens (a joint sequence) computes the others only; joint attention attends over the shared
image keys once. Equality is tested exactly at every call, so the result is the unshared computation's
whatever the family, the chosen blocks or other patches.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import comfy.rmsnorm
import torch

from ..guidance import partial_attention
from . import compat
from .attention_hooks import _heads_first, _restricted, _rows

# Layers that act on each token alone and on nothing but their input: their equal rows or tokens can be left out.
# (Not containers: a block's MLP may read state its input does not carry, as PixelDiT's pixel blocks do.)
TOKENWISE = (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.RMSNorm, comfy.rmsnorm.RMSNorm, torch.nn.GELU,
             torch.nn.SiLU)


class SharedTokens:
    """Forward hooks on a model's token-wise layers (linear, norms, activations) for one model call: for each
    (positive, negative) chunk pair, the negative rows are left out of a layer's input where they equal the
    positive rows and get the positive's output. The negatives are the call's last rows (NAG appends them): a
    layer whose input is equal on both rows (an image stream) runs on the other rows alone (views, no copy);
    one whose input is equal on some tokens only (a joint sequence) gets the unequal ones packed after the
    other rows. Inactive unless the model's input has this call's rows (a second NAG node adds its own)."""

    def __init__(self, pairs: tuple[tuple[int, int], ...], per_chunk: int, batch: int):
        self.batch = batch
        ordered = sorted(pairs, key=lambda pair: pair[1])
        self.positive = [r for p, _ in ordered for r in range(p * per_chunk, (p + 1) * per_chunk)]
        self.negative = [r for _, n in ordered for r in range(n * per_chunk, (n + 1) * per_chunk)]
        self.kept = batch - len(self.negative)
        self.tail = self.negative == list(range(self.kept, batch))     # else: no sharing (the rows are elsewhere)
        p0 = self.positive[0] if self.positive else 0
        self.positive_rows: slice | list[int] = slice(p0, p0 + len(self.positive)) \
            if self.positive == list(range(p0, p0 + len(self.positive))) else self.positive
        self.plans: dict[torch.nn.Module, torch.Tensor | None] = {}
        self.active = False       # whether the model's input has this call's rows (another NAG may add more)

    def check_batch(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("x")
        self.active = isinstance(x, torch.Tensor) and x.shape[0] == self.batch

    def equal_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(negative rows, tokens): which tokens of each negative row equal its positive row's, exactly (at every
        call: a tensor may change in place between two layers, and inference tensors keep no version to tell)."""
        return (x[self.kept:] == x[self.positive_rows]).all(dim=-1)

    def before(self, module: torch.nn.Module, args: tuple, kwargs: dict):
        x = args[0] if len(args) == 1 else None
        if not (self.active and self.tail and self.negative and isinstance(x, torch.Tensor) and x.ndim >= 2
                and x.shape[0] == self.batch) or any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            return None
        if torch.equal(x[self.kept:], x[self.positive_rows]):
            self.plans[module] = None
            return (x[:self.kept],), kwargs
        if x.ndim != 3:
            return None
        same = self.equal_tokens(x)
        if not bool(same.any()):
            return None
        self.plans[module] = same
        packed = torch.cat([x[:self.kept].flatten(0, 1), x[self.kept:][~same]])
        return (packed.unsqueeze(0),), kwargs

    def after(self, module: torch.nn.Module, args: tuple, kwargs: dict, out):
        if module not in self.plans:
            return None
        same = self.plans.pop(module)
        if same is None:
            return torch.cat([out, out[self.positive_rows]])
        length = same.shape[1]
        head = out[0, :self.kept * length].view(self.kept, length, -1)
        full = torch.cat([head, head[self.positive_rows]])
        full[self.kept:][~same] = out[0, self.kept * length:]
        return full

    @contextlib.contextmanager
    def installed(self, model: torch.nn.Module) -> Iterator[None]:
        """The hooks on every token-wise layer of `model` for the length of the block (removed whatever happens)."""
        handles = [model.register_forward_pre_hook(self.check_batch, with_kwargs=True)]
        try:
            for module in model.modules():
                if isinstance(module, TOKENWISE):
                    handles.append(module.register_forward_pre_hook(self.before, with_kwargs=True))
                    handles.append(module.register_forward_hook(self.after, with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.plans.clear()
            self.active = False


def split_joint_attention(attend, args: tuple, kwargs: dict, to: dict, pairs, image: slice,
                          combine) -> torch.Tensor | None:
    """Joint attention in a chosen block whose negative rows equal their positives' in the image tokens' q, k
    and v (every block chosen): the image queries attend over the image keys once, and over each row's own
    other keys (text, references) apart; the two parts are merged exactly (partial_attention), giving Z⁺ and
    Z⁻ for about one row's attention, and `combine(Z⁺, Z⁻)` is written to both rows' image tokens. The
    other queries (text) and the other rows go through the host's attention `attend(args, kwargs)`. None where
    that does not hold (a mask, or the image tokens differ): then the caller attends over every row."""
    if (len(args) > 4 and args[4] is not None) or kwargs.get("mask") is not None:
        return None
    heads = args[3] if len(args) > 3 else kwargs["heads"]
    args, kwargs = compat.ungrouped_keys(args, kwargs, heads)
    heads_first = kwargs.get("skip_reshape", False)
    q, k, v = (t if heads_first else _heads_first(t, heads) for t in args[:3])
    labels = list(to.get("cond_or_uncond") or [0])
    per_chunk, length = q.shape[0] // len(labels), q.shape[2]
    positives, negatives = [p for p, _ in pairs], [n for _, n in pairs]
    pos, neg = _rows(positives, per_chunk, q.device), _rows(negatives, per_chunk, q.device)
    q_img, k_img, v_img = (t[pos, :, image] for t in (q, k, v))
    if not all(torch.equal(t[neg, :, image], part) for t, part in zip((q, k, v), (q_img, k_img, v_img))):
        return None
    rest = torch.cat([torch.arange(image.start), torch.arange(image.stop, length)]).to(q.device)
    if not len(rest):
        return None
    shared = partial_attention.attention(q_img, k_img, v_img)
    z_pos, z_neg = (partial_attention.merge(shared, partial_attention.attention(q_img, k[rows][:, :, rest],
                                                                                 v[rows][:, :, rest]))[0]
                    for rows in (pos, neg))
    z = combine(z_pos.transpose(1, 2).flatten(2), z_neg.transpose(1, 2).flatten(2))
    both = torch.cat([pos, neg])

    def host(rows: torch.Tensor, chunks: list[int], queries: torch.Tensor | None) -> torch.Tensor:
        """The host's attention for `rows` (the queries at `queries` only, or all), as (rows, L, heads·d)."""
        sub = [q[rows] if queries is None else q[rows][:, :, queries], k[rows], v[rows]]
        if not heads_first:
            sub = [t.transpose(1, 2).flatten(2) for t in sub]
        out = attend((*sub, *args[3:]), dict(kwargs, transformer_options=_restricted(to, chunks)))
        return out.transpose(1, 2).flatten(2) if kwargs.get("skip_output_reshape", False) else out

    tokens = z.new_empty((q.shape[0], length, z.shape[-1]))
    paired = z.new_empty((len(both), length, z.shape[-1]))
    paired[:, image] = z.repeat(2, 1, 1)
    paired[:, rest] = host(both, positives + negatives, rest).to(z.dtype)
    tokens[both] = paired
    others = [j for j in range(len(labels)) if j not in positives + negatives]
    if others:
        rows = _rows(others, per_chunk, q.device)
        tokens[rows] = host(rows, others, None).to(z.dtype)
    return _heads_first(tokens, heads) if kwargs.get("skip_output_reshape", False) else tokens
