"""PAG's, SEG's, TPG's and STG's negative: the conditional pass with chosen self-attention layers (or whole
transformer blocks: nodes/block_hooks.py) perturbed.

Evaluated three ways (same result): "batched" as extra rows of the sampler's own call, "separate" as a
call of its own after CFG (as ComfyUI core's PAG), or in the unconditional slot ("replace uncond": 2 passes
per step, CFG-free). "auto" is separate on the CPU and batched on accelerators (benchmarks/attention_overhead.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..guidance.pag import adaptive_scale
from . import registrar
from .attention_hooks import Perturbation, image_grid, install
from .block_hooks import BlockPerturbation, install_blocks
from .layers import Architecture, Layer, architecture, parse_layers

EVALUATIONS = ["auto", "batched", "separate"]
MODES = ["extra pass", "replace uncond"]


@dataclass
class PerturbedAttention(registrar.Negative):
    """D(x; σ, c) with `perturb` applied to `layers`' self-attention on the negative's rows only."""
    arch: Architecture
    layers: tuple[Layer, ...]
    perturb: Perturbation
    token: object = field(default_factory=object)

    def options(self, model_options: dict, x: torch.Tensor, row: int) -> dict:
        grid = image_grid(self.arch, x.shape)
        if isinstance(self.perturb, BlockPerturbation):
            return install_blocks(model_options, self.arch, self.layers, self.token, self.perturb, [row], grid)
        return install(model_options, self.arch, self.layers, self.token, self.perturb, [row], grid)

    def batch(self, args: dict, row: int) -> tuple[list, dict]:
        return args["conds"][0], self.options(args["model_options"], args["input"], row)

    def alone(self, args: dict) -> torch.Tensor:
        return registrar.denoise(args, args["cond"], self.options(args["model_options"], args["input"], 0))


def batched_on(evaluation: str):
    """`evaluation` → whether a call on x's device runs the negative in the sampler's call."""
    return lambda x: evaluation == "batched" or (evaluation == "auto" and x.device.type != "cpu")


def timestep_scale(model, scale: float, adaptive: float) -> registrar.Scale:
    """σ → PAG's scale, constant or diffusers' adaptive schedule on a 0-1000 timestep axis."""
    if adaptive == 0.0:
        return lambda sigma: scale
    ms = model.get_model_object("model_sampling")
    t_max = float(ms.timestep(ms.sigma_max))
    to_1000 = 1.0 if t_max >= 999.0 else 1000.0 / t_max      # discrete (0-999) and SD3 (σ·1000) as is; Flux σ·1000
    return lambda sigma: adaptive_scale(scale, adaptive, to_1000 * float(ms.timestep(sigma.max())))


def patch_with_branch(model, node: str, perturbation: Perturbation | BlockPerturbation, scale: float, layers: str,
                      start_percent: float, end_percent: float, rescale: float, mode: str, evaluation: str,
                      sigma_start: float = -1.0, sigma_end: float = -1.0, adaptive: float = 0.0):
    """Clone `model` and guide it away from the perturbed pass (PAG, SEG, TPG, STG): the node's whole execute."""
    arch = architecture(model, node)
    negative = PerturbedAttention(arch, parse_layers(layers, arch, node), perturbation)
    active = registrar.sigma_range(model, node, start_percent, end_percent, sigma_start, sigma_end)
    m = model.clone()
    registrar.register(m, registrar.Guidance(node, negative, active, timestep_scale(model, scale, adaptive),
                                             replace_uncond=(mode == MODES[1]), batched=batched_on(evaluation),
                                             rescale_phi=rescale,
                                             uncond_switch=("mode", "set one of them to 'extra pass'")))
    return m
