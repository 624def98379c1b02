"""When guidance is active: a closed sigma interval, so the extra branch is skipped outside it."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SigmaRange:
    """Active while sigma_low ≤ σ ≤ sigma_high (sampling runs from high σ to low σ)."""
    sigma_high: float = math.inf
    sigma_low: float = 0.0

    def __post_init__(self) -> None:
        if not (self.sigma_low <= self.sigma_high):
            raise ValueError(f"sigma range is empty: low {self.sigma_low} > high {self.sigma_high}")

    def active(self, sigma: torch.Tensor | float) -> bool:
        """True when the step's σ (the batch's largest, as ComfyUI batches one σ per step) is inside."""
        s = float(sigma.max()) if isinstance(sigma, torch.Tensor) else float(sigma)
        return self.sigma_low <= s <= self.sigma_high


def percent_range(start_percent: float, end_percent: float) -> tuple[float, float]:
    """Validate a start/end percent pair of the schedule (0 = first step, 1 = last)."""
    if not (0.0 <= start_percent <= 1.0 and 0.0 <= end_percent <= 1.0):
        raise ValueError(f"start_percent and end_percent must lie in [0, 1], got {start_percent}, {end_percent}")
    if start_percent > end_percent:
        raise ValueError(f"start_percent {start_percent} is after end_percent {end_percent}")
    return start_percent, end_percent
