"""Every difference between the ComfyUI versions GuideKit supports, in one place (tested: 0.3.75 and 0.33.0).

The rest of the pack calls these functions and never asks which ComfyUI it runs on. Each function detects
the feature it needs (an attribute, a dataclass field), not a version number, so a ComfyUI between or
after the tested ones takes whichever path its code offers.

- Gradients through the model: ComfyUI ≥ 0.4 routes Flux-family RoPE through a comfy_kitchen kernel that
  has no autograd unless `comfy.model_management.in_training` is set (core's Train LoRA node sets it).
- Module trees for a second set of weights: ≥ 0.4 has a dynamic-VRAM ModelPatcher (NVIDIA default) that
  keeps host buffers on the model object; those are load state, never copied into a twin.
- Grouped-query attention: 0.33 hands some families' (OmniGen2) keys and values to the attention call with
  fewer heads than the queries and `enable_gqa=True`; 0.3.75 repeats them per head first.
- Model configs: ≥ 0.4 adds required fields to the DiT parameter dataclasses (Flux `txt_ids_dims`,
  Chroma `vec_in_dim`, HunyuanVideo `meanflow_sum`, Chroma Radiance `use_x0` / `use_sequential_txt_ids`);
  `complete_dit_config` fills them the way ComfyUI's own detection does.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import comfy.model_management
import comfy.model_patcher
import torch

# Attributes a ModelPatcher keeps on the model object it loads (placement, low-VRAM and dynamic-VRAM state).
# A twin module tree starts without them; the patcher that adopts it sets them afresh.
PATCHER_STATE = ("device", "model_loaded_weight_memory", "lowvram_patch_counter", "model_lowvram",
                 "current_weight_patches_uuid", "model_offload_buffer_memory",
                 "dynamic_vbars", "dynamic_pins", "dynamic_patchers")

# Fields later ComfyUI versions require in DiT parameter dataclasses, with the value ComfyUI's detection
# gives a model that lacks the feature (Flux.1 and Chroma files have neither text position ids nor, for
# Chroma, a pooled vector input), or a function of the config where detection ties the value to the family:
# Flux 2 puts the text position on its 4th rotary axis (what older hosts do for any 4-axis Flux), and
# HunyuanVideo 1.5 (the one with a vision_in) sums the MeanFlow time embeddings instead of averaging them.
DIT_FIELD_DEFAULTS = {
    "txt_ids_dims": lambda config: [3] if config.get("image_model") == "flux2" else [],
    "vec_in_dim": None,
    "meanflow_sum": lambda config: config.get("vision_in_dim") is not None,
    "use_x0": False,
    "use_sequential_txt_ids": False,
}


@contextlib.contextmanager
def gradients() -> Iterator[None]:
    """Autograd on inside ComfyUI's inference mode, with the host's kernels in their differentiable form.

    Restores the host flag afterwards; ComfyUI runs one prompt at a time, so no other model call sees it.
    """
    flag = hasattr(comfy.model_management, "in_training")
    before = comfy.model_management.in_training if flag else None
    with torch.inference_mode(False), torch.enable_grad():
        if flag:
            comfy.model_management.in_training = True
        try:
            yield
        finally:
            if flag:
                comfy.model_management.in_training = before


def unpatched_state(model: torch.nn.Module) -> tuple[dict, dict, dict]:
    """(parameters, buffers, objects) of `model` as the file has them, from the backups of every patcher
    that has it loaded now (weights patched in place by a LoRA are restored from there)."""
    params, buffers, objects = {}, {}, {}
    for loaded in comfy.model_management.current_loaded_models:
        patcher = loaded.model
        if patcher is None or patcher.model is not model:
            continue
        params.update({key: backup.weight for key, backup in patcher.backup.items()})
        buffers.update(getattr(patcher, "backup_buffers", {}))
        objects.update(patcher.object_patches_backup)
    return params, buffers, objects


def without_patcher_state(model: torch.nn.Module) -> None:
    """Drop the load state a patcher left on a (twin) model object, so a new patcher starts it afresh."""
    for key in PATCHER_STATE:
        model.__dict__.pop(key, None)
    model.current_patcher = None          # the BaseModel's own field: set when a patcher loads it


def clone_onto(patcher, model: torch.nn.Module):
    """A clone of `patcher` (patches, options, wrappers, callbacks) driving another module tree `model`.

    Always a plain ModelPatcher with empty backups: the dynamic-VRAM patcher ties its state to the original
    model object, and the clone must never restore weights into the tensors the twin shares with it.
    """
    if hasattr(patcher, "get_clone_model_override"):
        _, state = patcher.get_clone_model_override()
        return patcher.clone(disable_dynamic=True, model_override=(model, tuple(type(s)() for s in state)))
    comfy.model_patcher.ModelPatcher(model, patcher.load_device, patcher.offload_device)   # sets its load state
    out = patcher.clone()
    out.model = model
    out.backup, out.object_patches_backup = {}, {}
    return out


def image_tokens_first(block) -> bool:
    """Whether a Flux-style double block puts the image tokens before the text (HunyuanVideo on ComfyUI 0.3.x
    builds its blocks with `flipped_img_txt`; later versions put the text first, as Flux does)."""
    return bool(getattr(block, "flipped_img_txt", False))


def ungrouped_keys(args: tuple, kwargs: dict, heads: int) -> tuple[tuple, dict]:
    """An attention call's (q, k, v, ...) and kwargs with grouped-query keys and values repeated to one per
    query head, as enable_gqa computes them (heads-first layout), so a perturbation sees every head."""
    if not (kwargs.get("enable_gqa") and kwargs.get("skip_reshape")):
        return args, kwargs
    def full(t: torch.Tensor) -> torch.Tensor:
        return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)
    kwargs = {key: value for key, value in kwargs.items() if key != "enable_gqa"}
    return (args[0], full(args[1]), full(args[2]), *args[3:]), kwargs


def complete_dit_config(params_class: type, config: dict) -> dict:
    """`config` plus the fields this ComfyUI's `params_class` dataclass requires and `config` lacks."""
    fields = {f.name for f in dataclasses.fields(params_class)}
    added = {k: v(config) if callable(v) else v for k, v in DIT_FIELD_DEFAULTS.items()
             if k in fields and k not in config}
    return {**added, **config}
