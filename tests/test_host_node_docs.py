"""Tier 2: every registered node has a help page (web/docs/<node_id>.md) that names it, a description, and a
tooltip on every input and output; the help pages' tables and the English locale are generated from the schemas."""
from pathlib import Path

import pytest

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parent.parent


def test_every_node_has_a_help_page(comfy):
    from guidekit.nodes import NODES
    for node in NODES:
        schema = node.define_schema()
        page = REPO / "web" / "docs" / f"{schema.node_id}.md"
        assert page.is_file(), f"{schema.node_id} has no help page {page.relative_to(REPO)}"
        assert page.read_text().startswith(f"# {schema.display_name}"), page


def test_every_node_has_a_description_and_every_input_and_output_a_tooltip(comfy):
    from guidekit.nodes import NODES
    missing = []
    for node in NODES:
        schema = node.define_schema()
        if not (schema.description or "").strip():
            missing.append(f"{schema.node_id}: description")
        missing += [f"{schema.node_id}.{i.id}" for i in schema.inputs if not (i.tooltip or "").strip()]
        missing += [f"{schema.node_id} output {o.display_name or o.io_type}" for o in schema.outputs
                    if not (o.tooltip or "").strip()]
    assert not missing, f"without a description / tooltip: {missing}"


def test_english_locale_is_generated_from_the_schemas(comfy):
    """locales/en/nodeDefs.json (names and tooltips for the frontend) says exactly what the schemas say."""
    from guidekit.cli import locales
    defs = locales.build()
    assert defs["GuideKitPAG"]["inputs"]["scale"]["tooltip"]
    assert locales.OUT.read_text() == locales.render(defs), \
        "locales/en/nodeDefs.json is out of date: python3 scripts/host.py run-python -m guidekit.cli.locales"


def test_help_page_tables_are_generated_from_the_schemas(comfy):
    """Every help page's inputs and outputs tables say exactly what the node's schema says, and README's table
    lists every node."""
    from guidekit.cli import docs
    from guidekit.nodes import NODES
    pages = docs.build()
    readme = pages.pop(docs.README)
    assert len(pages) == len(NODES)
    assert all(f"](web/docs/{node.node_id()}.md)" in readme[0] for node in NODES)
    for page, (text, _) in pages.items():
        for section in docs.SECTIONS:
            assert text.count(docs.begin_marker(section)) == 1, f"{page.name}: no generated {section} table"
            assert text.count(docs.end_marker(section)) == 1, f"{page.name}: no end of the {section} table"
    assert docs.stale({docs.README: readme, **pages}) == [], \
        "help pages out of date: python3 scripts/host.py run-python -m guidekit.cli.docs"


def test_help_page_check_catches_a_table_that_differs_from_the_schema(comfy):
    """A default or tooltip edited by hand, or a row dropped, is caught; regenerating restores the page."""
    from guidekit.cli import docs
    from guidekit.nodes import NODES
    schema = next(s for s in (n.define_schema() for n in NODES) if s.node_id == "GuideKitPAG")
    scale = next(i for i in schema.inputs if i.id == "scale")
    text = (REPO / "web" / "docs" / "GuideKitPAG.md").read_text()
    assert docs.render_page(text, schema) == text
    row = next(line for line in text.splitlines() if line.startswith("| `scale` |"))
    assert f"| {docs._value(scale.default)} |" in row and row.endswith(f"| {docs._cell(scale.tooltip)} |")
    edits = [text.replace(row, row.replace(f"| {docs._value(scale.default)} |", "| `123.0` |")),
             text.replace(row + "\n", ""),
             text.replace(row, row.rsplit("|", 2)[0] + "| edited by hand |")]
    for edited in edits:
        assert edited != text
        assert docs.render_page(edited, schema) == text
    with pytest.raises(ValueError, match="markers"):
        docs.render_page(text.replace(docs.begin_marker("inputs"), ""), schema)


def test_every_help_page_has_family_settings_cost_and_paper(comfy):
    """The help page sections users asked for: settings per model family, cost per step, the paper."""
    from guidekit.nodes import NODES
    gaps = []
    for node in NODES:
        node_id = node.define_schema().node_id
        text = (REPO / "web" / "docs" / f"{node_id}.md").read_text()
        for heading in ("## Settings by model family", "## Cost per step", "## Paper"):
            body = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0] if heading + "\n" in text else ""
            if len(body.strip()) < 20:
                gaps.append(f"{node_id}: {heading}")
        family = text.split("## Settings by model family", 1)[-1]
        gaps += [f"{node_id}: no {m}" for m in ("SD1.5", "SDXL", "Flux") if m not in family]
    assert not gaps, gaps


def test_every_node_has_a_template_and_every_template_a_thumbnail_and_api_twin(comfy):
    import json

    from guidekit.nodes import NODES
    templates = sorted((REPO / "workflows").glob("*.json"))
    used = {n["type"] for t in templates for n in json.loads(t.read_text())["nodes"]}
    assert [n.define_schema().node_id for n in NODES if n.define_schema().node_id not in used] == []
    assert [t.name for t in templates if not t.with_suffix(".jpg").is_file()] == []
    assert [t.name for t in templates if not (REPO / "workflows" / "api" / t.name).is_file()] == []
