"""Train the refiner: rectified flow from each generated sample to a random one of its top-k real neighbours.

Zhao & Schwing (2025) §3.4: min_v E_t ||(x_r − x_g) − v(x_t, t)||², x_t = (1 − t) x_g + t x_r, t ~ U[0, 1],
x_r drawn uniformly from the k nearest real samples of x_g at every step. AdamW, an EMA of the weights,
resumable checkpoints, and one seeded generator for every random draw, so a run is reproducible and a
resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .refiner import Refiner, default_architecture


@dataclass
class TrainSettings:
    iterations: int = 4000
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.01
    ema: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500      # 0: only at the end (when a checkpoint path is given)


@dataclass
class TrainResult:
    refiner: Refiner                  # the EMA weights, in eval mode
    losses: list[float] = field(default_factory=list)   # mean loss per logged window
    iterations: int = 0
    seconds: float = 0.0


def flow_matching_loss(v: torch.nn.Module, x_g: torch.Tensor, x_r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """||(x_r − x_g) − v(x_t, t)||², mean over elements (Zhao & Schwing 2025, §3.4)."""
    tt = t.reshape(-1, *([1] * (x_g.dim() - 1)))
    x_t = (1 - tt) * x_g + tt * x_r
    return (v(x_t, t) - (x_r - x_g)).pow(2).mean()


def pool_equal(sets: list[torch.Tensor], seed: int = 0) -> torch.Tensor:
    """One-for-all training data (App. A): an equal number of samples from each guidance scale's set."""
    n = min(s.shape[0] for s in sets)
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([s[torch.randperm(s.shape[0], generator=gen)[:n]] for s in sets])


def tensor_sha256(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def new_refiner(real: torch.Tensor, architecture: dict | None = None) -> Refiner:
    """A refiner sized to one sample's shape, standardised by the real set's mean and std."""
    return Refiner(architecture or default_architecture(tuple(real.shape[1:])), real.mean().item(),
                   real.std().clamp_min(1e-6).item())


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, beta: float, step: int) -> None:
    b = min(beta, (1 + step) / (10 + step))     # warm-up: early averages are short
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1 - b)


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_refiner(refiner: Refiner, generated: torch.Tensor, real: torch.Tensor, neighbours: torch.Tensor,
                  settings: TrainSettings, checkpoint: Path | None = None, device: str | torch.device = "cpu",
                  on_step: Callable[[int, float], None] | None = None, log_every: int = 50) -> TrainResult:
    """Train `refiner` (resuming from `checkpoint` when it exists) and return its EMA copy.

    generated (N, ...), real (M, ...) in the training space; neighbours (N, k) indexes `real`.
    """
    if neighbours.shape[0] != generated.shape[0]:
        raise ValueError(f"neighbours has {neighbours.shape[0]} rows for {generated.shape[0]} generated samples")
    if generated.shape[1:] != real.shape[1:]:
        raise ValueError(f"generated samples are {tuple(generated.shape[1:])}, real ones {tuple(real.shape[1:])}: "
                         "train in one space")
    device = torch.device(device)
    model = refiner.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    step, losses = 0, []
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, losses = int(state["step"]), list(state["losses"])
    generated, real = generated.float(), real.float()
    k = neighbours.shape[1]
    t0, window = time.perf_counter(), []

    def save() -> None:
        if checkpoint is not None:
            _save_checkpoint(Path(checkpoint), {"model": model.state_dict(), "ema": ema.state_dict(),
                                                "optimizer": opt.state_dict(), "generator": gen.get_state(),
                                                "step": step, "losses": losses})

    while step < settings.iterations:
        rows = torch.randint(generated.shape[0], (settings.batch_size,), generator=gen)
        picks = neighbours[rows, torch.randint(k, (settings.batch_size,), generator=gen)]
        t = torch.rand(settings.batch_size, generator=gen)
        loss = flow_matching_loss(model, generated[rows].to(device), real[picks].to(device), t.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        _ema_update(ema, model, settings.ema, step)
        step += 1
        window.append(loss.item())
        if len(window) == log_every or step == settings.iterations:
            losses.append(sum(window) / len(window))
            window = []
        if on_step is not None:
            on_step(step, losses[-1] if losses else loss.item())
        if settings.checkpoint_every and step % settings.checkpoint_every == 0:
            save()
    save()
    return TrainResult(ema.cpu(), losses, step, time.perf_counter() - t0)

