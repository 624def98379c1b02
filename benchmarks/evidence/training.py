"""Shared training utilities: EMA, metadata, safetensors output, a progress bar (plain torch)."""
from __future__ import annotations

import copy
import json
import shlex
import sys
import time
from pathlib import Path

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
