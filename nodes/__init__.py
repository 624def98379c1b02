"""ComfyUI glue: every GuideKit node, registered through the V3 extension API."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .demo_mnist import MNISTDemoLoader, MNISTDigits
from .pag import PerturbedAttentionGuidanceGK
from .sag import SelfAttentionGuidanceGK
from .seg import SmoothedEnergyGuidanceGK

NODES: list[type[io.ComfyNode]] = [PerturbedAttentionGuidanceGK, SmoothedEnergyGuidanceGK, SelfAttentionGuidanceGK,
                                   MNISTDemoLoader, MNISTDigits]


class GuideKitExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
