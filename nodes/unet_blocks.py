"""The self-attention layers of a ComfyUI UNet, named by the keys its attn1 patches are looked up with."""
from __future__ import annotations

from comfy.ldm.modules.attention import SpatialTransformer

BlockKey = tuple[str, int, int]     # ("input" | "middle" | "output", block id, transformer index)


def self_attention_keys(diffusion_model) -> list[BlockKey]:
    """Every attn1 of the UNet as (place, id, transformer_index), in ComfyUI's forward order.

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
