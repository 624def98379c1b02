"""Tier 4: the real ComfyUI frontend in headless Chromium (Debian's, driven by Playwright) against the real server.

Every test runs once per frontend (the `frontend_server` fixture in conftest.py): the one the host ships with and,
when $GUIDEKIT_EXTRA_FRONTEND names one, that frontend package's static folder served with --front-end-root.
Screenshots go to test-artifacts/<frontend version>/ (or $GUIDEKIT_ARTIFACTS).
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
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PACK_MODULE = "custom_nodes.comfyui-guidekit"
TEMPLATES = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
CHECKPOINT = "guidekit-thin-sd15.safetensors"
# PrimeVue dialogs (frontends up to 1.3x) and reka-ui ones (later): the template browser a new user gets
DIALOGS = ".p-dialog-mask:visible, [role=dialog]:visible"


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
def app(browser, frontend_server):
    """The ComfyUI page, loaded, with console messages, page errors and failed responses recorded."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.guidekit_log = []
    page.on("console", lambda m: page.guidekit_log.append((m.type, m.text, m.location.get("url", ""))))
    page.on("pageerror", lambda e: page.guidekit_log.append(("pageerror", f"{e}\n{e.stack}", "")))
    page.on("response", lambda r: page.guidekit_log.append(("response", str(r.status), r.url)))
    page.goto(frontend_server.url)
    page.wait_for_function("window.app && window.app.graph && window.app.extensions?.length > 0", timeout=120_000)
    close_dialogs(page)                                # the template browser opens for a new user
    page.wait_for_function("window.app.extensions.some(e => e.name === 'GuideKit.NodeTools')", timeout=30_000)
    page.guidekit_frontend = page.evaluate("window.__COMFYUI_FRONTEND_VERSION__ || 'unknown'")
    yield page
    page.close()


def close_dialogs(page) -> None:
    dialogs = page.locator(DIALOGS)
    try:
        dialogs.first.wait_for(timeout=10_000)
    except Exception:                                  # no dialog opened: nothing to close
        return
    for _ in range(5):
        if dialogs.count() == 0:
            return
        page.keyboard.press("Escape")                  # reka-ui dialogs close on Escape
        page.wait_for_timeout(300)
        corner = page.locator(".p-dialog-mask button:not(.pointer-events-none)").filter(has_text="")
        if corner.count():                             # PrimeVue's template browser only through its corner ×
            corner.last.click()
        page.wait_for_timeout(500)
    assert dialogs.count() == 0, "a frontend dialog stays open"


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
    folder = ARTIFACTS / f"frontend-{page.guidekit_frontend}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def test_frontend_loads_our_extension_without_errors(app):
    ours = [entry for entry in app.guidekit_log
            if entry[0] == "response" and "/extensions/comfyui-guidekit/" in entry[2]]
    assert any(e[2].endswith("guidekit.js") and e[1] == "200" for e in ours), ours
    problems = [e for e in app.guidekit_log if e[0] in ("error", "pageerror", "warning")
                and ("guidekit" in (e[1] + e[2]).lower())]
    assert not problems, problems
    assert app.evaluate("window.app.extensions.filter(e => e.name.startsWith('GuideKit')).length") == 1
    screenshot(app, "frontend_loaded")


def test_every_node_is_in_the_library_with_its_tooltips(app, frontend_server):
    ours = sorted(k for k, v in frontend_server.object_info().items() if v.get("python_module") == PACK_MODULE)
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
    assert sorted(state["saved"]) == expected      # every widget value landed; our widgets add none


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


def shown_info(app, node_type: str) -> dict | None:
    """What the node's info row (badge, schedule strip) shows on the page, and whether it is on screen."""
    return app.evaluate("""(type) => {
        const n = window.app.graph.nodes.find(x => x.type === type);
        const row = n?.widgets?.find(w => w.name === 'guidekit_info')?.element;
        if (!row) return null;
        const box = row.getBoundingClientRect();
        const badge = row.querySelector('.guidekit-badge');
        return {visible: row.isConnected && row.checkVisibility() && box.width > 0 && box.height > 0,
                badge: badge.checkVisibility() ? badge.textContent : null,
                caption: row.querySelector('.guidekit-caption')?.textContent ?? null,
                steps: [...row.querySelectorAll('.guidekit-steps > div')].map(c => c.dataset.active === 'true')};
    }""", node_type)


def server_schedule(app, steps: int, start: float, end: float) -> dict:
    return app.evaluate("""async ([steps, start, end, name]) => (await (await fetch('/api/guidekit/schedule?' +
        new URLSearchParams({folder: 'checkpoints', name, steps, scheduler: 'normal', sampler: 'euler', denoise: 1,
                             start_percent: start, end_percent: end}))).json())""", [steps, start, end, CHECKPOINT])


def caption(schedule: dict) -> str:
    """The strip's caption for a schedule, as a user reads it."""
    active = schedule["active"]
    first, last = active.index(True), len(active) - 1 - active[::-1].index(True)
    return (f"active steps {first + 1}-{last + 1} of {len(active)}, "
            f"σ {schedule['sigmas'][first]:.2f}→{schedule['sigmas'][last]:.2f}")


def test_badge_and_schedule_follow_the_widgets(app):
    load_template(app, "pag_sd15")
    assert wait_guidekit(app, "GuideKitPAG", "n.guidekit.badge") == "+1 pass/step"
    steps = app.evaluate("window.app.graph.nodes.find(x => x.type === 'KSampler')"
                         ".widgets.find(w => w.name === 'steps').value")
    full = wait_guidekit(app, "GuideKitPAG", "n.guidekit.schedule && n.guidekit.schedule.active")
    assert len(full) == steps and all(full)
    focus(app, "GuideKitPAG")
    shown = shown_info(app, "GuideKitPAG")
    assert shown == {"visible": True, "badge": "+1 pass/step", "steps": full,
                     "caption": caption(server_schedule(app, steps, 0, 1))}, shown
    set_widget(app, "GuideKitPAG", "mode", "replace uncond")
    assert wait_guidekit(app, "GuideKitPAG",
                         "n.guidekit.badge && n.guidekit.badge.startsWith('+0') && n.guidekit.badge") \
        == "+0 passes/step"
    set_widget(app, "GuideKitPAG", "start_percent", 0.5)
    half = wait_guidekit(app, "GuideKitPAG", "n.guidekit.schedule?.active && !n.guidekit.schedule.active[0] "
                                             "&& n.guidekit.schedule.active")
    schedule = server_schedule(app, steps, 0.5, 1)
    assert half == schedule["active"] and 0 < sum(half) < steps
    assert app.evaluate("window.app.graph.nodes.find(x => x.type === 'GuideKitPAG').guidekit.schedule.loader.name") \
        == CHECKPOINT
    focus(app, "GuideKitPAG")
    shown = shown_info(app, "GuideKitPAG")
    assert shown == {"visible": True, "badge": "+0 passes/step", "steps": half, "caption": caption(schedule)}, shown
    screenshot(app, "pag_badge_and_schedule")


def test_a_node_without_a_range_shows_its_badge_only(app):
    load_template(app, "autoguidance_degraded_sd15")
    assert wait_guidekit(app, "GuideKitDegradedModel", "n.guidekit.badge") == "+0 passes/step"
    focus(app, "GuideKitDegradedModel")
    assert shown_info(app, "GuideKitDegradedModel") == {"visible": True, "badge": "+0 passes/step", "caption": "",
                                                       "steps": []}
    assert shown_info(app, "KSampler") is None                    # only GuideKit nodes get the row


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


@pytest.fixture
def vue_nodes(app):
    """The Vue node renderer ("Nodes 2.0", setting Comfy.VueNodes.Enabled) on for one test, then off again."""
    set_setting = """([id, value]) => { const s = window.app.extensionManager?.setting;
        return s?.set ? s.set(id, value) : window.app.ui.settings.setSettingValueAsync(id, value); }"""
    known = app.evaluate("""() => { const s = window.app.extensionManager?.setting;
        return (s?.get ? s.get('Comfy.VueNodes.Enabled') : undefined) !== undefined; }""")
    if not known:
        pytest.skip(f"frontend {app.guidekit_frontend} has no Vue node renderer (no Comfy.VueNodes.Enabled setting)")
    app.evaluate(set_setting, ["Comfy.VueNodes.Enabled", True])
    try:
        app.wait_for_function("window.LiteGraph.vueNodesMode === true", timeout=10_000)
        yield
    finally:
        app.evaluate(set_setting, ["Comfy.VueNodes.Enabled", False])
        app.wait_for_function("!window.LiteGraph.vueNodesMode", timeout=10_000)


def test_vue_nodes_show_the_badge_the_schedule_and_the_picker(app, vue_nodes):
    load_template(app, "pag_sd15")
    node_id = app.evaluate("window.app.graph.nodes.find(x => x.type === 'GuideKitPAG').id")
    focus(app, "GuideKitPAG")
    node = app.locator(f"[data-node-id='{node_id}']")
    row = node.locator(".guidekit-info")                          # inside the Vue node's own DOM
    row.wait_for(timeout=15_000)
    steps = app.evaluate("window.app.graph.nodes.find(x => x.type === 'KSampler')"
                         ".widgets.find(w => w.name === 'steps').value")
    expected = caption(server_schedule(app, steps, 0, 1))
    row.locator(".guidekit-caption", has_text=expected).wait_for(timeout=15_000)
    assert shown_info(app, "GuideKitPAG") == {"visible": True, "badge": "+1 pass/step", "caption": expected,
                                              "steps": [True] * steps}
    set_widget(app, "GuideKitPAG", "mode", "replace uncond")
    row.locator(".guidekit-badge", has_text="+0 passes/step").wait_for(timeout=15_000)
    screenshot(app, "vue_nodes_pag")
    node.get_by_role("button", name="pick layers…").click()       # the real button, clicked
    dialog = app.locator("#guidekit-layer-picker")
    dialog.locator("input[value='middle.0.0']").wait_for(timeout=15_000)
    assert dialog.locator("input").evaluate_all("els => els.map(e => e.value)") == \
        ["input.1.0", "middle.0.0", "output.0.0", "output.1.0"]
    screenshot(app, "vue_nodes_layer_picker")
    dialog.get_by_role("button", name="Cancel").click()
    dialog.wait_for(state="detached", timeout=10_000)


XSS = '<img src=x onerror="window.__guidekit_xss=1"> <script>window.__guidekit_xss=2</script>'


def no_markup_ran(app) -> None:
    assert app.evaluate("window.__guidekit_xss") is None
    planted = app.evaluate("""() => [...document.querySelectorAll('img, script')]
        .filter(e => (e.getAttribute('onerror') || e.textContent || '').includes('__guidekit_xss'))"""
                           """.map(e => e.outerHTML)""")
    assert planted == []


def model_answer(app, name: str, layers: str) -> dict:
    return app.evaluate("""async ([name, layers]) => (await (await fetch('/api/guidekit/model?' +
        new URLSearchParams({folder: 'checkpoints', name, layers}))).json())""", [name, layers])


@pytest.mark.parametrize("name", ["autoguidance_degraded_sd15", "sag_sd15", "clip_guidance_sd15"])
def test_server_and_workflow_text_is_shown_as_text(app, frontend_server, name):
    """Markup in every string widget of every GuideKit node, in their titles and in the checkpoint name reaches
    the page only as text: the badge, the strip and every layer picker render, and nothing in the markup runs."""
    strings = {k: [n for n, spec in {**v["input"].get("required", {}), **v["input"].get("optional", {})}.items()
                   if spec[0] == "STRING"]
               for k, v in frontend_server.object_info().items() if v.get("python_module") == PACK_MODULE}
    workflow = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    app.evaluate("() => { delete window.__guidekit_xss; }")
    # the template with markup put in through the nodes' own widgets, saved, and loaded as a saved workflow
    marked = app.evaluate("""async ([workflow, strings, markup]) => {
        await window.app.loadGraphData(workflow, true, true, 'markup');
        for (const n of window.app.graph.nodes) {
            if (n.type === 'CheckpointLoaderSimple') n.widgets.find(w => w.name === 'ckpt_name').value = markup;
            if (!strings[n.type]) continue;
            n.title = markup;
            for (const name of strings[n.type]) n.widgets.find(w => w.name === name).value = markup;
        }
        const saved = window.app.graph.serialize();
        await window.app.loadGraphData(saved, true, true, 'markup');
        return window.app.graph.nodes.filter(n => n.type.startsWith('GuideKit') || n.type === 'CheckpointLoaderSimple')
            .map(n => [n.type, n.title, n.widgets.filter(w => typeof w.value === 'string')"""
        """.map(w => [w.name, w.value])]);
    }""", [workflow, strings, XSS])
    ours = [(type, title, values) for type, title, values in marked if type in strings]
    assert ours and all(title == XSS for _, title, _ in ours), marked
    assert all(dict(values)[w] == XSS for type, _, values in ours for w in strings[type]), marked
    assert [dict(values)["ckpt_name"] for type, _, values in marked if type == "CheckpointLoaderSimple"] == [XSS]

    # the badge and the strip: the strip shows the server's error about the missing file, as it came
    assert app.evaluate("() => window.app.graph.nodes.some(n => n.guidekit)"), "no GuideKit node with a badge or strip"
    app.wait_for_function("""() => window.app.graph.nodes.filter(n => n.guidekit)
        .every(n => n.guidekit.badge && (!n.guidekit.hasRange || n.guidekit.schedule?.error))""", timeout=20_000)
    shown = app.evaluate("""() => window.app.graph.nodes.filter(n => n.guidekit?.hasRange)"""
                         """.map(n => [n.guidekit.schedule.error,
        n.widgets.find(w => w.name === 'guidekit_info').element.querySelector('.guidekit-caption').textContent])""")
    assert all(error and caption == error for error, caption in shown), shown
    no_markup_ran(app)

    pickers = app.evaluate("""() => window.app.graph.nodes.filter(n => n.widgets?.some(w => w.name === 'pick layers…'))
        .map(n => [n.id, (n.widgets.find(w => w.name === 'layers') || n.widgets.find(w => w.name === 'layer'))"""
                             """.value])""")
    assert pickers or name == "clip_guidance_sd15"                # its nodes have no layers input
    dialog = app.locator("#guidekit-layer-picker")
    for checkpoint in (XSS, CHECKPOINT):                          # a file the server cannot find, then the real one
        app.evaluate("""(name) => window.app.graph.nodes.filter(n => n.type === 'CheckpointLoaderSimple')
            .forEach(n => { n.widgets.find(w => w.name === 'ckpt_name').value = name; })""", checkpoint)
        for node_id, layers in pickers:
            assert layers == XSS
            app.evaluate("(id) => window.app.graph.getNodeById(id)"
                         ".widgets.find(w => w.name === 'pick layers…').callback()", node_id)
            close = dialog.get_by_role("button", name="Close" if checkpoint == XSS else "Cancel")
            close.wait_for(timeout=15_000)
            text = dialog.text_content()
            answer = model_answer(app, checkpoint, layers)
            if checkpoint == XSS:      # the file name, and the server's error about it, literally
                assert answer["error"] and text.startswith(f"Cannot read {XSS}") and answer["error"] in text, \
                    (text, answer)
            else:                      # the node's title, its layers, and the server's complaint about the text
                assert answer["selected_error"] and text.startswith(f"{XSS}: layer") \
                    and answer["selected_error"] in text, (text, answer)
                assert dialog.locator("input").evaluate_all("els => els.map(e => e.value)") == answer["layers"]
            no_markup_ran(app)
            screenshot(app, f"markup_{name}_node{node_id}_{'missing' if checkpoint == XSS else 'real'}_file")
            close.click()
            dialog.wait_for(state="detached", timeout=10_000)


def test_a_queued_template_shows_its_image(app):
    load_template(app, "mnist_digits")
    app.get_by_role("button", name="Run", exact=True).first.click()
    app.wait_for_function("""() => {
        const n = window.app.graph.nodes.find(x => x.type === 'SaveImage');
        return n && n.imgs && n.imgs.length > 0 && n.imgs[0].complete && n.imgs[0].naturalWidth > 0;
    }""", timeout=180_000)
    size = app.evaluate("""() => { const img = window.app.graph.nodes.find(x => x.type === 'SaveImage').imgs[0];
                                   return [img.naturalWidth, img.naturalHeight, img.src]; }""")
    assert size[:2] == [128, 128] and "/view?" in size[2]      # 32×32 digits (mnist-main-28) scaled by 4
    focus(app, "KSampler")
    screenshot(app, "queued_mnist_digits")
