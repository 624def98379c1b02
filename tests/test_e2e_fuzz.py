"""Tier 3, fuzz: hostile inputs through one real ComfyUI server, as a shared server meets them.

Every case is a row of a table: adversarial widget values for every input of every GuideKit node (generated
from the nodes' own schemas and run in a shipped workflow that reaches the node), file names that point
outside the model and input folders, broken weight files, hostile route queries, valid edge values, stacks
and a burst of queued prompts. Each row asserts one outcome: a clear error (naming the node and the input),
or a correct output. After every row the server must answer /system_stats within 5 s (no freeze), and at
the end the same seeds must give the same pixels as before everything (no patch leaked).
test-artifacts/fuzz_summary.json counts the outcomes by category.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guidekit.cli.inprocess import import_comfy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("GUIDEKIT_ARTIFACTS") or REPO / "test-artifacts")
OUTCOMES: Counter = Counter()
ALIVE_S = 5.0           # /system_stats must answer within this after every case (the freeze found took 44 s)
PREFERRED = ["mnist_pag", "mnist_autoguidance", "mnist_autoguidance_guider", "mnist_icg", "mnist_tsg",
             "mnist_cfg_zero_star", "mnist_loss_guidance", "mnist_flow_refiner", "mnist_train_flow_refiner",
             "mnist_sims",
             "autoguidance_degraded_sd15", "clip_guidance_sd15", "clip_image_guidance_sd15", "seg_sd15", "sag_sd15",
             "sketch_guidance_sd15", "segmentation_guidance_sd15", "compare_sd15", "flow_refiner_sd15"]
# Cheaper settings for the heavy workflows' upstream nodes: a case runs what its node depends on.
LIGHT = {"mnist_train_flow_refiner": {"10": {"iterations": 1}, "4": {"batch_size": 20}, "7": {"batch_size": 20},
                                      "5": {"steps": 4}, "8": {"steps": 4}},
         "mnist_sims": {"10": {"batch_size": 8}, "11": {"steps": 2}, "12": {"steps": 2, "batch_size": 4}}}
OUTSIDE = ["/etc/passwd", "../../../../../../../../etc/passwd", str(REPO / "README.md"), "C:\\Windows\\win.ini"]


def workflow(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())


@dataclass
class Case:
    """One row: `changes` {node_id: {input: value}} applied to `workflow`, and the expected outcome."""
    category: str
    workflow: str
    changes: dict
    expect: str                       # "error" (named: node and `needles`) | "image" (a correct output)
    needles: tuple = ()               # each must appear in the error (an input name: as a whole word)
    node: str = ""                    # the node's display name; the error must name it or its class type
    same_as: str | None = None        # "image": byte-identical to the workflow with this node bypassed
    setup: object = None
    name: str = field(default="")

    def prompt(self) -> dict:
        p = workflow(self.workflow)
        for changes in (LIGHT.get(self.workflow, {}), self.changes):
            for node_id, inputs in changes.items():
                p[node_id]["inputs"].update(inputs)
        return p


def home_workflows() -> dict[str, tuple[str, str]]:
    """GuideKit class → (workflow, node id) of the first preferred shipped workflow that contains it."""
    homes: dict[str, tuple[str, str]] = {}
    for name in PREFERRED:
        for node_id, node in workflow(name).items():
            if node["class_type"].startswith("GuideKit") and node["class_type"] not in homes:
                homes[node["class_type"]] = (name, node_id)
    return homes


def schema_cases() -> list[Case]:
    """NaN / ±inf / out-of-range numbers and unknown or path-like combo values for every GuideKit node input."""
    import_comfy()
    from comfy_api.latest import io

    from guidekit.nodes import NODES
    homes = home_workflows()
    cases = []
    for cls in NODES:
        schema = cls.define_schema()
        if schema.node_id not in homes:
            continue
        flow, node_id = homes[schema.node_id]
        present = workflow(flow)[node_id]["inputs"]
        node = schema.display_name
        for spec in schema.inputs:
            if spec.id not in present or isinstance(present[spec.id], list):
                continue                                  # not set in this workflow, or a link
            values = []
            if isinstance(spec, io.Float.Input):
                values = [math.nan, math.inf, -math.inf] + ([spec.max * 10 + 1] if spec.max else [])
            elif isinstance(spec, io.Int.Input):
                values = [v for v in ((spec.max + 1) if spec.max is not None else None,
                                      (spec.min - 1) if spec.min is not None else None) if v is not None]
            elif isinstance(spec, io.Combo.Input):
                values = ["bogus", "<img src=x onerror=alert(1)>"]
                if any(str(o).endswith(".safetensors") for o in spec.options):
                    values += OUTSIDE
            for value in values:
                cases.append(Case("node inputs", flow, {node_id: {spec.id: value}}, "error", (spec.id,),
                                  node, name=f"{schema.node_id}.{spec.id}={value!r}"))
    return cases


def write_broken_files(models: Path) -> None:
    """Broken weight files in the pack's model folders (removed after the module)."""
    import torch
    from safetensors.torch import save_file
    good = REPO / "benchmarks" / "weights" / "networks" / "mnist-classifier-guidance.safetensors"
    for folder in ("guidekit_networks", "open_clip", "guidekit_refiners"):
        d = models / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / "fuzz-empty.safetensors").write_bytes(b"")
        (d / "fuzz-junk.safetensors").write_bytes(os.urandom(4096))
        (d / "fuzz-truncated.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        outside = models.parent / f"outside-{folder}.safetensors"
        shutil.copy(good, outside)
        link = d / "fuzz-link-out.safetensors"
        if not link.is_symlink():
            link.symlink_to(outside)
    refiners = models / "guidekit_refiners"
    meta = {"guidekit.kind": "guidekit-flow-refiner", "guidekit.space": "latent",
            "guidekit.sample_shape": "[3, 16, 16]"}
    save_file({"w": torch.zeros(1)}, str(refiners / "fuzz-bad-architecture.safetensors"),
              {**meta, "guidekit.architecture": json.dumps({"arch": "unet", "channels": "three"})})
    save_file({"w": torch.zeros(1)}, str(refiners / "fuzz-huge-architecture.safetensors"),
              {**meta, "guidekit.architecture": json.dumps({"arch": "mlp", "dim": 10**6, "hidden": 10**6,
                                                             "layers": 64})})


def remove_broken_files(models: Path) -> None:
    for path in list(models.glob("*/fuzz-*.safetensors")) + list(models.parent.glob("outside-*.safetensors")):
        path.unlink(missing_ok=True)


def file_cases() -> list[Case]:
    net = ("mnist_loss_guidance", "9")
    clip = ("clip_guidance_sd15", "9")
    ref = ("mnist_flow_refiner", "8")
    cases = []
    for (flow, node_id), input_name, node in ((net, "network_name", "GuideKit Guidance Network Loader"),
                                              (clip, "clip_name", "GuideKit OpenCLIP Loader"),
                                              (ref, "refiner_name", "GuideKit Flow Refiner Loader")):
        for broken in ("empty", "junk", "truncated"):
            cases.append(Case("broken files", flow, {node_id: {input_name: f"fuzz-{broken}.safetensors"}}, "error",
                              (f"'{input_name}'", "cannot be read as safetensors"), node,
                              name=f"{input_name}:{broken}"))
        cases.append(Case("files outside folders", flow, {node_id: {input_name: "fuzz-link-out.safetensors"}}, "error",
                          (f"'{input_name}'", "is not a file of the"), node, name=f"{input_name}:link-out"))
    for broken, needle in (("bad", "does not describe a refiner"), ("huge", "weights do not match the architecture")):
        cases.append(Case("broken files", ref[0], {ref[1]: {"refiner_name": f"fuzz-{broken}-architecture.safetensors"}},
                          "error", ("'refiner_name'", needle), "GuideKit Flow Refiner Loader",
                          name=f"refiner:{broken}-architecture"))
    train = ("mnist_train_flow_refiner", "10")
    for folder in ("/etc", "../../../../../../../etc", "..", "link-out", "missing-folder", "<b>x</b>"):
        cases.append(Case("files outside folders", train[0], {train[1]: {"real_folder": folder, "iterations": 1}},
                          "error", ("'real_folder'", "is not a folder inside ComfyUI's input folder"),
                          "GuideKit Train Flow Refiner", name=f"real_folder={folder}"))
    return cases


def behaviour_cases() -> list[Case]:
    """Valid edge values whose output is known, and string inputs the nodes must refuse by name."""
    return [
        Case("edge values", "mnist_pag", {"9": {"scale": 0.0}}, "image", same_as="9", name="PAG scale 0 = unguided"),
        Case("edge values", "mnist_pag", {"9": {"start_percent": 1.0, "end_percent": 1.0}}, "image",
             same_as="9", name="PAG empty range = unguided"),
        Case("edge values", "mnist_autoguidance", {"9": {"w": 1.0}}, "image", same_as="9",
             name="Autoguidance w 1 = the main model"),
        Case("node inputs", "mnist_pag", {"9": {"layers": "<img src=x onerror=alert(1)>"}}, "error",
             ("'layers'", "cannot read"), "GuideKit PAG", name="PAG layers markup"),
        Case("node inputs", "mnist_pag", {"9": {"layers": "output.99"}}, "error", ("'layers'", "names no layer"),
             "GuideKit PAG", name="PAG unknown layer"),
        Case("node inputs", "mnist_pag", {"9": {"layers": "x" * 100_000}}, "error", ("'layers'",), "GuideKit PAG",
             name="PAG 100 kB layers"),
        Case("node inputs", "mnist_pag", {"2": {"digits": "<script>alert(1)</script>"}}, "error", ("'digits'",),
             "GuideKit MNIST Digits", name="digits markup"),
    ]


CASES = schema_cases() + file_cases() + behaviour_cases()


@pytest.fixture(scope="module")
def fuzz_server(server, models_dir):
    write_broken_files(models_dir)
    inputs = server.input_dir
    outside = models_dir.parent / "outside-images"
    outside.mkdir(exist_ok=True)
    if inputs is not None:
        (inputs / "link-out").unlink(missing_ok=True)
        (inputs / "link-out").symlink_to(outside, target_is_directory=True)
    reference = reference_images(server)
    yield server, reference
    remove_broken_files(models_dir)
    if inputs is not None:
        (inputs / "link-out").unlink(missing_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "fuzz_summary.json").write_text(json.dumps(
        {"cases": sum(n for k, n in OUTCOMES.items() if k.startswith("all:")),
         "outcomes": dict(sorted(OUTCOMES.items()))}, indent=2) + "\n")


def pixels(path: Path) -> bytes:
    """An image's pixel bytes (a PNG's metadata holds the prompt, which differs between equal images)."""
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


def reference_images(server) -> dict[str, bytes]:
    """mnist_digits and pag_sd15 from scratch (nothing cached): the no-leak reference."""
    server.free()
    return {name: pixels(server.run(workflow(name), Path(server.workdir) / "reference" / name).images[0])
            for name in ("mnist_digits", "pag_sd15")}


def bypassed(prompt: dict, node_id: str) -> dict:
    """The prompt without model patch `node_id`: its consumers take the model it was given."""
    source = prompt.pop(node_id)["inputs"]["model"]
    for node in prompt.values():
        for key, value in node["inputs"].items():
            if value == [node_id, 0]:
                node["inputs"][key] = source
    return prompt


def names(message: str, case: Case) -> bool:
    """The error names the node (display name, or the class type the host's own validation uses) and each
    needle (input names as whole words: the host writes `scale`, GuideKit `input 'scale'`)."""
    class_types = {node_id: workflow(case.workflow)[node_id]["class_type"] for node_id in case.changes}
    node_named = case.node in message or any(f"({t})" in message for t in class_types.values())
    return node_named and all(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", message) if n.isidentifier()
                              else n in message for n in case.needles)


def alive_within(server, seconds: float) -> bool:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(server.url + "/system_stats", timeout=seconds) as r:
            return r.status == 200 and time.monotonic() - t0 < seconds
    except OSError:
        return False


def record(category: str, outcome: str) -> None:
    OUTCOMES[f"{category}: {outcome}"] += 1
    OUTCOMES[f"all: {outcome}"] += 1


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fuzz_case(fuzz_server, tmp_path, case):
    from guidekit.cli.run import RunError
    server, reference = fuzz_server
    outcome = "unclear error"
    try:
        try:
            result = server.run(case.prompt(), tmp_path, timeout=300)
        except RunError as err:
            message = str(err)
            if "did not finish within" in message:
                outcome = "freeze"
            elif case.expect == "error" and names(message, case):
                outcome = "clear error"
            elif case.expect == "image":
                outcome = "unexpected error"
            assert outcome == "clear error", f"{case.name}: {outcome}: {message}"
            return
        if case.expect == "error":
            outcome = "unsafe accept"
            pytest.fail(f"{case.name}: ran to the end instead of refusing the input")
        image = pixels(result.images[0]) if result.images else b""
        if case.same_as:
            expected = pixels(server.run(bypassed(workflow(case.workflow), case.same_as), tmp_path / "x").images[0])
            outcome = "correct output" if image == expected else "wrong result"
        else:
            outcome = "correct output" if image else "wrong result"
        assert outcome == "correct output", f"{case.name}: {outcome}"
    finally:
        if not alive_within(server, ALIVE_S):
            outcome = "freeze"
        record(case.category, outcome)
        assert outcome != "freeze", f"{case.name}: the server did not answer /system_stats within {ALIVE_S} s"


HOSTILE_ROUTES = ["/guidekit/schedule?steps=100&denoise=0.0001", "/guidekit/schedule?steps=1000&denoise=0.001",
                  "/guidekit/schedule?denoise=-1", "/guidekit/schedule?steps=nan",
                  "/guidekit/model?folder=checkpoints&name=%2Fetc%2Fpasswd",
                  "/guidekit/model?folder=guidekit_mnist&name=..%2F..%2F..%2Fetc%2Fpasswd",
                  "/guidekit/model?folder=checkpoints&name=guidekit-thin-sd15.safetensors&layers=%3Cimg%20src%3Dx%3E",
                  "/guidekit/model?folder=guidekit_mnist&name=mnist-main.safetensors",
                  "/guidekit/schedule?folder=guidekit_mnist&name=mnist-main.safetensors&steps=1000"]


@pytest.mark.parametrize("route", HOSTILE_ROUTES)
def test_fuzz_route(fuzz_server, route):
    """Each answers JSON within 1 s; errors are 400 with a message; the server stays responsive."""
    server, _ = fuzz_server
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(server.url + route, timeout=10) as r:
            status, body = r.status, json.load(r)
    except urllib.error.HTTPError as err:
        status, body = err.code, json.load(err)
    seconds = time.monotonic() - t0
    outcome = "freeze" if seconds >= 1.0 else ("clear error" if status == 400 and body.get("error") else
                                               "correct output" if status == 200 else "unclear error")
    record("routes", outcome)
    assert outcome in ("clear error", "correct output"), f"{route}: {status} {body} after {seconds:.2f} s"
    assert alive_within(server, ALIVE_S)
    if "<img" in urllib.parse.unquote(route) and status == 200:
        assert "<img" in body.get("selected_error", ""), "the markup is echoed as text (the page must not render it)"


def test_fuzz_burst_of_queued_prompts_all_finish(fuzz_server, tmp_path):
    """Ten prompts queued at once (stacked PAG + SEG + SAG on the MNIST model, batch 10, other seeds) all finish."""
    import asyncio

    import aiohttp
    server, _ = fuzz_server
    base = workflow("mnist_pag")
    base["20"] = {"class_type": "GuideKitSEG", "inputs": {
        "model": ["9", 0], "scale": 2.0, "blur_sigma": -1.0, "layers": "default", "start_percent": 0.0,
        "end_percent": 1.0, "rescale": 0.0, "mode": "extra pass", "evaluation": "auto"}}
    base["21"] = {"class_type": "GuideKitSAG", "inputs": {
        "model": ["20", 0], "scale": 0.5, "blur_sigma": 2.0, "layer": "default", "threshold": 1.0,
        "start_percent": 0.0, "end_percent": 1.0}}
    base["5"]["inputs"]["model"] = ["21", 0]
    base["5"]["inputs"]["steps"] = 4

    async def burst():
        async with aiohttp.ClientSession() as session:
            ids = []
            for seed in range(10):
                p = copy.deepcopy(base)
                p["5"]["inputs"]["seed"] = 100 + seed
                async with session.post(server.url + "/prompt", json={"prompt": p}) as r:
                    assert r.status == 200, await r.text()
                    ids.append((await r.json())["prompt_id"])
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                async with session.get(server.url + "/history") as r:
                    history = await r.json()
                done = [history[i] for i in ids if i in history]
                if len(done) == len(ids):
                    return done
                await asyncio.sleep(0.5)
            return None
    done = asyncio.run(burst())
    ok = done is not None and all(h.get("status", {}).get("status_str") == "success" for h in done)
    record("batches and stacks", "correct output" if ok else ("freeze" if done is None else "unexpected error"))
    assert ok, "queued prompts did not all finish with success"
    assert alive_within(server, ALIVE_S)


def test_fuzz_zz_nothing_leaked(fuzz_server):
    """After every case: the same seeds give identical pixels, computed from scratch."""
    server, reference = fuzz_server
    after = reference_images(server)
    same = after == reference
    record("no leak", "correct output" if same else "wrong result")
    assert same, "an image changed after the fuzz cases: a patch leaked into the model"
