"""The refiner: a velocity field v(x_t, t) sized to the data, with its file format.

Points / vectors get a small MLP, images and latents a small UNet (the paper's MLP for 2D, an ADM-style
UNet without attention for MNIST). Data are standardised by the real set's mean and std (stored as
buffers), so one learning rate fits pixels and latents alike. The output layer starts at zero: an
untrained refiner is the identity.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

KIND = "guidekit-flow-refiner"


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t ∈ [0, 1] (scaled to 0-1000 like a diffusion timestep)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float().reshape(-1, 1) * 1000.0 * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class VelocityMLP(nn.Module):
    """v(x, t) for vectors: [x, emb(t)] → SiLU MLP → dx/dt (Zhao & Schwing App. C: a small MLP for 2D)."""

    def __init__(self, dim: int, hidden: int = 256, layers: int = 4, time_dim: int = 64):
        super().__init__()
        self.time_dim = time_dim
        sizes = [dim + time_dim] + [hidden] * layers
        self.body = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x.flatten(1), time_embedding(t, self.time_dim).to(x.dtype)], dim=1)
        for layer in self.body:
            h = F.silu(layer(h))
        return self.out(h).reshape(x.shape)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, time_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class VelocityUNet(nn.Module):
    """v(x, t) for images / latents: ADM-style UNet, no attention, `blocks` res blocks per level."""

    def __init__(self, channels: int, width: int = 32, mults: tuple[int, ...] = (1, 2), blocks: int = 1):
        super().__init__()
        self.width, self.levels = width, len(mults)
        time_dim = 4 * width
        self.time = nn.Sequential(nn.Linear(width, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, ch = [width], width
        for i, m in enumerate(mults):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock(ch, width * m, time_dim))
                ch = width * m
                skips.append(ch)
            self.down.append(level)
            last = i == len(mults) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            if not last:
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, time_dim), ResBlock(ch, ch, time_dim)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            level = nn.ModuleList()
            for _ in range(blocks + 1):
                level.append(ResBlock(ch + skips.pop(), width * m, time_dim))
                ch = width * m
            self.up.append(level)
        self.out_norm, self.out = _norm(ch), nn.Conv2d(ch, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this (inputs are padded to it)."""
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        emb = self.time(time_embedding(t, self.width).to(x.dtype))
        h = self.inp(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample):
            for block in level:
                h = block(h, emb)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for i, level in enumerate(self.up):
            for block in level:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.up) - 1:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.out(F.silu(self.out_norm(h)))[..., :height, :width]


def default_architecture(shape: tuple[int, ...]) -> dict:
    """A network sized to one sample's shape: (D,) → MLP; (C, H, W) → UNet, deeper for larger images."""
    if len(shape) == 1:
        return {"arch": "mlp", "dim": shape[0], "hidden": 256 if shape[0] <= 16 else 512, "layers": 4}
    if len(shape) != 3:
        raise ValueError(f"a refiner needs samples shaped (D,) or (C, H, W), got {tuple(shape)}")
    side = min(shape[1:])
    if side <= 32:
        return {"arch": "unet", "channels": shape[0], "width": 32, "mults": [1, 2], "blocks": 1}
    if side <= 96:
        return {"arch": "unet", "channels": shape[0], "width": 64, "mults": [1, 2, 2], "blocks": 1}
    return {"arch": "unet", "channels": shape[0], "width": 64, "mults": [1, 2, 2, 4], "blocks": 1}


class Refiner(nn.Module):
    """v(x, t) in data units: the network sees (x − mean) / std and its output is scaled back by std."""

    def __init__(self, architecture: dict, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.architecture = dict(architecture)
        arch = architecture["arch"]
        if arch == "mlp":
            self.net = VelocityMLP(architecture["dim"], architecture["hidden"], architecture["layers"])
        elif arch == "unet":
            self.net = VelocityUNet(architecture["channels"], architecture["width"], tuple(architecture["mults"]),
                                    architecture["blocks"])
        else:
            raise ValueError(f"unknown refiner architecture {arch!r} (expected 'mlp' or 'unet')")
        self.register_buffer("data_mean", torch.tensor(float(mean)))
        self.register_buffer("data_std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        return self.net((x - self.data_mean) / self.data_std, t) * self.data_std


@dataclass
class RefinerFile:
    """A loaded refiner with what it was trained for (the file's metadata)."""
    refiner: Refiner
    space: str                        # "pixel", "latent" or "vector"
    sample_shape: tuple[int, ...]     # one training sample: (C, H, W) or (D,)
    latent_format: str = ""           # e.g. the base model's latent format ("SD15", "SDXL", "Flux")
    metadata: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.sample_shape[0]


def save_refiner(path: Path, refiner: Refiner, space: str, sample_shape: tuple[int, ...], latent_format: str = "",
                 **provenance) -> Path:
    """safetensors with the architecture, the space and shape it was trained for, and provenance metadata."""
    if space not in ("pixel", "latent", "vector"):
        raise ValueError(f"space must be 'pixel', 'latent' or 'vector', got {space!r}")
    meta = {"guidekit.kind": KIND, "guidekit.architecture": json.dumps(refiner.architecture),
            "guidekit.space": space, "guidekit.sample_shape": json.dumps(list(sample_shape)),
            "guidekit.latent_format": latent_format}
    for key, value in provenance.items():
        meta[f"guidekit.{key}"] = value if isinstance(value, str) else json.dumps(value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in refiner.state_dict().items()},
              str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_refiner(path: Path) -> RefinerFile:
    """Build the refiner a file describes and load its weights strictly (a clear error on any mismatch)."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("guidekit.kind") != KIND:
        raise ValueError(f"{path.name} is not a GuideKit flow refiner (metadata guidekit.kind = "
                         f"{meta.get('guidekit.kind')!r}); train one with `python -m guidekit.cli.train_refiner`")
    try:
        architecture = json.loads(meta["guidekit.architecture"])
        with torch.device("meta"):              # shapes first: a hostile architecture allocates nothing
            expected = {k: tuple(v.shape) for k, v in Refiner(architecture).state_dict().items()}
        space, shape = meta["guidekit.space"], tuple(int(n) for n in json.loads(meta["guidekit.sample_shape"]))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise ValueError(f"{path.name}: its metadata does not describe a refiner ({type(e).__name__}: {e}); "
                         "train or save it again") from e
    if space not in ("pixel", "latent", "vector"):
        raise ValueError(f"{path.name}: metadata guidekit.space = {space!r}; expected pixel, latent or vector")
    with safe_open(str(path), framework="pt") as f:
        stored = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    missing, unexpected = set(expected) - set(stored), set(stored) - set(expected)
    if missing or unexpected:
        raise ValueError(f"{path.name}: weights do not match the architecture in its metadata "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    for key, size in expected.items():
        if stored[key] != size:
            raise ValueError(f"{path.name}: weight {key} has shape {stored[key]}, the architecture in "
                             f"its metadata needs {size}")
    refiner = Refiner(architecture)
    state = load_file(str(path))
    refiner.load_state_dict(state)
    refiner.eval().requires_grad_(False)
    return RefinerFile(refiner, space, shape, meta.get("guidekit.latent_format", ""), meta)
