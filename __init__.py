"""GuideKit: diffusion guidance methods for ComfyUI (registration only; see README.md).

Nothing here imports ComfyUI at module level, so `guidance/`, `postprocess/` and the headless runner
(`python -m guidekit.cli.run`) import without a host; ComfyUI calls `comfy_entrypoint` when it loads us.
"""
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI V3 entry point: the extension that lists GuideKit's nodes."""
    from .nodes import GuideKitExtension
    return GuideKitExtension()
