"""Tokens computed once in NAG's extra-row route: a negative row's tokens that equal its positive row's.

Every chosen block writes one combined attention output to both rows of a pair, so with every block chosen
(the default) the negative's image tokens stay the positive's from the first layer to the last: only its
text tokens differ. Joint-attention blocks still attend over both rows (Z⁻ needs the negative's text keys),
but each Linear layer computes the tokens the two rows share once, as the official Flux code's shared image
stream does, without a block form per family: equality is tested exactly, token by token, at every Linear
call, so the result is the unshared computation's whatever the family, the chosen blocks or other patches.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class SharedTokens:
    """Forward hooks on a model's Linear layers for one model call: for each (positive, negative) chunk pair,
    the negative rows' tokens equal to the positive rows' are left out of the layer's input and get the
    positive's output. The negatives are the call's last rows (NAG appends them): a layer whose negative rows
    equal their positives throughout (an image stream) runs on the other rows alone, views and no copy; where
    only some tokens are equal (a joint sequence) the unequal ones are packed after the other rows."""

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

    def equal_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(negative rows, tokens): which tokens of each negative row equal its positive row's, exactly (at every
        call: a tensor may change in place between two layers, and inference tensors keep no version to tell)."""
        return (x[self.kept:] == x[self.positive_rows]).all(dim=-1)

    def before(self, module: torch.nn.Module, args: tuple):
        x = args[0] if args else None
        if not (self.tail and self.negative and isinstance(x, torch.Tensor) and x.ndim == 3
                and x.shape[0] == self.batch):
            return None
        same = self.equal_tokens(x)
        if not bool(same.any()):
            return None
        if bool(same.all()):
            self.plans[module] = None
            return (x[:self.kept], *args[1:])
        self.plans[module] = same
        packed = torch.cat([x[:self.kept].flatten(0, 1), x[self.kept:][~same]])
        return (packed.unsqueeze(0), *args[1:])

    def after(self, module: torch.nn.Module, args: tuple, out: torch.Tensor):
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
        """The hooks on every Linear layer of `model` for the length of the block (removed whatever happens)."""
        handles = []
        try:
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    handles.append(module.register_forward_pre_hook(self.before))
                    handles.append(module.register_forward_hook(self.after))
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.plans.clear()

