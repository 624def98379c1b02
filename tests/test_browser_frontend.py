"""Tier 4: the real ComfyUI frontend in headless Chromium (Debian's, driven by Playwright) against the real server.

Screenshots go to test-artifacts/ (or $GUIDEKIT_ARTIFACTS).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("GUIDEKIT_ARTIFACTS") or REPO / "test-artifacts")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
PACK_MODULE = "custom_nodes.comfyui-guidekit"
TEMPLATES = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `python3 scripts/host.py setup` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app(browser, server):
    """The ComfyUI page, loaded, with console messages, page errors and failed responses recorded."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.guidekit_log = []
    page.on("console", lambda m: page.guidekit_log.append((m.type, m.text, m.location.get("url", ""))))
    page.on("pageerror", lambda e: page.guidekit_log.append(("pageerror", f"{e}\n{e.stack}", "")))
    page.on("response", lambda r: page.guidekit_log.append(("response", str(r.status), r.url)))
    page.goto(server.url)
    page.wait_for_function("window.app && window.app.graph && window.app.extensions?.length > 0", timeout=120_000)
    close_dialogs(page)                                # the template browser opens for a new user
    page.wait_for_function("window.app.extensions.some(e => e.name === 'GuideKit.NodeTools')", timeout=30_000)
    yield page
    page.close()


def close_dialogs(page) -> None:
    mask = page.locator(".p-dialog-mask")
    try:
        mask.first.wait_for(timeout=10_000)
    except Exception:                                  # no dialog opened: nothing to close
        return
    for _ in range(5):
        if mask.count() == 0:
            return
        close = mask.first.locator("button:not(.pointer-events-none)").filter(has_text="")  # the dialog's corner ×
        close.last.click() if close.count() else page.keyboard.press("Escape")
        page.wait_for_timeout(500)
    assert mask.count() == 0, "a frontend dialog stays open"


def load_template(page, name: str) -> dict:
    """Open a pack template exactly as the template browser does: fetch it from the server, load the graph."""
    return page.evaluate("""async (name) => {
        const r = await fetch(`/api/workflow_templates/comfyui-guidekit/${name}.json`);
        const workflow = await r.json();
        await window.app.loadGraphData(workflow, true, true, name);
        return {status: r.status, workflow};
    }""", name)


def focus(page, node_type: str) -> None:
    """Scroll the canvas so the node is near the top left of the view."""
    page.evaluate("""(type) => { const n = window.app.graph.nodes.find(x => x.type === type);
        const ds = window.app.canvas.ds; ds.scale = 1; ds.offset = [160 - n.pos[0], 160 - n.pos[1]];
        window.app.canvas.setDirty(true, true); window.app.canvas.draw(true, true); }""", node_type)
    page.wait_for_timeout(300)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def test_frontend_loads_our_extension_without_errors(app):
    ours = [entry for entry in app.guidekit_log if entry[0] == "response" and "/extensions/comfyui-guidekit/" in entry[2]]
    assert any(e[2].endswith("guidekit.js") and e[1] == "200" for e in ours), ours
    errors = [e for e in app.guidekit_log if e[0] in ("error", "pageerror")
              and ("guidekit" in (e[1] + e[2]).lower())]
    assert not errors, errors
    assert app.evaluate("window.app.extensions.filter(e => e.name.startsWith('GuideKit')).length") == 1
    screenshot(app, "frontend_loaded")


def test_every_node_is_in_the_library_with_its_tooltips(app, server):
    ours = sorted(k for k, v in server.object_info().items() if v.get("python_module") == PACK_MODULE)
    assert len(ours) >= 24
    defs = app.evaluate("""(ids) => ids.map(id => {
        const def = LiteGraph.registered_node_types[id]?.nodeData;
        if (!def) return [id, 'not registered'];
        const inputs = {...def.input.required, ...(def.input.optional || {})};
        const untipped = Object.entries(inputs).filter(([n, s]) => !(s[1] && s[1].tooltip)).map(([n]) => n);
        return [id, def.description ? untipped : 'no description'];
    })""", ours)
    assert all(problem == [] for _, problem in defs), [d for d in defs if d[1] != []]
    # the node library sidebar: search, find the node, hover it for the preview with its description
    app.get_by_role("button", name="Node Library (n)").click()
    search = app.get_by_placeholder("Search").first
    search.fill("GuideKit PAG")
    entry = app.get_by_text("GuideKit PAG", exact=True).first
    entry.wait_for(timeout=15_000)
    entry.hover()
    app.get_by_text("Perturbed-Attention Guidance", exact=False).first.wait_for(timeout=15_000)
    screenshot(app, "node_library_pag")
    app.get_by_role("button", name="Node Library (n)").click()


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_loads_without_missing_nodes(app, name):
    loaded = load_template(app, name)
    assert loaded["status"] == 200
    state = app.evaluate("""() => {
        const g = window.app.graph;
        return {missing: g.nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type),
                saved: window.app.graph.serialize().nodes.map(n => [n.id, n.type, n.widgets_values ?? []])};
    }""")
    assert state["missing"] == []
    expected = sorted([n["id"], n["type"], n.get("widgets_values") or []] for n in loaded["workflow"]["nodes"])
    assert sorted(state["saved"]) == expected      # every widget value landed; our button adds none


def wait_guidekit(app, node_type: str, expression: str, timeout: int = 20_000):
    """Wait until `expression` (of `n`, the first node of that type, redrawn each time) is truthy; return it."""
    app.wait_for_function(f"""() => {{
        const n = window.app.graph.nodes.find(x => x.type === '{node_type}');
        window.app.canvas.setDirty(true, true); window.app.canvas.draw(true, true);
        return n && n.guidekit && ({expression});
    }}""", timeout=timeout)
    return app.evaluate(f"(() => {{ const n = window.app.graph.nodes.find(x => x.type === '{node_type}'); "
                        f"return ({expression}); }})()")


def set_widget(app, node_type: str, name: str, value) -> None:
    app.evaluate("""([type, name, value]) => {
        const n = window.app.graph.nodes.find(x => x.type === type);
        const w = n.widgets.find(w => w.name === name);
        w.value = value; w.callback?.(value);
    }""", [node_type, name, value])


def test_badge_and_schedule_follow_the_widgets(app):
    load_template(app, "pag_sd15")
    assert wait_guidekit(app, "GuideKitPAG", "n.guidekit.badge") == "+1 pass/step"
    steps = app.evaluate("window.app.graph.nodes.find(x => x.type === 'KSampler').widgets.find(w => w.name === 'steps').value")
    full = wait_guidekit(app, "GuideKitPAG", "n.guidekit.schedule && n.guidekit.schedule.active")
    assert len(full) == steps and all(full)
    set_widget(app, "GuideKitPAG", "mode", "replace uncond")
    assert wait_guidekit(app, "GuideKitPAG", "n.guidekit.badge && n.guidekit.badge.startsWith('+0') && n.guidekit.badge") \
        == "+0 passes/step"
    set_widget(app, "GuideKitPAG", "start_percent", 0.5)
    half = wait_guidekit(app, "GuideKitPAG", "n.guidekit.schedule?.active && !n.guidekit.schedule.active[0] "
                                             "&& n.guidekit.schedule.active")
    schedule = app.evaluate("""async (steps) => (await (await fetch('/api/guidekit/schedule?' + new URLSearchParams({
        folder: 'checkpoints', name: 'guidekit-thin-sd15.safetensors', steps, scheduler: 'normal', sampler: 'euler',
        denoise: 1, start_percent: 0.5, end_percent: 1}))).json())""", steps)
    assert half == schedule["active"] and 0 < sum(half) < steps
    assert app.evaluate("window.app.graph.nodes.find(x => x.type === 'GuideKitPAG').guidekit.schedule.loader.name") \
        == "guidekit-thin-sd15.safetensors"
    focus(app, "GuideKitPAG")
    screenshot(app, "pag_badge_and_schedule")


def test_layer_picker_lists_the_checkpoints_layers_and_writes_the_choice(app):
    load_template(app, "pag_sd15")
    app.evaluate("""() => { const n = window.app.graph.nodes.find(x => x.type === 'GuideKitPAG');
                           n.widgets.find(w => w.name === 'pick layers…').callback(); }""")
    dialog = app.locator("#guidekit-layer-picker")
    dialog.locator("input[value='middle.0.0']").wait_for(timeout=15_000)
    offered = dialog.locator("input").evaluate_all("els => els.map(e => [e.value, e.checked])")
    assert offered == [["input.1.0", False], ["middle.0.0", True], ["output.0.0", False], ["output.1.0", False]]
    screenshot(app, "layer_picker")
    dialog.locator("input[value='middle.0.0']").uncheck()
    dialog.locator("input[value='output.0.0']").check()
    dialog.locator("input[value='output.1.0']").check()
    dialog.get_by_role("button", name="OK").click()
    dialog.wait_for(state="detached", timeout=10_000)
    assert app.evaluate("window.app.graph.nodes.find(x => x.type === 'GuideKitPAG').widgets"
                        ".find(w => w.name === 'layers').value") == "output.0.0, output.1.0"


def test_a_queued_template_shows_its_image(app):
    load_template(app, "mnist_digits")
    app.get_by_role("button", name="Run", exact=True).first.click()
    app.wait_for_function("""() => {
        const n = window.app.graph.nodes.find(x => x.type === 'SaveImage');
        return n && n.imgs && n.imgs.length > 0 && n.imgs[0].complete && n.imgs[0].naturalWidth > 0;
    }""", timeout=180_000)
    size = app.evaluate("""() => { const img = window.app.graph.nodes.find(x => x.type === 'SaveImage').imgs[0];
                                   return [img.naturalWidth, img.naturalHeight, img.src]; }""")
    assert size[:2] == [64, 64] and "/view?" in size[2]
    focus(app, "KSampler")
    screenshot(app, "queued_mnist_digits")
