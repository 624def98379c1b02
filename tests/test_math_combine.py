"""Tier 1: the shared guidance rule and schedules, pure torch (no ComfyUI)."""
import ast
from pathlib import Path

import pytest
import torch

from guidekit.guidance.combine import cfg, extrapolate, rescale
from guidekit.guidance.schedule import SigmaRange, percent_range

from guidance_helpers import rand

REPO = Path(__file__).resolve().parent.parent


def test_cfg_is_the_extrapolation_with_one_term():
    c, u = rand(2, 4, 8, 8, seed=1), rand(2, 4, 8, 8, seed=2)
    torch.testing.assert_close(cfg(c, u, 5.0), extrapolate(u, [(5.0, c, u)]))
    torch.testing.assert_close(cfg(c, u, 1.0), c)
    torch.testing.assert_close(cfg(c, u, 0.0), u)


def test_autoguidance_lerp_matches_the_rule():
    # Karras et al. 2024, eq. 2: D_w = D_weak + w (D_main - D_weak) == D_main + (w - 1)(D_main - D_weak)
    main, weak, w = rand(3, 2, seed=3), rand(3, 2, seed=4), 2.3
    torch.testing.assert_close(extrapolate(main, [(w - 1.0, main, weak)]), torch.lerp(weak, main, w))


def test_terms_add_up_and_zero_scale_is_a_no_op():
    base, p1, n1, p2, n2 = (rand(4, 3, seed=s) for s in range(5))
    expected = base + 2.0 * (p1 - n1) - 0.5 * (p2 - n2)
    torch.testing.assert_close(extrapolate(base, [(2.0, p1, n1), (-0.5, p2, n2)]), expected)
    assert extrapolate(base, [(0.0, p1, n1)]) is base


def test_rescale_matches_reference_std_per_sample():
    guided = rand(3, 4, 8, 8, seed=5) * torch.tensor([1.0, 3.0, 0.5]).view(3, 1, 1, 1)
    reference = rand(3, 4, 8, 8, seed=6)
    full = rescale(guided, reference, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), reference.std(dim=(1, 2, 3)))
    assert rescale(guided, reference, 0.0) is guided
    half = rescale(guided, reference, 0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * guided)


def test_sigma_range():
    r = SigmaRange(sigma_high=10.0, sigma_low=1.0)
    assert r.active(10.0) and r.active(1.0) and r.active(torch.tensor([5.0, 5.0]))
    assert not r.active(10.5) and not r.active(0.99)
    assert SigmaRange().active(1e6) and SigmaRange().active(0.0)
    with pytest.raises(ValueError, match="empty"):
        SigmaRange(sigma_high=1.0, sigma_low=2.0)


@pytest.mark.parametrize("start,end", [(-0.1, 0.5), (0.2, 1.5), (0.8, 0.2)])
def test_percent_range_rejects_bad_input(start, end):
    with pytest.raises(ValueError):
        percent_range(start, end)
    assert percent_range(0.0, 1.0) == (0.0, 1.0)


@pytest.mark.parametrize("package", ["guidance", "postprocess"])
def test_pure_packages_do_not_import_comfyui(package):
    """guidance/ and postprocess/ never import ComfyUI modules (ARCHITECTURE.md, layers and rules)."""
    host_modules = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "node_helpers"}
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in host_modules, f"{path} imports {name}"


def test_pack_root_imports_without_comfyui():
    """The pack's __init__ registers lazily, so the runner and the math import with no host on sys.path."""
    import subprocess
    import sys
    code = ("import os, sys; root = os.path.realpath(os.environ['COMFYUI_PATH']); "
            "sys.path = [p for p in sys.path if os.path.realpath(p or '.') != root]; "
            "import guidekit, guidekit.cli.run, guidekit.guidance.combine; "
            "assert 'comfy' not in sys.modules and 'comfy_api' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
