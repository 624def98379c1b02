"""Which self-attention layers a model has, how users name them, and the per-architecture presets.

UNet layers are the keys ComfyUI looks attn1 patches up with: (place, block id, transformer index).
DiT layers are (block type, index): Flux/Chroma "double"/"single" blocks, SD3 (MMDiT) "joint" blocks, and
each family's blocks as its row in FAMILIES names them (a new family is a row: ARCHITECTURE.md).
The syntax is a comma-separated list of `place[.ids[.indices]]`, each part a number or a range `a-b`,
a missing part meaning "all": `middle`, `output.0-2`, `input.4.1`, `double.3, single.0-5`.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from comfy.ldm.modules.attention import SpatialTransformer

from . import compat

Layer = tuple   # ("input" | "middle" | "output", id, index) or ("double" | "single" | "joint", index)
RefsUsed = Callable[[object, dict], bool]


def always(dm, kwargs: dict) -> bool:
    """Flux, Flux 2, Qwen-Image: every reference latent of the call is appended after the image tokens."""
    return True


def with_ref_method(dm, kwargs: dict) -> bool:
    """Krea 2 appends reference latents only when the call or the model names a reference method."""
    return kwargs.get("ref_latents_method", getattr(dm, "default_ref_method", None)) is not None

@dataclass(frozen=True)
class TextCrossAttention:
    """Where a family's text enters when it enters only through cross-attention: embedded once per call by the
    model's `embedder`, then read only as keys and values by each block's `attention` module (Wan). NAG's
    negative keys can then be computed in the layer, with no extra rows."""
    embedder: str                           # diffusion-model attribute embedding the text tokens once
    attention: str                          # block attribute: the cross-attention module
    key: tuple[str, ...] = ("k", "norm_k")  # its modules making keys from the embedded text, applied in order
    value: tuple[str, ...] = ("v",)         # … and values


PLACE_ALIASES = {"in": "input", "mid": "middle", "out": "output", "down": "input", "up": "output"}


@dataclass(frozen=True)
class Architecture:
    """What the hooks need to know about one diffusion model's attention (from its family's row)."""
    family: str                 # the family's id: "unet", "flux", "mmdit", "wan", …
    model_type: str             # class name, for messages
    layers: tuple[Layer, ...]   # every self-attention layer, in forward order
    patch: tuple[int, int, int]  # latent (frames, height, width) per token ((1, 1, 1) for UNets)
    default_layers: str         # PAG's default: the paper's or reference's layers (UNet: mid block), else the
                                # block at 5/8 of the depth (measured on our DiTs: docs/evidence.md)
    default_sag_layer: str      # the middle layer
    image_first: bool = False   # joint attention holds the image tokens before the text
    image_pad: int = 0          # the image tokens are padded to a multiple of this (0: not padded)
    dit_keys: tuple[tuple[str, str], ...] = ()   # place → patches_replace["dit"] key: GuideKit labels blocks
    wrapped: tuple[tuple[str, str], ...] = ()    # (place, block list) GuideKit labels by wrapping for one call
    refs_after: RefsUsed | None = None   # (model, call kwargs) → the call's reference latents follow the image
    text_cross: TextCrossAttention | None = None   # the text enters only through cross-attention (NAG's keys)
    default_block: str = ""     # the reference's layers, else the middle block: SEG's, Degraded Model's default

    @property
    def patch_size(self) -> int:
        return self.patch[-1]


@dataclass(frozen=True)
class Family:
    """One row of the model-family table: how GuideKit reaches a family's self-attention."""
    id: str
    name: str                                   # as users know it, for messages and docs
    classes: tuple[str, ...]                    # ComfyUI diffusion-model classes along the MRO ("pkg.Class" to
                                                # tell apart classes of one name: SD3's and AuraFlow's MMDiT)
    stacks: tuple[tuple[str, str], ...] = ()    # (layer place, attribute holding its block list), forward order
    dit_keys: tuple[tuple[str, str], ...] = ()  # place → dit replace key, when ComfyUI does not name the block
    image: str | Callable[[object], str] = "last"   # image tokens in self-attention: "last", "first", "only"
    patch: tuple[int, int, int] | Callable[[object], tuple[int, int, int]] | None = None
                                                # (frames, h, w) per token (or a function of the model);
                                                # None: the model's patch_size
    time_embedder: str | Callable[[object], str] = ""   # the module whose output is t_emb (what TSG noises): a
                                                # dotted path under the diffusion model (or a function of the
                                                # model giving one; "" where no one module's output is t_emb)
    image_pad: str = ""                         # attribute: image tokens padded to a multiple of it (Z-Image)
    wrap: bool = False                          # ComfyUI neither names the blocks nor checks a dit patch: GuideKit
                                                # wraps their forward for the length of a model call to name them
    refs_after: RefsUsed | None = None          # reference latents become tokens after the image, when this says
    accepts: Callable[[object], bool] = lambda dm: True
    text_cross: TextCrossAttention | None = None   # the text enters only through each block's cross-attention
                                                # (NAG computes the negative's keys there; None: extra rows)
    default: str = ""                           # the reference implementation's layer where one exists (else
                                                # PAG: the block at 5/8 of the depth; other nodes: the middle block)


# OmniGen2 and Boogu: time_caption_embed returns (time_embed, caption_embed); its timestep_embedder's output is
# the temb every refiner, layer and norm_out modulation reads
LUMINA2_TIME = "time_caption_embed.timestep_embedder"
FAMILIES: tuple[Family, ...] = (
    Family("unet", "UNet (SD1.x, SD2.x, SDXL)", ("UNetModel",), time_embedder="time_embed"),
    Family("flux", "Flux / Flux 2 / Chroma / Chroma Radiance / LongCat-Image", ("Flux", "Chroma"),
           (("double", "double_blocks"), ("single", "single_blocks")), time_embedder="time_in", refs_after=always,
           accepts=lambda dm: not any(getattr(b, "flipped_img_txt", False) for b in dm.double_blocks)),
    Family("mmdit", "SD3 / SD3.5 (MMDiT)", ("diffusionmodules.mmdit.MMDiT",), (("joint", "joint_blocks"),),
           dit_keys=(("joint", "double_block"),), time_embedder="t_embedder",
           default="joint.1"),                  # diffusers' StableDiffusion3PAGPipeline: pag_applied_layers "blocks.1"
    Family("wan", "Wan 2.1 / 2.2 (T2V, I2V)", ("WanModel",), (("block", "blocks"),),
           dit_keys=(("block", "double_block"),), image="only", patch=(1, 2, 2), time_embedder="time_embedding",
           text_cross=TextCrossAttention("text_embedding", "cross_attn")),
    Family("lumina2", "Lumina 2 / Z-Image (also pixel space)", ("NextDiT",), (("double", "layers"),),
           time_embedder="t_embedder",
           image_pad="pad_tokens_multiple", wrap=True),          # the main layers; the refiners are not labelled
    Family("hidream", "HiDream", ("HiDreamImageTransformer2DModel",),
           (("double", "double_stream_blocks"), ("single", "single_stream_blocks")), image="first",
           time_embedder="t_embedder", wrap=True),
    Family("omnigen2", "OmniGen2", ("OmniGen2Transformer2DModel",), (("double", "layers"),), wrap=True,
           time_embedder=LUMINA2_TIME),
    Family("cosmos_predict2", "Cosmos Predict2 / Anima", ("MiniTrainDIT",), (("block", "blocks"),), image="only",
           patch=(1, 2, 2), wrap=True),       # no t_emb: the modulation reads the normed sinusoid and an adaLN-LoRA
                                              # MLP of it (nodes/tsg.py says so)
    Family("qwen_image", "Qwen-Image", ("QwenImageTransformer2DModel",), (("double", "transformer_blocks"),),
           patch=(1, 2, 2), time_embedder="time_text_embed", refs_after=always),
    Family("hunyuan_video", "HunyuanVideo / 1.5, HunyuanImage 2.1", ("HunyuanVideo",),
           (("double", "double_blocks"), ("single", "single_blocks")),
           image=lambda dm: "first" if compat.image_tokens_first(dm.double_blocks[0]) else "last",
           time_embedder="time_in"),
    Family("kandinsky5", "Kandinsky 5 (video, image)", ("Kandinsky5",), (("double", "visual_transformer_blocks"),),
           image="only", time_embedder="time_embeddings"),
    Family("krea2", "Krea 2", ("krea2.model.SingleStreamDiT",), (("single", "blocks"),), patch=(1, 2, 2),
           time_embedder="tmlp", refs_after=with_ref_method),
    Family("mochi", "Mochi", ("AsymmDiTJoint",), (("block", "blocks"),), dit_keys=(("block", "double_block"),),
           image="first", patch=(1, 2, 2), time_embedder="t_embedder"),
    Family("ltxv", "LTX-Video", ("LTXVModel",), (("block", "transformer_blocks"),),
           dit_keys=(("block", "double_block"),), image="only", patch=(1, 1, 1),
           # embedded_timestep: the blocks' adaLN-single timestep is linear(SiLU(it)), the output scale/shift
           # adds it; a cross-attention-adaLN model embeds time a second time (prompt_adaln_single): not one t_emb
           time_embedder=lambda dm: "" if getattr(dm, "prompt_adaln_single", None) is not None
           else "adaln_single.emb.timestep_embedder"),
    Family("aura_flow", "AuraFlow", ("aura.mmdit.MMDiT",), (("double", "double_layers"), ("single", "single_layers")),
           dit_keys=(("double", "double_block"), ("single", "single_block")), patch=(1, 2, 2),
           time_embedder="t_embedder"),
    # ComfyUI 0.33 and later
    Family("lens", "Lens", ("LensTransformer2DModel",), (("double", "transformer_blocks"),), image="first",
           patch=(1, 1, 1), time_embedder="time_text_embed"),      # a token per 128-channel Flux 2 latent pixel
    Family("mage_flow", "Mage-Flow", ("MageFlowTransformer2DModel",), (("double", "transformer_blocks"),),
           time_embedder="time_text_embed", refs_after=always),
    Family("joyimage", "JoyImage", ("JoyImageTransformer3DModel",), (("double", "double_blocks"),),
           image="first",                                         # [image, references, text]
           time_embedder="condition_embedder.time_embedder"),     # temb: the blocks' modulation vector is
                                                                  # time_proj(SiLU(temb)), nothing else reads it
    Family("ideogram4", "Ideogram 4", ("Ideogram4Transformer2DModel",), (("single", "layers"),), patch=(1, 1, 1),
           time_embedder="t_embedding", wrap=True),
    Family("boogu", "Boogu", ("BooguTransformer2DModel",),
           (("double", "double_stream_layers"), ("single", "single_stream_layers")), wrap=True,  # [text, refs, image]
           time_embedder=LUMINA2_TIME),
    Family("pixeldit", "PixelDiT / PiD", ("PixDiT_T2I",), (("double", "patch_blocks"), ("pixel", "pixel_blocks")),
           time_embedder="t_embedder", wrap=True),               # pixel blocks: attention over the patch grid
    Family("cogvideox", "CogVideoX (T2V, I2V)", ("CogVideoXTransformer3DModel",), (("block", "blocks"),),
           patch=lambda dm: (dm.patch_size_t or 1, dm.patch_size, dm.patch_size),
           time_embedder="time_embedding_linear_2", wrap=True),
)
WITHOUT_OPTIONS = "ComfyUI calls its attention without transformer_options, so no attention override reaches it"
UNREACHABLE = {   # class → (family, why no attention override can perturb its image self-attention)
    "PixArtMS": ("PixArt", WITHOUT_OPTIONS), "HunYuanDiT": ("HunyuanDiT", WITHOUT_OPTIONS),
    "ErnieImageModel": ("ERNIE-Image", WITHOUT_OPTIONS),
    "LTXAVModel": ("LTX-2 audio-video", "its blocks run the video and the audio self-attention under one block "
                   "name on a packed audio-video latent, so the image tokens cannot be told apart"),
    "MiniMaxH3Model": ("MiniMax H3", "text, reference, video and audio tokens share one packed sequence and its "
                       "attention inputs are single-use containers, not tensors"),
    "HiDreamO1Transformer": ("HiDream-O1", "its two-pass attention runs the causal text prefix outside the "
                             "override and hands the image queries over without their own keys"),
}


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


def family_of(dm) -> Family | None:
    """The table's row for a diffusion model module (also one built on the meta device), or None (also for an
    UNREACHABLE class built on a reached one: LTX-2's LTXAVModel is an LTXVModel)."""
    if type(dm).__name__ in UNREACHABLE:
        return None
    names = {name for cls in type(dm).__mro__ for name in (cls.__name__, f"{cls.__module__}.{cls.__name__}")}

    def matches(family: Family) -> bool:
        return any(c in names or any(n.endswith("." + c) for n in names) for c in family.classes)
    return next((f for f in FAMILIES if matches(f) and f.accepts(dm)), None)


def architecture_of(dm, node: str) -> Architecture:
    """Describe a diffusion model module (also one built on the meta device, for the layer picker)."""
    family = family_of(dm)
    name = type(dm).__name__
    if family is not None and family.id == "unet":
        layers = unet_self_attention(dm)
        if layers:
            return Architecture("unet", name, tuple(layers), (1, 1, 1), "middle", "middle.0.0", default_block="middle")
    elif family is not None:
        layers = [(place, i) for place, attr in family.stacks for i in range(len(getattr(dm, attr)))]
        middle = format_layers([layers[len(layers) // 2]])
        reference = family.default if _names_a_layer(family.default, layers) else ""
        image = family.image(dm) if callable(family.image) else family.image
        pad = int(getattr(dm, family.image_pad, None) or 0) if family.image_pad else 0
        patch = family.patch(dm) if callable(family.patch) else family.patch or _patch(dm)
        return Architecture(family.id, name, tuple(layers), patch, reference or five_eighths_deep(layers), middle,
                            image == "first", pad, family.dit_keys, family.stacks if family.wrap else (),
                            family.refs_after, family.text_cross, reference or middle)
    supported = ", ".join(f.name for f in FAMILIES)
    why = f" ({UNREACHABLE[name][0]}: {UNREACHABLE[name][1]})" if name in UNREACHABLE else ""
    raise ValueError(f"{node}: this model ({name}) has no self-attention GuideKit can reach{why}. "
                     f"Supported: {supported}.")


def five_eighths_deep(layers: list[Layer]) -> str:
    """PAG's preset where no reference names a layer: the block at 5/8 of the stack's depth (the middle one on
    models of up to 4 blocks).

    On three DiTs trained from one recipe it was the one choice that helped all three (FD −57 / −57 / −77); the
    middle block helped two and hurt one, the middle third hurt one badly (+298): docs/evidence.md, issue 20.
    """
    return format_layers([layers[len(layers) * 5 // 8]])


def _names_a_layer(text: str, layers: list[Layer]) -> bool:
    """Whether a 'place.index' preset is one of this model's layers (a smaller variant may lack it)."""
    place, _, index = text.partition(".")
    return bool(text) and index.isdigit() and (place, int(index)) in layers


def _patch(dm) -> tuple[int, int, int]:
    """(frames, h, w) per token from the model's own patch_size (an int, or a 2- or 3-tuple)."""
    size = dm.patch_size
    if isinstance(size, int):
        return 1, size, size
    size = tuple(size)
    return (1, *size) if len(size) == 2 else size


_ITEM = re.compile(r"^([a-z]+)(?:\.(\d+)(?:-(\d+))?)?(?:\.(\d+)(?:-(\d+))?)?$")


def _span(lo: str | None, hi: str | None) -> range | None:
    if lo is None:
        return None
    a, b = int(lo), int(hi) if hi is not None else int(lo)
    return range(min(a, b), max(a, b) + 1)


def is_default(text: str) -> bool:
    """Whether a layers widget asks for the node's default (empty or 'default')."""
    return text.strip().lower() in ("", "default")


def parse_layers(text: str, arch: Architecture, node: str, input_name: str = "layers") -> tuple[Layer, ...]:
    """The layers a layer list names, in forward order; empty or "default" gives the preset, "all" every layer.

    Each item must name at least one existing layer, else the error lists the model's valid layers.
    """
    text = arch.default_layers if is_default(text) else text.strip().lower()
    if text == "all":
        return tuple(arch.layers)
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
