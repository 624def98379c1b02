"""The comparison grid of `python -m guidekit.cli.compare` and the GuideKit Compare node: labelled panels."""
from __future__ import annotations

from PIL import Image, ImageDraw


def labelled_grid(panels: list[tuple[str, Image.Image]], size: int = 256) -> Image.Image:
    """One row: each image scaled to `size` (its aspect kept) with a two-line label above."""
    label_h = 34
    heights = [round(size * im.height / im.width) for _, im in panels]
    grid = Image.new("RGB", (size * len(panels), max(heights) + label_h), "white")
    draw = ImageDraw.Draw(grid)
    for i, ((label, im), h) in enumerate(zip(panels, heights)):
        grid.paste(im.convert("RGB").resize((size, h)), (i * size, label_h))
        for j, line in enumerate(label.split("\n")[:2]):
            draw.text((i * size + 6, 3 + 15 * j), line, fill="black")
    return grid


def add_ratios(rows: list[dict]) -> list[dict]:
    """Each row's seconds per step relative to the 'cfg' row (None when CFG was not run)."""
    base = next((r["seconds_per_step"] for r in rows if r["method"] == "cfg"), None)
    for r in rows:
        r["vs_cfg"] = r["seconds_per_step"] / base if base else None
    return rows


def method_label(method: str, seconds_per_step: float, vs_cfg: float | None) -> str:
    return f"{method}\n{seconds_per_step:.2f} s/step" + (f" ({vs_cfg:.2f}x CFG)" if vs_cfg else "")
