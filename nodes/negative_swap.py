"""The unconditional slot taken by another negative: ICG's independent condition, TSG's noised time.

Inside the active range the sampler's uncond pass is replaced, so its CFG D_u + w·(D_c − D_u) becomes
the method's D_neg + w·(D_c − D_neg) with w = the sampler's cfg: no extra pass, no unconditional
training. Outside the range (or at cfg 1, where ComfyUI skips the uncond pass) sampling is untouched.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..guidance.schedule import SigmaRange
from .branch import claim_uncond, run_calc

Negative = Callable[[dict], tuple[list, dict]]     # step args → (negative cond list, model_options)


def step_generator(seed: int, sigma: torch.Tensor) -> torch.Generator:
    """A generator for this step of this run: reproducible, different at every σ."""
    return torch.Generator().manual_seed((seed * 1_000_003 + round(float(sigma.max()) * 1e6)) % (2 ** 63))


def replace_uncond(m, node: str, active: SigmaRange, negative: Negative) -> None:
    """Register on the clone `m`: the uncond pass runs `negative`'s cond and options inside `active`."""
    claim_uncond(m, node, "use one of them per sampler")
    previous = m.model_options.get("sampler_calc_cond_batch_function")

    def calc_cond_batch(args: dict) -> list[torch.Tensor]:
        conds = args["conds"]
        if len(conds) < 2 or conds[0] is None or conds[1] is None or not active.active(args["sigma"]):
            return run_calc(args, previous, conds, args["model_options"])
        neg, options = negative(args)
        return run_calc(args, previous, [conds[0], neg, *conds[2:]], options)

    m.set_model_sampler_calc_cond_batch_function(calc_cond_batch)
