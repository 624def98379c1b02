"""Every file GuideKit reads on a user's behalf, resolved inside the folders ComfyUI's admin configured.

A workflow is untrusted input (shared files, the HTTP API), so a file name is never a path: it must be
one of the names the folder lists, its real path (links followed) must stay inside one of the folder's
configured directories, and every refusal reads the same whether or not something exists at that name,
so an error cannot be used to probe the server's disk. Weight files that do not parse give the node,
input and file, never the deserializer's raw error. SECURITY.md lists what the pack reads and writes.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import folder_paths
import torch
from safetensors import safe_open
from safetensors.torch import load_file


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    real = path.resolve()
    return any(real == root.resolve() or root.resolve() in real.parents for root in roots)


def model_file(folder: str, name: str, node: str, input_name: str) -> Path:
    """The file a loader's widget names in ComfyUI model folder `folder`, or one error that reveals nothing."""
    refusal = ValueError(f"{node}: input '{input_name}' = {_shown(name)} is not a file of the '{folder}' model "
                         f"folder; put the file in ComfyUI/models/{folder}/, refresh, and pick it from the list")
    try:
        listed = folder_paths.get_filename_list(folder)
    except KeyError:
        raise refusal from None
    if not isinstance(name, str) or name not in listed:
        raise refusal
    found = folder_paths.get_full_path(folder, name)
    roots = [Path(p) for p in folder_paths.get_folder_paths(folder)]
    if found is None or not _inside(Path(found), roots):
        raise refusal
    return Path(found)


def pack_file(directory: Path, names: list[str], name: str, node: str, input_name: str) -> Path:
    """One of the pack's own files `names` in `directory` (e.g. the MNIST demo weights), nothing else."""
    path = directory / name if isinstance(name, str) else directory
    if name not in names or not path.is_file() or not _inside(path, [directory]):
        raise ValueError(f"{node}: input '{input_name}' = {_shown(name)} is not one of the pack's files "
                         f"{names}; pick one from the list")
    return path


def input_subfolder(text: str, node: str, input_name: str) -> Path:
    """A folder inside ComfyUI's input directory, named relative to it (links may not lead out)."""
    root = Path(folder_paths.get_input_directory())
    relative = Path(text.strip())
    folder = root / relative
    if relative.is_absolute() or ".." in relative.parts or not folder.is_dir() or not _inside(folder, [root]):
        raise ValueError(f"{node}: input '{input_name}' = {_shown(text)} is not a folder inside ComfyUI's input "
                         "folder; give a folder name relative to ComfyUI/input (upload the images there)")
    return folder


def files_inside(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """The files of `folder` with these suffixes whose real path stays inside it (sorted; links out skipped)."""
    allowed = {s.lower() for s in suffixes}
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in allowed and p.is_file() and _inside(p, [folder]))


def metadata_of(path: Path, node: str, input_name: str, name: str) -> dict:
    """A safetensors file's metadata, or the node's error saying the file cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:                      # the deserializer's own error types differ by version
        raise unreadable(node, input_name, name, e) from e


def tensors_of(path: Path, node: str, input_name: str, name: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as ordinary (autograd-ready) CPU tensors, or the node's error."""
    try:
        with torch.inference_mode(False):
            return load_file(str(path), device="cpu")
    except Exception as e:
        raise unreadable(node, input_name, name, e) from e


def unreadable(node: str, input_name: str, name: str, error: Exception) -> ValueError:
    """The error for a weights file that cannot be read: node, input, file and what is wrong, in one line."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return ValueError(f"{node}: input '{input_name}' = {_shown(name)} cannot be read as safetensors weights "
                      f"({reason}); the file may be empty, truncated or of another format: save or download it again")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
