"""Labelled sample grids (PIL): one row of digits per method, or one scatter panel per method."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import fractal

LABEL_W = 170


def mnist_grid(rows: list[tuple[str, torch.Tensor]], path: Path, per_row: int = 20, zoom: int = 2) -> Path:
    """Rows of samples (N, 1, H, W) in [0, 1], each labelled on the left."""
    h = rows[0][1].shape[-2] * zoom
    w = rows[0][1].shape[-1] * zoom
    img = Image.new("L", (LABEL_W + per_row * w, len(rows) * h), 255)
    draw = ImageDraw.Draw(img)
    for r, (label, samples) in enumerate(rows):
        draw.text((4, r * h + h // 2 - 5), label, fill=0)
        for c, digit in enumerate(samples[:per_row]):
            pix = (digit[0].clamp(0, 1).numpy() * 255).astype(np.uint8)
            img.paste(Image.fromarray(pix).resize((w, h), Image.NEAREST), (LABEL_W + c * w, r * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _density_background(size: int, extent: float) -> Image.Image:
    xs = torch.linspace(-extent, extent, size)
    grid = torch.stack(torch.meshgrid(xs, -xs, indexing="xy"), dim=-1).reshape(-1, 2)
    logp = fractal.mixture("A").log_prob(grid).reshape(size, size)
    shade = ((logp - logp.max()).clamp(min=-12) / 12 + 1).numpy()         # 0 (low) … 1 (peak)
    return Image.fromarray((255 - shade * 90).astype(np.uint8)).convert("RGB")


def toy_grid(panels: list[tuple[str, torch.Tensor]], path: Path, size: int = 220, extent: float = 1.3,
             columns: int = 4) -> Path:
    """Scatter of 2D samples over the class-A density (grey), one labelled panel each."""
    background = _density_background(size, extent)
    rows = (len(panels) + columns - 1) // columns
    img = Image.new("RGB", (columns * size, rows * (size + 16)), "white")
    draw = ImageDraw.Draw(img)
    for i, (label, points) in enumerate(panels):
        x0, y0 = (i % columns) * size, (i // columns) * (size + 16)
        img.paste(background, (x0, y0 + 16))
        draw.text((x0 + 4, y0 + 2), label, fill=(0, 0, 0))
        px = ((points[:, 0] / extent + 1) / 2 * (size - 1)).round().long()
        py = ((-points[:, 1] / extent + 1) / 2 * (size - 1)).round().long()
        for x, y in zip(px.tolist(), py.tolist()):
            if 0 <= x < size and 0 <= y < size:
                draw.point((x0 + x, y0 + 16 + y), fill=(200, 30, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
