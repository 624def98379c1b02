"""ComfyUI glue: every GuideKit node, registered through the V3 extension API."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .catalog import NODES
from .flow_refiner import register_refiner_folder
from .loss_networks import register_model_folders
from .web_routes import register_routes


class GuideKitExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_model_folders()
        register_refiner_folder()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_model_folders()          # not every ComfyUI calls on_load; registering twice is a no-op
        register_refiner_folder()
        register_routes()                 # the frontend extension's routes, when a server runs
        return list(NODES)
