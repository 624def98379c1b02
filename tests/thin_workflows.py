"""Run the shipped Wan / Qwen-Image workflows on the thin files the fixtures build.

The workflows name the files users download (ComfyUI's own Wan 2.1 and Qwen-Image templates use the same
names) at the models' native sizes. For CI: every such file name becomes its thin twin, the text-encoder
loader and its encode nodes become GuideKitTestTextEmbedding (tests/host_nodes: no thin UMT5-XXL or
Qwen2.5-VL loads), and the latent and step count shrink. Everything else runs as shipped.
"""
from __future__ import annotations

import copy
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TEST_NODES = TESTS / "host_nodes"

THIN_FILES = {
    "wan2.1_t2v_1.3B_fp16.safetensors": "guidekit-thin-wan21-t2v.safetensors",
    "qwen_image_fp8_e4m3fn.safetensors": "guidekit-thin-qwen-image.safetensors",
    "wan_2.1_vae.safetensors": "guidekit-thin-wan21-vae.safetensors",
    "qwen_image_vae.safetensors": "guidekit-thin-wan21-vae.safetensors",
}
TEXT_WIDTH = {"wan": 4096, "qwen_image": 3584}       # CLIPLoader type -> the encoder's hidden width
THIN_SIZE = {"EmptyHunyuanLatentVideo": {"width": 64, "height": 64, "length": 5},
             "EmptySD3LatentImage": {"width": 64, "height": 64}}
THIN_STEPS = 4


def needs_thin_files(prompt: dict) -> bool:
    return any(value in THIN_FILES for node in prompt.values() for value in node["inputs"].values()
               if isinstance(value, str))


def at_thin_size(prompt: dict) -> dict:
    """`prompt` with the substitutions above (unchanged when it names no real-size file)."""
    if not needs_thin_files(prompt):
        return prompt
    out = copy.deepcopy(prompt)
    loaders = {node_id: node for node_id, node in out.items() if node["class_type"] == "CLIPLoader"}
    for node_id, node in list(out.items()):
        inputs = node["inputs"]
        for key, value in inputs.items():
            if isinstance(value, str) and value in THIN_FILES:
                inputs[key] = THIN_FILES[value]
        inputs.update(THIN_SIZE.get(node["class_type"], {}))
        if "steps" in inputs and node["class_type"].startswith("KSampler"):
            inputs["steps"] = min(inputs["steps"], THIN_STEPS)
        clip = inputs.get("clip")
        if node["class_type"] == "CLIPTextEncode" and isinstance(clip, list) and clip[0] in loaders:
            width = TEXT_WIDTH[loaders[clip[0]]["inputs"]["type"]]
            out[node_id] = {"class_type": "GuideKitTestTextEmbedding",
                            "inputs": {"text": inputs["text"], "width": width, "tokens": 8}}
    for node_id in loaders:
        del out[node_id]
    return out
