"""Write the inputs and outputs tables of every help page (web/docs/<NodeId>.md), and README's table of
nodes, from the nodes' schemas.

    python3 scripts/host.py run-python -m guidekit.cli.docs [--check]

Each table sits between two marker comments, which this command finds and fills:

    <!-- inputs: generated from the node's schema by python -m guidekit.cli.docs -->
    | input | type | default | range / options | meaning |
    ...
    <!-- /inputs -->

and likewise `<!-- outputs: ... -->` … `<!-- /outputs -->` where a page has them, and `<!-- nodes: ... -->` …
`<!-- /nodes -->` in README.md (every registered node: its help page, category and the first sentence of its
description). A table lists, per input,
its name, type, default, range or options and tooltip, exactly as `define_schema()` declares them; to change
a row, change the schema and rerun this. Everything outside the markers (what the node does, settings by
model family, cost per step, the paper) is written by hand. A test fails when a page's tables differ from
what the schemas say; --check does the same here (exit 1, naming the pages).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = REPO / "web" / "docs"
README = REPO / "README.md"
COMMAND = "python -m guidekit.cli.docs"
SECTIONS = ("inputs", "outputs")


def begin_marker(section: str) -> str:
    source = "the nodes' schemas" if section == "nodes" else "the node's schema"
    return f"<!-- {section}: generated from {source} by {COMMAND} -->"


def end_marker(section: str) -> str:
    return f"<!-- /{section} -->"


def _region(section: str) -> re.Pattern:
    """The marker pair and what lies between them (the begin marker's wording after the colon may vary)."""
    return re.compile(rf"<!-- {section}:[^\n]*-->\n(.*?)<!-- /{section} -->", re.DOTALL)


def _cell(text: str) -> str:
    """One markdown table cell: no line breaks, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _prose(text: str | None) -> str:
    """A tooltip as table text: `<name>` would be read as an HTML tag (and dropped) by the node library."""
    return (text or "").replace("<", "&lt;")


def _value(value) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float):
        return f"`{value!r}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _io_type(spec) -> str:
    get = getattr(spec, "get_io_type", None)
    return str(get() if callable(get) else getattr(spec, "io_type", ""))


def _default(spec) -> str:
    default = getattr(spec, "default", None)
    return "" if default is None else _value(default)


def _range(spec) -> str:
    """Numbers: min – max (and the step of a float); combos: the options."""
    options = getattr(spec, "options", None)
    if options is not None:
        import comfy.samplers
        if list(options) == list(comfy.samplers.KSampler.SAMPLERS):
            return "ComfyUI's samplers"
        if list(options) == list(comfy.samplers.KSampler.SCHEDULERS):
            return "ComfyUI's schedulers"
        if getattr(spec, "default", None) is None:          # a file list: what is installed, listed at start
            return "listed at run time"
        return ", ".join(_value(o) for o in options)
    lo, hi = getattr(spec, "min", None), getattr(spec, "max", None)
    if lo is None and hi is None:
        return ""
    text = f"{_value(lo)} – {_value(hi)}" if lo is not None and hi is not None else \
        f"≥ {_value(lo)}" if lo is not None else f"≤ {_value(hi)}"
    step = getattr(spec, "step", None)
    if isinstance(getattr(spec, "default", None), float) and step is not None:
        text += f", step {_value(step)}"
    return text


def _name(spec) -> str:
    name = f"`{spec.id}`" if getattr(spec, "id", None) else f"`{spec.display_name}`"
    if spec.display_name and spec.display_name != spec.id:
        name += f" ({spec.display_name})"
    if getattr(spec, "optional", False):
        name += " (optional)"
    return name


def inputs_table(schema) -> str:
    if not schema.inputs:
        return "No inputs.\n"
    rows = ["| input | type | default | range / options | meaning |", "|---|---|---|---|---|"]
    rows += [f"| {_cell(_name(i))} | {_cell(_io_type(i))} | {_cell(_default(i))} | {_cell(_range(i))} "
             f"| {_cell(_prose(i.tooltip))} |" for i in schema.inputs]
    return "\n".join(rows) + "\n"


def outputs_table(schema) -> str:
    if not schema.outputs:
        return "No outputs.\n"
    rows = ["| output | type | meaning |", "|---|---|---|"]
    rows += [f"| {_cell('`' + (o.display_name or o.id or _io_type(o)) + '`')} | {_cell(_io_type(o))} "
             f"| {_cell(_prose(o.tooltip))} |" for o in schema.outputs]
    return "\n".join(rows) + "\n"


TABLES = {"inputs": inputs_table, "outputs": outputs_table}


def nodes_table(all_schemas: list) -> str:
    """README's table: every node, by category, linking its help page, with its description's first sentence."""
    rows = ["| node | category | what it does |", "|---|---|---|"]
    for schema in sorted(all_schemas, key=lambda s: (s.category, s.display_name)):
        text = " ".join((schema.description or "").split())
        first = re.split(r"(?<!\bal\.)(?<=[.!?])\s(?=[A-Z])", text, maxsplit=1)[0]     # not after "et al."
        category = schema.category.removeprefix("GuideKit/").removeprefix("GuideKit") or "general"
        rows.append(f"| [{schema.display_name}](web/docs/{schema.node_id}.md) | {category} | {_cell(_prose(first))} |")
    return "\n".join(rows) + "\n"


def render_readme(text: str, all_schemas: list) -> str:
    if not _region("nodes").search(text):
        raise ValueError(f"README.md: no '{begin_marker('nodes')}' … '{end_marker('nodes')}' markers")
    table = nodes_table(all_schemas)
    return _region("nodes").sub(lambda _m: f"{begin_marker('nodes')}\n{table}{end_marker('nodes')}", text)


def render_page(text: str, schema) -> str:
    """The page with its marked tables regenerated from `schema`; everything else as it was.

    Raises ValueError when the page has no inputs markers (every help page has a generated inputs table)."""
    if not _region("inputs").search(text):
        raise ValueError(f"no '{begin_marker('inputs')}' … '{end_marker('inputs')}' markers")
    for section in SECTIONS:
        table = TABLES[section](schema)
        text = _region(section).sub(lambda _m, s=section, t=table: f"{begin_marker(s)}\n{t}{end_marker(s)}", text)
    return text


def schemas() -> list:
    """Every registered node's schema, with ComfyUI imported in-process."""
    from guidekit.cli.inprocess import import_comfy
    import_comfy()
    from guidekit.nodes import NODES
    return [node.define_schema() for node in NODES]


def build() -> dict[Path, tuple[str, str]]:
    """{page: (text now, text with its tables regenerated)} for every registered node's help page and README."""
    pages, all_schemas = {}, schemas()
    readme = README.read_text()
    pages[README] = (readme, render_readme(readme, all_schemas))
    for schema in all_schemas:
        page = PAGES / f"{schema.node_id}.md"
        if not page.is_file():
            raise FileNotFoundError(f"{schema.node_id} has no help page {page.relative_to(REPO)}")
        text = page.read_text()
        try:
            pages[page] = (text, render_page(text, schema))
        except ValueError as err:
            raise ValueError(f"{page.relative_to(REPO)}: {err}") from None
    return pages


def stale(pages: dict[Path, tuple[str, str]] | None = None) -> list[str]:
    """The help pages (relative paths) whose generated tables differ from the schemas."""
    pages = build() if pages is None else pages
    return [str(p.relative_to(REPO)) for p, (old, new) in sorted(pages.items()) if old != new]


def main(argv: list[str]) -> int:
    try:
        pages = build()
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 1
    out_of_date = stale(pages)
    if "--check" in argv:
        if out_of_date:
            print("out of date (run python3 scripts/host.py run-python -m guidekit.cli.docs):")
            print("\n".join(f"  {p}" for p in out_of_date))
            return 1
        print(f"{len(pages)} help pages are up to date")
        return 0
    for page, (old, new) in pages.items():
        if old != new:
            page.write_text(new)
    print(f"wrote {len(out_of_date)} of {len(pages)} help pages" + "".join(f"\n  {p}" for p in out_of_date))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
