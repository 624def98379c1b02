"""Tier 2: every registered node has a help page (web/docs/<node_id>.md) that names it, a description, and a
tooltip on every input and output."""
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
    import importlib.util
    spec = importlib.util.spec_from_file_location("guidekit_locales", REPO / "scripts" / "locales.py")
    locales = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(locales)
    defs = locales.build()
    assert defs["GuideKitPAG"]["inputs"]["scale"]["tooltip"]
    assert locales.OUT.read_text() == locales.render(defs), \
        "locales/en/nodeDefs.json is out of date: python3 scripts/host.py run-python scripts/locales.py"


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
