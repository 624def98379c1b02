"""A second model inside the main model's sampling (Autoguidance, SIMS): the weak pass and its memory.

The weak model is evaluated on the main model's processed conditioning (the *same* condition, as the
papers require) by ComfyUI's own calc_cond_batch, with the weak model's own options and wrappers.
How it lives in memory:
- a different model (another file): an additional model of the patched main one
  (ModelPatcher.set_additional_models), so ComfyUI loads and offloads both together;
- the same loaded checkpoint with the same weights (e.g. a "degraded self" made by GuideKit Degraded
  Model): no second model at all, the weak pass runs on the main weights with the weak options;
- the same loaded checkpoint with *different* weights (main = checkpoint + LoRA, weak = bare; or two LoRA
  strengths): ComfyUI keeps one set of modules per loaded file and patches weights in place, so two such
  models cannot be loaded at once. GuideKit gives the weak one a twin module tree whose parameters share
  the file's unpatched tensors (no file copy, no second copy in RAM); ComfyUI then patches, loads and
  offloads the twin like any other model (on a GPU it holds its own device copy, as any second model does).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import torch

from . import compat, registrar

WEAK_KEY = "guidekit_weak_model"
RUN_KEYS = ("sample_sigmas",)     # per-run transformer_options the guider sets on the main model only


def check_pair(main, weak, node: str, input_name: str = "weak_model") -> None:
    """The weak model must read the same latents with the same conditioning as the main one."""
    a, b = main.model, weak.model
    if type(a) is not type(b):
        raise ValueError(f"{node}: input '{input_name}' is a {type(b).__name__} model but 'model' is a "
                         f"{type(a).__name__}; the weak model must be the same architecture (an earlier "
                         "checkpoint, a smaller sibling, a LoRA strength, or GuideKit Degraded Model)")
    fa, fb = type(a.latent_format), type(b.latent_format)
    if fa is not fb or a.latent_format.latent_channels != b.latent_format.latent_channels:
        raise ValueError(f"{node}: input '{input_name}' works in the {fb.__name__} latent space but 'model' in "
                         f"{fa.__name__}; both must read the same latents (same VAE family)")
    sa, sb = main.get_model_object("model_sampling"), weak.get_model_object("model_sampling")
    same_schedule = _kind(sa) == _kind(sb) and all(
        abs(float(getattr(sa, k)) - float(getattr(sb, k))) <= 1e-3 * abs(float(getattr(sa, k))) + 1e-6
        for k in ("sigma_min", "sigma_max"))
    if not same_schedule:
        raise ValueError(f"{node}: input '{input_name}' uses a different noise schedule ({_kind(sb)[0]}, "
                         f"σ {float(sb.sigma_min):.4g}-{float(sb.sigma_max):.4g}) than 'model' ({_kind(sa)[0]}, "
                         f"σ {float(sa.sigma_min):.4g}-{float(sa.sigma_max):.4g}); apply the same ModelSampling "
                         "node to both")


def _kind(model_sampling) -> tuple[str, ...]:
    """The schedule classes a model_sampling is built from (ComfyUI makes the class on the fly). The prediction
    type (eps, v, x0) may differ: both models are compared as denoised images."""
    return tuple(c.__name__ for c in type(model_sampling).__mro__[1:] if c.__name__.startswith("ModelSampling")) \
        or (type(model_sampling).__name__,)


def same_weights(main, weak) -> bool:
    """True when `weak` runs on exactly the weights `main` loads (same modules, patches and wrappers)."""
    return (weak.model is main.model and weak.patches_uuid == main.patches_uuid
            and weak.weight_wrapper_patches.keys() == main.weight_wrapper_patches.keys()
            and all(weak.weight_wrapper_patches[k] == main.weight_wrapper_patches[k]
                    for k in weak.weight_wrapper_patches)
            and weak.object_patches == main.object_patches)


def _twin_module(module: torch.nn.Module, params: dict[int, torch.nn.Parameter]) -> torch.nn.Module:
    """A module of the same class whose parameters are `params[id(original)]` and whose buffers, config and
    other attributes are shared; every container (hooks, child lists, weight-function lists) is its own, so
    registering a hook or a weight patch on the twin never reaches the original. No deep copy: a model's
    attributes may hold objects that cannot be copied (host buffers, configs that answer every attribute)."""
    twin = module.__class__.__new__(module.__class__)
    state = {key: (copy.copy(value) if isinstance(value, (dict, list, set)) else value)
             for key, value in module.__dict__.items()}
    state["_parameters"] = {name: None if p is None else params[id(p)] for name, p in module._parameters.items()}
    state["_modules"] = {name: None if child is None else _twin_module(child, params)
                         for name, child in module._modules.items()}
    for attr in ("weight_function", "bias_function"):       # load-time state of the patcher that loaded it
        if isinstance(state.get(attr), list):
            state[attr] = []
    if "prev_comfy_cast_weights" in state:
        state["comfy_cast_weights"] = state.pop("prev_comfy_cast_weights")
    if "comfy_patched_weights" in state:
        state["comfy_patched_weights"] = False
    twin.__dict__.update(state)
    return twin


def twin_patcher(weak):
    """A ModelPatcher like `weak` on its own module tree that shares the unpatched weight tensors."""
    base = weak.model
    clean, clean_buffers, objects = compat.unpatched_state(base)
    params = {id(p): torch.nn.Parameter(clean.get(name, p).detach().to(weak.offload_device), requires_grad=False)
              for name, p in base.named_parameters()}
    twin = _twin_module(base, params)
    compat.without_patcher_state(twin)
    for key, buffer in clean_buffers.items():
        owner, _, name = key.rpartition(".")
        twin.get_submodule(owner)._buffers[name] = buffer
    for key, original in objects.items():
        comfy.utils.set_attr(twin, key, original)
    out = compat.clone_onto(weak, twin)
    out.weight_inplace_update = False       # never write into the tensors the file's other users share
    return out


def run_options(patcher, device: torch.device) -> dict:
    """The options a sampler would give `patcher`'s model calls: its own, with its wrappers and callbacks."""
    options = comfy.model_patcher.create_model_options_clone(patcher.model_options)
    to = options.setdefault("transformer_options", {})
    comfy.patcher_extension.merge_nested_dicts(to.setdefault("wrappers", {}), patcher.wrappers, copy_dict1=False)
    comfy.patcher_extension.merge_nested_dicts(to.setdefault("callbacks", {}), patcher.callbacks, copy_dict1=False)
    comfy.samplers.cast_to_load_options(options, device=device, dtype=patcher.model_dtype())
    return options


@dataclass
class WeakModel(registrar.Negative):
    """The weak model as the main model's sampling sees it: the negative of Autoguidance and SIMS."""
    patcher: object
    shares_main_weights: bool
    options: dict = field(default_factory=dict)

    @classmethod
    def attach(cls, main, weak, node: str, input_name: str = "weak_model") -> tuple[object, "WeakModel"]:
        """Clone `main` and make `weak` load, offload and prepare with it; returns (clone, WeakModel)."""
        check_pair(main, weak, node, input_name)
        m = main.clone()
        if same_weights(main, weak):
            return m, cls(weak, True)
        if weak.model is main.model:
            weak = twin_patcher(weak)
        if WEAK_KEY in m.additional_models:
            raise ValueError(f"{node}: 'model' already carries a GuideKit weak model (two dual-model nodes in a "
                             "row); put one dual-model node per sampler")
        m.set_additional_models(WEAK_KEY, [weak])
        return m, cls(weak, False)

    def setup(self, m) -> None:
        # A closure, not a bound method: ModelPatcher.clone deep-copies its callbacks' containers.
        m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, WEAK_KEY,
                                lambda patcher: self.pre_run(patcher))

    def pre_run(self, main_patcher) -> None:
        """Called when sampling starts (both models are loaded by then)."""
        if not self.shares_main_weights:
            self.patcher.pre_run()
        self.options = run_options(self.patcher, main_patcher.load_device)

    def alone(self, args: dict) -> torch.Tensor:
        """D_weak(x; σ, c) on the positive conditioning of this step."""
        run_to = args["model_options"].get("transformer_options", {})
        options = dict(self.options)
        options["transformer_options"] = {**self.options.get("transformer_options", {}),
                                          **{k: run_to[k] for k in RUN_KEYS if k in run_to}}
        model = args["model"] if self.shares_main_weights else self.patcher.model
        return comfy.samplers.calc_cond_batch(model, [args["cond"]], args["input"], args["sigma"], options)[0]
