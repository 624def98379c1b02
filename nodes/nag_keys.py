"""NAG's keys-in-the-layer route on DiTs (Wan), out of nag.py: Z⁻ from the negative's keys, no extra rows."""
from __future__ import annotations

import torch

from .attention_hooks import _heads_first, _rows
from .block_hooks import layer_modules
from .layers import Architecture, Layer
from .nag_rows import _host_layout, _positive, _tokens
from .nag_settings import Settings

KEYS = "guidekit_nag_keys"            # + node id, in transformer_options: the call's negative keys (NegativeKeys)


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
