"""Autoguidance: guide a model with a weaker version of itself (Karras et al. 2024, arXiv 2406.02507).

The weak model gets the *same* conditioning; CFG is the special case where it is an unconditional model.
"""
from __future__ import annotations

import torch


def autoguidance(main: torch.Tensor, weak: torch.Tensor, w: float) -> torch.Tensor:
    """D_w = D_weak + w·(D_main − D_weak); w = 1 is the main model alone."""
    # Karras et al. 2024, eq. 2 (edm2 generate_images.py: gnet(x).lerp(net(x), guidance))
    return weak + w * (main - weak)


def autoguidance_term(w: float) -> float:
    """The scale of (D_main − D_weak) added on top of another guided result, e.g. CFG: w − 1.

    out = CFG(D_c, D_u) + (w − 1)·(D_main − D_weak), so with CFG off (D_u = D_c) out = D_w exactly.
    """
    return w - 1.0
