"""Tier 2: every registered node has a help page (web/docs/<node_id>.md) that names it."""
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
