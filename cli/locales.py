"""Write locales/en/nodeDefs.json from the nodes' own schemas (names, descriptions, tooltips).

    python3 scripts/host.py run-python -m guidekit.cli.locales [--check]

The ComfyUI frontend reads custom nodes' locales/<lang>/nodeDefs.json for node names and tooltips; a
translator copies locales/en/ to another language. The English file is generated, never edited by
hand: a test fails when it differs from what the schemas say (--check does the same here).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "locales" / "en" / "nodeDefs.json"


def build() -> dict:
    """{node_id: {display_name, description, inputs: {id: {name, tooltip}}, outputs: {index: {name, tooltip}}}}."""
    from guidekit.cli.inprocess import import_comfy
    import_comfy()
    from guidekit.nodes import NODES
    defs = {}
    for node in NODES:
        s = node.define_schema()
        entry = {"display_name": s.display_name, "description": s.description,
                 "inputs": {i.id: {"name": i.display_name or i.id, "tooltip": i.tooltip} for i in s.inputs},
                 "outputs": {str(k): {"name": o.display_name or o.io_type, "tooltip": o.tooltip}
                             for k, o in enumerate(s.outputs)}}
        defs[s.node_id] = entry
    return defs


def render(defs: dict) -> str:
    return json.dumps(defs, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    defs = build()
    text = render(defs)
    if "--check" in argv:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT.relative_to(REPO)} is out of date: "
                  "run python3 scripts/host.py run-python -m guidekit.cli.locales")
            return 1
        print(f"{OUT.relative_to(REPO)} is up to date")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)} ({len(defs)} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
