"""ComfyUI glue: every GuideKit node, registered through the V3 extension API."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .autoguidance import AutoguidanceGK, AutoguidanceGuiderGK, DegradedModelGK
from .demo_mnist import MNISTDemoLoader, MNISTDigits
from .icg import IndependentConditionGuidanceGK
from .pag import PerturbedAttentionGuidanceGK
from .sag import SelfAttentionGuidanceGK
from .seg import SmoothedEnergyGuidanceGK
from .sims import SIMSLoRAGK
from .tsg import TimestepGuidanceGK

NODES: list[type[io.ComfyNode]] = [PerturbedAttentionGuidanceGK, SmoothedEnergyGuidanceGK, SelfAttentionGuidanceGK,
                                   AutoguidanceGK, AutoguidanceGuiderGK, DegradedModelGK, SIMSLoRAGK,
                                   IndependentConditionGuidanceGK, TimestepGuidanceGK,
                                   MNISTDemoLoader, MNISTDigits]


class GuideKitExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
