"""Train the refiner: rectified flow from each generated sample to a random one of its top-k real neighbours.

Zhao & Schwing (2025) §3.4: min_v E_t ||(x_r − x_g) − v(x_t, t)||², x_t = (1 − t) x_g + t x_r, t ~ U[0, 1],
x_r drawn uniformly from the k nearest real samples of x_g at every step. AdamW, an EMA of the weights,
resumable checkpoints, and one seeded generator for every random draw, so a run is reproducible and a
resumed run continues exactly where it stopped.

Data-parallel (torchrun, PyTorch DDP): when torch.distributed is initialised, every rank draws the whole
global batch from the same seeded stream and trains on its own equal slice; DDP averages the gradients, so
each step is the one-process step for the same global batch and seed (up to the order of float sums), and
the optimizer, EMA and generator stay identical on every rank. Checkpoints hold the global step and the
generator: a run resumes at any world size that divides the batch. Rank 0 writes the files.
"""
from __future__ import annotations

import copy
import gc
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


def _world() -> tuple[int, int]:
    """(world size, rank) of the initialised process group, (1, 0) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_refiner(refiner: Refiner, generated: torch.Tensor, real: torch.Tensor, neighbours: torch.Tensor,
                  settings: TrainSettings, checkpoint: Path | None = None, device: str | torch.device = "cpu",
                  on_step: Callable[[int, float], None] | None = None, log_every: int = 50) -> TrainResult:
    """Train `refiner` (resuming from `checkpoint` when it exists) and return its EMA copy.

    generated (N, ...), real (M, ...) in the training space; neighbours (N, k) indexes `real`. Training runs in
    the refiner's dtype (float32 unless the refiner was converted). Under torch.distributed every rank calls
    this with the same data, settings and initial weights; `settings.batch_size` is the global batch.
    """
    if neighbours.shape[0] != generated.shape[0]:
        raise ValueError(f"neighbours has {neighbours.shape[0]} rows for {generated.shape[0]} generated samples")
    if generated.shape[1:] != real.shape[1:]:
        raise ValueError(f"generated samples are {tuple(generated.shape[1:])}, real ones {tuple(real.shape[1:])}: "
                         "train in one space")
    world, rank = _world()
    if settings.batch_size % world:
        raise ValueError(f"the global batch ({settings.batch_size}) must be divisible by the number of processes "
                         f"({world}): every process trains on an equal slice")
    per_rank = settings.batch_size // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    device = torch.device(device)
    model = refiner.to(device).train()
    dtype = next(model.parameters()).dtype
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    step, losses = 0, []
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"].cpu())
        step, losses = int(state["step"]), list(state["losses"])
    generated, real = generated.to(dtype), real.to(dtype)
    net = model
    if world > 1:                 # DDP: rank 0's weights broadcast once, gradients averaged over the ranks
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    k = neighbours.shape[1]
    t0, window = time.perf_counter(), []

    def save() -> None:
        if checkpoint is not None and rank == 0:
            _save_checkpoint(Path(checkpoint), {"model": model.state_dict(), "ema": ema.state_dict(),
                                                "optimizer": opt.state_dict(), "generator": gen.get_state(),
                                                "step": step, "losses": losses, "batch_size": settings.batch_size,
                                                "world_size": world})

    while step < settings.iterations:
        rows = torch.randint(generated.shape[0], (settings.batch_size,), generator=gen)   # the global batch,
        picks = neighbours[rows, torch.randint(k, (settings.batch_size,), generator=gen)]   # drawn on every rank
        t = torch.rand(settings.batch_size, generator=gen)
        rows, picks, t = rows[mine], picks[mine], t[mine]                                  # this rank's slice
        loss = flow_matching_loss(net, generated[rows].to(device), real[picks].to(device), t.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        _ema_update(ema, model, settings.ema, step)
        step += 1
        window.append(loss.item())
        if len(window) == log_every or step == settings.iterations:
            mean = sum(window) / len(window)
            if world > 1:         # the mean over equal slices = the global batch's mean
                total = torch.tensor([mean], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(total)
                mean = total.item() / world
            losses.append(mean)
            window = []
        if on_step is not None:
            on_step(step, losses[-1] if losses else loss.item())
        if settings.checkpoint_every and step % settings.checkpoint_every == 0:
            save()
    save()
    if world > 1:                 # free DDP (its reducer holds the process group) now, not at interpreter exit,
        del net                   # where gloo's threads can end in "terminate called without an active exception"
        gc.collect()
    return TrainResult(ema.cpu(), losses, step, time.perf_counter() - t0)

