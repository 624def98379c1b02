"""Import the real ComfyUI in-process (tests, benchmarks, generators, the refiner trainer's --vae), without
letting it parse our command line. ComfyUI is not an installed package: its folder goes first on sys.path,
the one place outside the tests' conftest where GuideKit edits sys.path."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def comfyui_path() -> Path:
    """The ComfyUI folder under test: $COMFYUI_PATH (scripts/host.py sets it for every command)."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        raise RuntimeError("COMFYUI_PATH is not set: run through `python3 scripts/host.py test` "
                           "or export the variables printed by `python3 scripts/host.py env`")
    return Path(path)


def import_comfy(cpu: bool = True):
    """Put ComfyUI on sys.path, switch it to the CPU (unless `cpu` is False), import it, return `comfy`.
    GUIDEKIT_PYTORCH_ATTENTION=1: ComfyUI's --use-pytorch-cross-attention (PyTorch's fused attention, what
    ComfyUI picks on NVIDIA GPUs; on the CPU it picks its chunked sub-quadratic attention)."""
    root = str(comfyui_path())
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.cpu = cpu or comfy.cli_args.args.cpu
    if os.environ.get("GUIDEKIT_PYTORCH_ATTENTION") == "1":
        comfy.cli_args.args.use_pytorch_cross_attention = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import comfy.sample  # noqa: F401
    import comfy.sd  # noqa: F401

    # ComfyUI's top-level `nodes` module, now, while ComfyUI is first on sys.path: the repo's own `nodes/`
    # package has the same name and shadows it for an import made later from the repo root.
    import nodes
    if Path(nodes.__file__).resolve().parent != Path(root).resolve():
        raise RuntimeError(f"`import nodes` found {nodes.__file__}, not ComfyUI's nodes.py in {root}")
    import torch
    torch.set_flush_denormal(True)
    return comfy
