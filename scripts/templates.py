"""Make the UI-format templates and their thumbnails from the API-format workflows in workflows/api/.

    python3 scripts/host.py run-python scripts/templates.py [--ui] [--force] [--thumbnails] [NAME ...]

--ui writes workflows/NAME.json (the template ComfyUI serves) for every API workflow without one (--force:
rewrite existing ones too), converted with the live server's node definitions. --thumbnails runs each
workflow through the headless runner on the test models (Wan / Qwen-Image workflows on their thin twins,
tests/thin_workflows.py) and saves its first image as workflows/NAME.jpg
(the template browser's thumbnail, at most 256 px a side). Without NAME: every workflow.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image
from thin_workflows import TEST_NODES, at_thin_size  # tests/ (scripts/host.py puts it on PYTHONPATH)

from guidekit.cli.run import ComfyServer
from guidekit.cli.ui_workflow import api_to_ui

REPO = Path(__file__).resolve().parent.parent

WORKFLOWS = REPO / "workflows"
THUMBNAIL_SIDE = 256


def thumbnail(image: Path, out: Path) -> Path:
    with Image.open(image) as im:
        im = im.convert("RGB")
        scale = THUMBNAIL_SIDE / max(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        elif scale >= 2:                                         # tiny demo images: crisp pixels
            factor = int(scale)
            im = im.resize((im.width * factor, im.height * factor), Image.NEAREST)
        im.save(out, quality=88)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*")
    p.add_argument("--ui", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--thumbnails", action="store_true")
    args = p.parse_args(argv)
    apis = sorted((WORKFLOWS / "api").glob("*.json"))
    if args.names:
        apis = [a for a in apis if a.stem in args.names]
    server = ComfyServer(Path(os.environ["COMFYUI_PATH"]), Path(os.environ["GUIDEKIT_MODELS_DIR"]),
                         custom_nodes=TEST_NODES).start()
    try:
        info = server.object_info()
        for api in apis:
            prompt = json.loads(api.read_text())
            ui = WORKFLOWS / api.name
            if args.ui and (args.force or not ui.exists()):
                ui.write_text(json.dumps(api_to_ui(prompt, info), indent=1) + "\n")
                print(f"wrote {ui.relative_to(REPO)}")
            if args.thumbnails:
                with tempfile.TemporaryDirectory() as tmp:
                    result = server.run(at_thin_size(prompt), Path(tmp))
                    out = thumbnail(result.images[0], WORKFLOWS / f"{api.stem}.jpg")
                print(f"wrote {out.relative_to(REPO)} ({result.seconds:.1f} s)")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
