"""NAG's node name and Settings, apart so that nag.py and both route modules import them with no cycle."""
from __future__ import annotations

import torch

from ..guidance.nag import nag
from ..guidance.schedule import SigmaRange

NODE = "GuideKit NAG"


class Settings:
    def __init__(self, scale: float, tau: float, alpha: float, active: SigmaRange):
        self.scale, self.tau, self.alpha, self.active = scale, tau, alpha, active
        self.last: tuple[torch.Tensor | None, bool] = (None, False)

    def active_at(self, sigmas: torch.Tensor) -> bool:
        """Whether the step of `sigmas` is in range, read once per step for all layers: reading a GPU tensor
        waits for the device, and a UNet asks at each of its cross-attention layers (70 on SDXL)."""
        if self.last[0] is not sigmas:
            self.last = (sigmas, self.active.active(sigmas))
        return self.last[1]

    def combine(self, z_pos: torch.Tensor, z_neg: torch.Tensor) -> torch.Tensor:
        return nag(z_pos.float(), z_neg.float(), self.scale, self.tau, self.alpha).to(z_pos.dtype)
