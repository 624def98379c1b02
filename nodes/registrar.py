"""The one registrar behind every method that guides away from a second prediction.

A method declares only how to get the prediction it guides away from (a `Negative`) and its scale schedule
σ → s. `register` does the rest on the patched clone: it chains whatever batch function was registered
before (core nodes, other GuideKit nodes), skips all extra work outside the active σ range or at scale 0,
keeps this step's predictions, and combines through `guidance/combine` after CFG:

    extra term      out = CFG + s(σ)·(D_pos − D_neg)             PAG, SEG, SAG, Autoguidance, SIMS
    replace uncond  the negative fills the unconditional slot, so CFG's D_u + w·(D_c − D_u) becomes
                    D_neg + w·(D_c − D_neg), w the sampler's cfg   ICG, TSG (scale None)
                    and, given a scale, it is shifted to D_c + s·(D_c − D_neg): PAG/SEG 'replace uncond'

The negative runs as extra rows of the sampler's own model call when it can and the method asks for it
(one bigger call), otherwise in a call of its own after CFG (also when a guider bypasses the batch
function). ARCHITECTURE.md follows one sampling step through this module.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import comfy.samplers
import torch

from ..guidance.combine import extrapolate, rescale
from ..guidance.schedule import SigmaRange

UNCOND_TAKEN = "guidekit_replaces_uncond"    # model_options flag: one node may own the uncond slot
Scale = Callable[[torch.Tensor], float]      # σ → scale of the term


class Negative:
    """How a method obtains the prediction it guides away from, at one sampling step (override what applies).

    `args` are ComfyUI's: the batch function's (conds, input, sigma, model, model_options) inside the
    sampler's call, the post-CFG function's (cond, uncond, cond_denoised, uncond_denoised, denoised, input,
    sigma, model, model_options, cond_scale) after it.
    """

    def setup(self, m) -> None:
        """Anything the method registers on the patched clone besides the registrar's hooks."""

    def batch(self, args: dict, row: int) -> tuple[list, dict] | None:
        """The negative as row `row` of the sampler's call: (its conditioning, model_options for the whole call
        whose hooks act on that row); None when it cannot ride along."""
        return None

    def observe(self, args: dict) -> dict | None:
        """model_options for the sampler's own call when the method records something there (SAG)."""
        return None

    def alone(self, args: dict) -> torch.Tensor:
        """D_neg from a model call of its own, after CFG."""
        raise NotImplementedError

    def pair(self, args: dict, batched: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(D_pos, D_neg) of the term: the conditional prediction and the negative, batched or alone."""
        return args["cond_denoised"], batched if batched is not None else self.alone(args)


@dataclass
class Guidance:
    """One guidance term on a patched model: its negative, when it is active and how strong."""
    node: str
    negative: Negative
    active: SigmaRange
    scale_at: Scale | None                       # None: the sampler's cfg weighs it (replace uncond only)
    replace_uncond: bool = False
    batched: Callable[[torch.Tensor], bool] = lambda x: True      # ride along in the sampler's call?
    rescale_phi: float = 0.0
    uncond_switch: tuple[str, str] | None = None  # (input, fix) named when two nodes claim the uncond slot
    _stash: list = field(default_factory=list)   # [(input tensor, D_neg)] of the current step

    def on(self, sigma: torch.Tensor) -> bool:
        return self.active.active(sigma) and (self.scale_at is None or self.scale_at(sigma) != 0.0)

    def calc_cond_batch(self, args: dict, previous: Callable | None) -> list[torch.Tensor]:
        conds, x, options = args["conds"], args["input"], args["model_options"]
        self._stash.clear()
        weighed_by_cfg = self.scale_at is None
        if (not self.on(args["sigma"]) or conds[0] is None
                or (weighed_by_cfg and (len(conds) < 2 or conds[1] is None))):   # cfg 1: no uncond to replace
            return run_calc(args, previous, conds, options)
        if self.replace_uncond:
            negative, options = self.negative.batch(args, 1)
            out = run_calc(args, previous, [conds[0], negative, *conds[2:]], options)
            self._stash.append((x, out[1]))
            return out
        extra = self.negative.batch(args, len(conds)) if self.batched(x) else None
        if extra is None:
            return run_calc(args, previous, conds, self.negative.observe(args) or options)
        out = run_calc(args, previous, [*conds, extra[0]], extra[1])
        self._stash.append((x, out[-1]))
        return out[:-1]

    def post_cfg(self, args: dict) -> torch.Tensor:
        denoised, x, sigma = args["denoised"], args["input"], args["sigma"]
        stash = [d for source, d in self._stash if source is x]
        self._stash.clear()
        if not self.on(sigma) or args.get("cond") is None:
            return denoised
        scale, cond = self.scale_at(sigma), args["cond_denoised"]
        if self.replace_uncond and stash:
            # CFG ran as n + w·(c − n); shift it to c + s·(c − n), keeping the other post-CFG terms.
            out = extrapolate(denoised, [(1.0 + scale - args["cond_scale"], cond, args["uncond_denoised"])])
        else:
            positive, negative = self.negative.pair(args, stash[0] if stash else None)
            out = extrapolate(denoised, [(scale, positive, negative)])
        if self.rescale_phi:
            out = x - rescale(x - out, x - cond, self.rescale_phi)
        return out


def register(m, guidance: Guidance) -> None:
    """Hook `guidance` into the patched clone `m` (chained after what was there; closures survive clone())."""
    if guidance.replace_uncond:
        claim_uncond(m, guidance.node, *(guidance.uncond_switch or ()))
    previous = m.model_options.get("sampler_calc_cond_batch_function")
    # Closures, not bound methods: ModelPatcher.clone deep-copies model_options, and a deep-copied bound
    # method would carry a copy of the Guidance, cut off from what the batch function stashes.
    m.set_model_sampler_calc_cond_batch_function(lambda args: guidance.calc_cond_batch(args, previous))
    if guidance.scale_at is not None:
        m.set_model_sampler_post_cfg_function(lambda args: guidance.post_cfg(args))
    guidance.negative.setup(m)


def claim_uncond(m, node: str, input_name: str = "", fix: str = "use one of them per sampler") -> None:
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


def denoise(args: dict, cond: list, model_options: dict) -> torch.Tensor:
    """One prediction of the model on `cond` in a call of its own (post-CFG args)."""
    return comfy.samplers.calc_cond_batch(args["model"], [cond], args["input"], args["sigma"], model_options)[0]


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


def step_generator(seed: int, sigma: torch.Tensor) -> torch.Generator:
    """A generator for this step of this run: reproducible, different at every σ."""
    return torch.Generator().manual_seed((seed * 1_000_003 + round(float(sigma.max()) * 1e6)) % (2 ** 63))
