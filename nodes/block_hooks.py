"""Block-level perturbations on chosen batch rows of a model call: TPG shuffles a block's image tokens, STG
skips a block. The attention hooks' companion (nodes/attention_hooks.py) for methods that act on a whole
transformer block rather than inside its attention.

An APPLY_MODEL wrapper, installed per call on a copy of model_options like the attention hooks, wraps the
chosen blocks' forward for the length of that one call (an instance attribute, removed afterwards whatever
happens; the model itself is never patched). The wrapper finds the rows to perturb from the call's
cond_or_uncond labels and GuideKit's row marks, and the block's streams from its arguments: the tensors
whose first axis is the call's batch and that come back, same shape, as outputs (hidden states; not
modulation vectors or rotary tables). A block returns them in any order (SD3 and Qwen-Image hand back
text before image): outputs are matched to inputs by shape, and a block whose two streams have the same
shape (as many text tokens as image tokens, same width) is refused by name rather than guessed.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import SpatialTransformer

from ..guidance.stg import skip_rows
from .attention_hooks import GRID, IMAGE_TAIL, MARK, Grid, _marked_chunks, _rows, image_start
from .layers import Architecture, Layer


@dataclass(frozen=True)
class BlockPerturbation:
    """What a method does to a block on its rows: `before` rewrites the image tokens of the block's image
    stream ((rows, n_image, C) → same shape, given the grid and a generator for this step), `skip` makes
    the block's outputs on those rows equal to its inputs."""
    name: str
    before: Callable[[torch.Tensor, Grid, torch.Generator], torch.Tensor] | None = None
    skip: bool = False


def layer_modules(dm, arch: Architecture) -> dict[Layer, torch.nn.Module]:
    """The transformer block each layer names: UNet BasicTransformerBlocks, DiT stack entries."""
    if arch.family == "unet":
        places = {"input": dm.input_blocks, "middle": [dm.middle_block], "output": dm.output_blocks}
        out = {}
        for (place, block_id, index) in arch.layers:
            spatial = next(m for m in places[place][block_id] if isinstance(m, SpatialTransformer))
            out[(place, block_id, index)] = spatial.transformer_blocks[index]
        return out
    from .layers import family_of
    stacks = dict(family_of(dm).stacks)
    return {layer: getattr(dm, stacks[layer[0]])[layer[1]] for layer in arch.layers}


PER_PATCH = ("pixel",)         # places whose blocks run per latent patch, not per image (PixelDiT's pixel blocks)


def default_block(arch: Architecture) -> str:
    """The reference's layer, else the middle block of the stack among blocks that hold per-image token streams."""
    from .layers import format_layers
    layers = [layer for layer in arch.layers if layer[0] not in PER_PATCH]
    return format_layers([layers[len(layers) // 2]]) if layers != list(arch.layers) else arch.default_block


def install_blocks(model_options: dict, arch: Architecture, layers, token: object, perturbation: BlockPerturbation,
                   rows, grid: Grid) -> dict:
    """A copy of model_options whose calls run `perturbation` on `layers` for the chunks of cond indices `rows`."""
    mo = dict(model_options)
    to = dict(mo.get("transformer_options", {}))
    mo["transformer_options"] = to
    to[MARK] = {**to.get(MARK, {}), **{row: token for row in rows}}
    to[GRID] = grid
    wrappers = {kind: dict(by_key) for kind, by_key in to.get("wrappers", {}).items()}
    apply_model = wrappers.setdefault(comfy.patcher_extension.WrappersMP.APPLY_MODEL, {})
    apply_model[f"guidekit_blocks_{id(token)}"] = [BlockContext(arch, tuple(layers), token, perturbation)]
    to["wrappers"] = wrappers
    return mo


class BlockContext:
    """APPLY_MODEL wrapper: the chosen blocks run `perturbation` on the marked rows for this call."""

    def __init__(self, arch: Architecture, layers: tuple[Layer, ...], token: object, perturbation: BlockPerturbation):
        self.arch, self.layers, self.token, self.perturbation = arch, layers, token, perturbation

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        to = transformer_options or {}
        mine, other = _marked_chunks(to, self.token)
        if not mine:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        rows = _rows(mine, x.shape[0] // (len(mine) + len(other)), x.device)
        grid = to.get(GRID)
        tail = to.get(IMAGE_TAIL, 0)
        modules = layer_modules(executor.class_obj.diffusion_model, self.arch)
        wrapped = []
        try:
            for layer in self.layers:
                block = modules[layer]
                before = block.__dict__.get("forward")
                # a draw per step and block, the same in every run (and on every machine: no global RNG)
                gen = torch.Generator().manual_seed(zlib.crc32(repr(layer).encode()) + round(float(t.max()) * 1e6))
                block.forward = _perturbed_forward(block, before, self, layer, rows, x.shape[0], grid, tail, gen)
                wrapped.append((block, before))
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            for block, before in reversed(wrapped):
                if before is None:
                    del block.forward
                else:
                    block.forward = before


def _streams(args, kwargs, batch: int) -> list[tuple[str | int, torch.Tensor]]:
    """(where, tensor) of every hidden-state argument: float, the call's batch first, tokens then channels
    (rotary tables have more axes and end in a 2×2 rotation, modulation vectors fewer)."""
    found = [(i, a) for i, a in enumerate(args)] + list(kwargs.items())
    return [(where, a) for where, a in found
            if isinstance(a, torch.Tensor) and a.is_floating_point() and a.shape[0] == batch
            and (a.ndim == 3 or (a.ndim == 5 and a.shape[-1] > 4))]    # (B, L, C); Cosmos (B, T, H, W, C)


def _outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _perturbed_forward(block, before, context: BlockContext, layer: Layer, rows: torch.Tensor, batch: int,
                       grid: Grid | None, tail: int, gen: torch.Generator) -> Callable:
    forward = before or type(block).forward.__get__(block)
    perturbation, arch = context.perturbation, context.arch

    def run(*args, **kwargs):
        streams = _streams(args, kwargs, batch)
        if not streams:
            raise ValueError(f"GuideKit {perturbation.name}: block {layer} holds no per-image token stream (PixelDiT's "
                             "pixel blocks run per patch); choose a block of another place")
        if perturbation.before is not None:
            args, kwargs = _shuffled_inputs(args, kwargs, streams, arch, layer, rows, grid, tail, gen, perturbation)
        if not perturbation.skip:
            return forward(*args, **kwargs)
        saved = {where: s[rows].clone() for where, s in streams}     # blocks may add to their input in place
        out = forward(*args, **kwargs)
        outs, used = _outputs(out), set()
        restored = []
        for o in outs:
            same = [(w, s) for w, s in streams if w not in used and isinstance(o, torch.Tensor) and s.shape == o.shape]
            if len(same) > 1:
                raise ValueError(f"GuideKit {perturbation.name}: block {layer} has {len(same)} streams of the same "
                                 f"shape {tuple(o.shape)} (as many text tokens as image tokens), so its skip cannot "
                                 "tell them apart; change the prompt length or the image size by a token")
            if not same:
                restored.append(o)
                continue
            where = same[0][0]
            used.add(where)
            restored.append(skip_rows(o, saved[where], rows))
        if isinstance(out, (tuple, list)):
            return type(out)(restored)
        return restored[0]
    return run


def _shuffled_inputs(args, kwargs, streams, arch: Architecture, layer: Layer, rows, grid, tail, gen,
                     perturbation: BlockPerturbation):
    """args, kwargs with the image tokens of the block's image stream rewritten on `rows`."""
    where, hidden = _image_stream(streams, arch, layer, grid, tail, perturbation)
    flat = hidden.reshape(hidden.shape[0], -1, hidden.shape[-1])         # Cosmos: (B, T, H, W, C)
    if arch.family == "unet":
        start, n_image = 0, flat.shape[1]
        grid = (1, 1, n_image)
    else:
        n_image = grid[0] * grid[1] * grid[2]
        start = image_start(flat.shape[1], n_image, arch.image_first, arch.image_pad, tail)
    new = flat.clone()
    part = new[rows, start:start + n_image]
    new[rows, start:start + n_image] = perturbation.before(part, grid, gen).to(new.dtype)
    new = new.reshape(hidden.shape)
    if isinstance(where, int):
        args = (*args[:where], new, *args[where + 1:])
    else:
        kwargs = dict(kwargs, **{where: new})
    return args, kwargs


def _image_stream(streams, arch: Architecture, layer: Layer, grid, tail, perturbation: BlockPerturbation):
    """The argument holding the image tokens: the UNet block's only stream; on DiTs the one stream with the
    image's token count (a separate image stream) or, failing that, the one long enough to hold it (joint)."""
    if arch.family == "unet":
        return streams[0]
    n_image = grid[0] * grid[1] * grid[2]
    pad = (-n_image) % arch.image_pad if arch.image_pad > 1 else 0
    tokens = [(w, s, s.reshape(s.shape[0], -1, s.shape[-1]).shape[1]) for w, s in streams]
    exact = [(w, s) for w, s, n in tokens if n == n_image + pad + tail]
    candidates = exact or [(w, s) for w, s, n in tokens if n > n_image]
    if len(candidates) != 1:
        raise ValueError(f"GuideKit {perturbation.name}: block {layer} has {len(candidates)} streams that could hold "
                         f"the {n_image} image tokens; change the prompt length or the image size by a token")
    return candidates[0]
