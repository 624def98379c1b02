"""Test-only ComfyUI nodes, loaded by the test servers from tests/host_nodes (never part of the pack).

Wan needs UMT5-XXL (4096 wide) and Qwen-Image Qwen2.5-VL 7B (3584 wide) to encode a prompt; ComfyUI fixes
both encoders' sizes, so no thin one loads. The workflows that use them run in CI with this node in place
of CLIPLoader + CLIPTextEncode (tests/thin_workflows.py): text embeddings of the encoder's width, seeded by
the prompt, so different prompts give different conditioning and the same prompt the same.
"""
import hashlib

import torch


class GuideKitTestTextEmbedding:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True}),
                             "width": ("INT", {"default": 4096, "min": 1, "max": 8192}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 512})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "GuideKit/tests"

    def encode(self, text: str, width: int, tokens: int):
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        embedding = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed))
        return ([[embedding, {"pooled_output": None}]],)


NODE_CLASS_MAPPINGS = {"GuideKitTestTextEmbedding": GuideKitTestTextEmbedding}
