"""Tier 1: pyproject.toml carries what the Comfy Registry reads (comfy-cli's config parser and \
`comfy node validate`)."""
import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent


def test_pyproject_has_the_registry_fields():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["name"] and len(project["name"]) < 100 and not project["name"][0].isdigit()
    assert project["description"] and (REPO / project["license"]["file"]).is_file()
    assert project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["includes"] == []
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    assert (REPO / comfy["web"] / "guidekit.js").is_file()


def test_requirements_txt_lists_the_same_dependencies():
    """Manager installs read requirements.txt, the Registry reads pyproject: they must agree."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()
             if line.split("#")[0].strip()]
    assert sorted(lines) == sorted(meta["project"]["dependencies"])
