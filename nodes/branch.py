"""The perturbed conditional branch of PAG and SEG, evaluated three ways, and the guidance rule on top.

- "batched":  extra rows in the same model call as cond/uncond (one bigger call per step);
- "separate": one more model call after CFG, as ComfyUI core's PAG does;
- "replace uncond": the perturbed branch takes the unconditional slot (2 passes per step, CFG-free).
"auto" picks "separate" on the CPU and "batched" on accelerators (benchmarks/attention_overhead.py).
Outside the active sigma range nothing extra runs. The result is ARCHITECTURE.md §1's rule:
out = CFG + s(σ)·(D_cond − D_perturbed), optionally rescaled (Lin et al.).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import comfy.samplers

from ..guidance.combine import rescale
from ..guidance.pag import adaptive_scale
from ..guidance.schedule import SigmaRange
from .attention_hooks import Perturbation, image_grid, install
from .layers import Architecture, Layer, architecture, parse_layers

EVALUATIONS = ["auto", "batched", "separate"]
MODES = ["extra pass", "replace uncond"]
UNCOND_TAKEN = "guidekit_replaces_uncond"    # model_options flag: one node may own the uncond slot


@dataclass
class PerturbedBranch:
    node: str
    arch: Architecture
    layers: tuple[Layer, ...]
    perturb: Perturbation
    active: SigmaRange
    scale_at: Callable[[torch.Tensor], float]       # σ → guidance scale (adaptive schedules)
    rescale_phi: float = 0.0
    evaluation: str = "auto"
    replace_uncond: bool = False
    token: object = field(default_factory=object)
    _stash: list = field(default_factory=list)      # [(input tensor, kind, perturbed D)] of the current step

    def register(self, m) -> None:
        """Hook the patched clone `m`: the batch function (when it adds rows) and the post-CFG rule."""
        if self.replace_uncond:
            claim_uncond(m, self.node, "set one of them to 'extra pass'", input_name="mode")
        if self.replace_uncond or self.evaluation != "separate":
            previous = m.model_options.get("sampler_calc_cond_batch_function")
            m.set_model_sampler_calc_cond_batch_function(lambda args: self.calc_cond_batch(args, previous))
        # Closures, not bound methods: ModelPatcher.clone deep-copies model_options, and a deep-copied
        # bound method would carry a copy of this object, cut off from what the batch function stashes.
        m.set_model_sampler_post_cfg_function(lambda args: self.post_cfg(args))

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        return image_grid(self.arch, x.shape)

    def batched_here(self, x: torch.Tensor) -> bool:
        return self.evaluation == "batched" or (self.evaluation == "auto" and x.device.type != "cpu")

    def calc_cond_batch(self, args: dict, previous: Callable | None) -> list[torch.Tensor]:
        conds, x, sigma = args["conds"], args["input"], args["sigma"]
        self._stash.clear()
        if not self.active.active(sigma) or self.scale_at(sigma) == 0.0 or conds[0] is None:
            return run_calc(args, previous, conds, args["model_options"])
        if self.replace_uncond:
            mo = install(args["model_options"], self.arch, self.layers, self.token, self.perturb, [1], self.grid(x))
            out = run_calc(args, previous, [conds[0], conds[0], *conds[2:]], mo)
            self._stash.append((x, "uncond", out[1]))
            return out
        if not self.batched_here(x):
            return run_calc(args, previous, conds, args["model_options"])
        row = len(conds)
        mo = install(args["model_options"], self.arch, self.layers, self.token, self.perturb, [row], self.grid(x))
        out = run_calc(args, previous, [*conds, conds[0]], mo)
        self._stash.append((x, "extra", out[row]))
        return out[:row]

    def separate_pass(self, args: dict) -> torch.Tensor:
        x = args["input"]
        mo = install(args["model_options"], self.arch, self.layers, self.token, self.perturb, [0], self.grid(x))
        return comfy.samplers.calc_cond_batch(args["model"], [args["cond"]], x, args["sigma"], mo)[0]

    def post_cfg(self, args: dict) -> torch.Tensor:
        denoised, x, sigma = args["denoised"], args["input"], args["sigma"]
        if not self.active.active(sigma) or args.get("cond") is None:
            return denoised
        scale = self.scale_at(sigma)
        if scale == 0.0:
            return denoised
        cond = args["cond_denoised"]
        stash = [entry for entry in self._stash if entry[0] is x]
        self._stash.clear()
        if stash and stash[0][1] == "uncond":
            # CFG ran as p + w·(c − p); shift it to c + s·(c − p), keeping other post-CFG terms.
            out = denoised + (1.0 + scale - args["cond_scale"]) * (cond - args["uncond_denoised"])
        else:
            # A guider that bypasses the batch function (e.g. DualCFG) still gets the branch, separately.
            perturbed = stash[0][2] if stash else self.separate_pass(args)
            out = denoised + scale * (cond - perturbed)
        if self.rescale_phi:
            out = x - rescale(x - out, x - cond, self.rescale_phi)
        return out


def patch_with_branch(model, node, perturbation, scale, layers, start_percent, end_percent, rescale, mode, evaluation,
          sigma_start=-1.0, sigma_end=-1.0, adaptive=0.0):
    """Clone `model` and register a perturbed branch on it (PAG, SEG): the node's whole execute."""
    arch = architecture(model, node)
    chosen = parse_layers(layers, arch, node)
    active = sigma_range(model, node, start_percent, end_percent, sigma_start, sigma_end)
    m = model.clone()
    ms = m.get_model_object("model_sampling")
    t_max = float(ms.timestep(ms.sigma_max))
    to_1000 = 1.0 if t_max >= 999.0 else 1000.0 / t_max      # discrete (0-999) and SD3 (σ·1000) as is; Flux σ·1000

    def scale_at(sigma) -> float:
        if adaptive == 0.0:
            return scale
        return adaptive_scale(scale, adaptive, to_1000 * float(ms.timestep(sigma.max())))

    branch = PerturbedBranch(node, arch, chosen, perturbation, active, scale_at, rescale, evaluation,
                             replace_uncond=(mode == MODES[1]))
    branch.register(m)
    return m


def claim_uncond(m, node: str, fix: str, input_name: str | None = None) -> None:
    """Mark the clone `m` as having its unconditional pass replaced by `node`; only one node may."""
    owner = m.model_options.get(UNCOND_TAKEN)
    if owner:
        where = f"input '{input_name}': " if input_name else ""
        raise ValueError(f"{node}: {where}another GuideKit node ({owner}) before this one already replaces the "
                         f"unconditional pass; {fix}")
    m.model_options[UNCOND_TAKEN] = node


def run_calc(args: dict, previous: Callable | None, conds: list, model_options: dict) -> list[torch.Tensor]:
    """Run the model on `conds` through whatever batch function was registered before ours."""
    if previous is not None:
        return previous({**args, "conds": conds, "model_options": model_options})
    return comfy.samplers.calc_cond_batch(args["model"], conds, args["input"], args["sigma"], model_options)


def sigma_range(model, node: str, start_percent: float, end_percent: float,
                sigma_start: float = -1.0, sigma_end: float = -1.0) -> SigmaRange:
    """The active σ interval from percents of the schedule, each end optionally overridden in σ (≥ 0)."""
    return sigma_range_of(model.get_model_object("model_sampling"), node, start_percent, end_percent,
                          sigma_start, sigma_end)


def sigma_range_of(ms, node: str, start_percent: float, end_percent: float,
                   sigma_start: float = -1.0, sigma_end: float = -1.0) -> SigmaRange:
    """sigma_range for a model_sampling object (what the schedule view in the frontend asks for)."""
    if start_percent > end_percent:
        raise ValueError(f"{node}: input 'start_percent' ({start_percent}) is after 'end_percent' ({end_percent}); "
                         "swap them (0 = first step, 1 = last)")
    high = sigma_start if sigma_start >= 0 else float(ms.percent_to_sigma(start_percent))
    low = sigma_end if sigma_end >= 0 else float(ms.percent_to_sigma(end_percent))
    if low > high:
        raise ValueError(f"{node}: inputs 'sigma_start' / 'sigma_end' give an empty range (σ from {high} down to "
                         f"{low}); sigma_start must be the larger (sampling runs from high σ to low σ)")
    return SigmaRange(sigma_high=high, sigma_low=low)
