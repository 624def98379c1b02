"""ComfyUI glue: every GuideKit node, registered through the V3 extension API."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .autoguidance import AutoguidanceGK, AutoguidanceGuiderGK, DegradedModelGK
from .compare import CompareGK
from .demo_mnist import MNISTDemoLoader, MNISTDigits
from .flow_refiner import NODES as REFINER_NODES, register_refiner_folder
from .icg import IndependentConditionGuidanceGK
from .loss_guidance import LossGuidanceGK
from .loss_networks import register_model_folders
from .loss_terms import LOSS_NODES
from .pag import PerturbedAttentionGuidanceGK
from .sag import SelfAttentionGuidanceGK
from .seg import SmoothedEnergyGuidanceGK
from .sims import SIMSLoRAGK
from .tsg import TimestepGuidanceGK
from .web_routes import register_routes

NODES: list[type[io.ComfyNode]] = [PerturbedAttentionGuidanceGK, SmoothedEnergyGuidanceGK, SelfAttentionGuidanceGK,
                                   AutoguidanceGK, AutoguidanceGuiderGK, DegradedModelGK, SIMSLoRAGK,
                                   IndependentConditionGuidanceGK, TimestepGuidanceGK,
                                   LossGuidanceGK, *LOSS_NODES, *REFINER_NODES,
                                   CompareGK, MNISTDemoLoader, MNISTDigits]


class GuideKitExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_model_folders()
        register_refiner_folder()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_model_folders()          # ComfyUI 0.3.75 never calls on_load; registering twice is a no-op
        register_refiner_folder()
        register_routes()                 # the frontend extension's routes, when a server runs
        return list(NODES)
