"""Shared training utilities: EMA (constant and power-function), metadata, safetensors output, a progress
bar (plain torch)."""
from __future__ import annotations

import copy
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "benchmarks" / "weights"


class EMA:
    """Exponential moving average of weights with the usual warm-up: β_i = min(β, (1 + i) / (10 + i))."""

    def __init__(self, model: torch.nn.Module, beta: float):
        self.beta = beta
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.steps = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        b = min(self.beta, (1 + self.steps) / (10 + self.steps))
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1 - b)
        for b_ema, b_src in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b_src)


class PowerEMA(EMA):
    """Power-function EMA (Karras et al. 2024, EDM2 §3.1): β_t = (1 − 1/t)^(γ+1), γ set by the relative std.

    The averaging window grows with training (it always covers the last `std` fraction of it, roughly), so
    an early snapshot is not dominated by the random initialisation. γ solves std² = (γ+1)/((γ+2)²(γ+3)),
    the power profile's relative standard deviation (EDM2, eq. 123), as the real root of a cubic.
    """

    def __init__(self, model: torch.nn.Module, std: float):
        super().__init__(model, 0.0)
        t = std ** -2               # (γ+2)²(γ+3) = t(γ+1)  ⇔  γ³ + 7γ² + (16 − t)γ + (12 − t) = 0
        roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
        self.gamma = float(roots.real[np.abs(roots.imag) < 1e-9].max())

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        b = (1 - 1 / self.steps) ** (self.gamma + 1)
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1 - b)
        for b_ema, b_src in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b_src)


def progress(total: int, desc: str, quiet: bool = False):
    return tqdm(range(total), desc=desc, disable=quiet, mininterval=2.0, dynamic_ncols=True)


def training_command() -> str:
    """The command that reproduces this run, as the README writes it (script path relative to the repo)."""
    script = Path(sys.argv[0]).resolve()
    shown = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else sys.argv[0]
    return "python3 scripts/host.py run-python " + shlex.join([shown, *sys.argv[1:]])


def save_weights(path: Path, state: dict[str, torch.Tensor], kind: str, seconds: float, data_sha256: str,
                 **extra) -> Path:
    """Write weights with their provenance: the training command, data hash, time and settings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"guidekit.kind": kind, "guidekit.command": training_command(), "guidekit.data_sha256": data_sha256,
            "guidekit.train_seconds": f"{seconds:.1f}", "guidekit.trained_at": time.strftime("%Y-%m-%d")}
    for key, value in extra.items():
        meta[f"guidekit.{key}"] = value if isinstance(value, str) else json.dumps(value)
    save_file({k: v.detach().contiguous().float() for k, v in state.items()}, str(path), metadata=meta)
    return path
