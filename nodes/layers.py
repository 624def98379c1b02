"""Which self-attention layers a model has, how users name them, and the per-architecture presets.

UNet layers are the keys ComfyUI looks attn1 patches up with: (place, block id, transformer index).
DiT layers are (block type, index): Flux/Chroma "double"/"single" blocks, SD3 (MMDiT) "joint" blocks.
The syntax is a comma-separated list of `place[.ids[.indices]]`, each part a number or a range `a-b`,
a missing part meaning "all": `middle`, `output.0-2`, `input.4.1`, `double.3, single.0-5`.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from comfy.ldm.modules.attention import SpatialTransformer

Layer = tuple   # ("input" | "middle" | "output", id, index) or ("double" | "single" | "joint", index)

PLACE_ALIASES = {"in": "input", "mid": "middle", "out": "output", "down": "input", "up": "output"}


@dataclass(frozen=True)
class Architecture:
    """What the hooks need to know about one diffusion model's attention."""
    family: str                 # "unet" | "flux" | "mmdit"
    model_type: str             # class name, for messages
    layers: tuple[Layer, ...]   # every self-attention layer, in forward order
    patch_size: int             # latent pixels per token side (1 for UNet)
    default_layers: str         # the paper's choice (UNet: mid block) or our documented DiT choice
    default_sag_layer: str


def unet_self_attention(diffusion_model) -> list[Layer]:
    """Every attn1 of a ComfyUI UNet as (place, id, transformer_index), in forward order.

    id indexes input_blocks / output_blocks (0 for the middle block) and the transformer index counts
    BasicTransformerBlocks inside the SpatialTransformer: the key `patches_replace["attn1"]` is read with.
    """
    places = (("input", diffusion_model.input_blocks), ("middle", [diffusion_model.middle_block]),
              ("output", diffusion_model.output_blocks))
    keys = []
    for place, blocks in places:
        for block_id, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, SpatialTransformer):
                    keys += [(place, block_id, i) for i in range(len(layer.transformer_blocks))]
    return keys


def architecture(model, node: str) -> Architecture:
    """Describe a ModelPatcher's diffusion model, or raise naming the model type GuideKit cannot reach."""
    return architecture_of(model.get_model_object("diffusion_model"), node)


def architecture_of(dm, node: str) -> Architecture:
    """Describe a diffusion model module (also one built on the meta device, for the layer picker)."""
    from comfy.ldm.chroma.model import Chroma
    from comfy.ldm.flux.model import Flux
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    name = type(dm).__name__
    if isinstance(dm, UNetModel):
        layers = unet_self_attention(dm)
        if layers:
            return Architecture("unet", name, tuple(layers), 1, "middle", "middle.0.0")
    elif isinstance(dm, (Flux, Chroma)) and not any(getattr(b, "flipped_img_txt", False) for b in dm.double_blocks):
        n_double, n_single = len(dm.double_blocks), len(dm.single_blocks)
        layers = [("double", i) for i in range(n_double)] + [("single", i) for i in range(n_single)]
        middle = layers[len(layers) // 2]
        return Architecture("flux", name, tuple(layers), dm.patch_size, format_layers([middle]),
                            format_layers([middle]))
    elif isinstance(dm, MMDiT):
        layers = [("joint", i) for i in range(len(dm.joint_blocks))]
        middle = layers[len(layers) // 2]
        patch = dm.patch_size if isinstance(dm.patch_size, int) else dm.patch_size[0]
        return Architecture("mmdit", name, tuple(layers), patch, format_layers([middle]), format_layers([middle]))
    raise ValueError(f"{node}: this model ({name}) has no self-attention GuideKit can reach. Supported: "
                     "UNet models (SD1.x, SD2.x, SDXL), Flux and Chroma, SD3 / SD3.5 (MMDiT).")


_ITEM = re.compile(r"^([a-z]+)(?:\.(\d+)(?:-(\d+))?)?(?:\.(\d+)(?:-(\d+))?)?$")


def _span(lo: str | None, hi: str | None) -> range | None:
    if lo is None:
        return None
    a, b = int(lo), int(hi) if hi is not None else int(lo)
    return range(min(a, b), max(a, b) + 1)


def parse_layers(text: str, arch: Architecture, node: str, input_name: str = "layers") -> tuple[Layer, ...]:
    """The layers a layer list names, in forward order; empty or "default" gives the preset.

    Each item must name at least one existing layer, else the error lists the model's valid layers.
    """
    text = text.strip().lower()
    if text in ("", "default"):
        text = arch.default_layers
    chosen: set[Layer] = set()
    for item in filter(None, (part.strip() for part in re.split(r"[,\s]+", text))):
        m = _ITEM.match(item)
        if not m:
            raise ValueError(f"{node}: input '{input_name}': cannot read {item!r}; write place[.ids[.indices]], "
                             f"e.g. {arch.default_layers}. Valid layers of this {arch.model_type}: "
                             f"{format_layers(arch.layers)}")
        place = PLACE_ALIASES.get(m[1], m[1])
        first, second = _span(m[2], m[3]), _span(m[4], m[5])
        matched = [layer for layer in arch.layers if layer[0] == place
                   and (first is None or layer[1] in first)
                   and (second is None or (len(layer) > 2 and layer[2] in second))]
        if not matched or (second is not None and arch.family != "unet"):
            raise ValueError(f"{node}: input '{input_name}': {item!r} names no layer of this {arch.model_type}. "
                             f"Valid layers: {format_layers(arch.layers)}")
        chosen.update(matched)
    if not chosen:
        raise ValueError(f"{node}: input '{input_name}' names no layer. Valid layers: {format_layers(arch.layers)}")
    return tuple(layer for layer in arch.layers if layer in chosen)


def format_layers(layers) -> str:
    """Compact readable list, the syntax parse_layers reads: 'input.4.0-1, middle.0.0, double.0-2'."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for layer in layers:
        groups[tuple(layer[:-1])].append(layer[-1])
    parts = []
    for head, indices in groups.items():
        runs, start = [], indices[0]
        for prev, cur in zip(indices, indices[1:] + [None]):
            if cur is None or cur != prev + 1:       # a run of consecutive indices ends at prev
                runs.append(f"{start}" if start == prev else f"{start}-{prev}")
                start = cur
        prefix = ".".join(str(p) for p in head)
        parts += [f"{prefix}.{run}" for run in runs]
    return ", ".join(parts)
