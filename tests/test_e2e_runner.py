"""Tier 3: workflows through a real ComfyUI server (main.py --cpu on loopback) and the headless runner."""
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "workflows" / "api" / "txt2img_default.json"        # thin SD1.5 checkpoint (random weights)
MNIST_DEMO = REPO / "workflows" / "api" / "mnist_digits.json"     # the README's main command


def load_demo() -> dict:
    return json.loads(DEMO.read_text())


def run_cli(*args, models_dir=None, timeout=600):
    env = dict(os.environ)
    if models_dir is not None:
        env["GUIDEKIT_MODELS_DIR"] = str(models_dir)
    return subprocess.run([sys.executable, "-m", "guidekit.cli.run", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def comfyui_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "main.py --cpu" in line and "guidekit-run-" in line]


def test_server_loads_the_pack_without_errors(server):
    log = server.log_path.read_text()
    assert "IMPORT FAILED" not in "\n".join(line for line in log.splitlines() if "guidekit" in line.lower())
    assert any("custom_nodes" in line and line.rstrip().endswith(("comfyui-guidekit", REPO.name))
               for line in log.splitlines()), "the pack was not imported by the server"
    with urllib.request.urlopen(server.url + "/workflow_templates") as r:
        templates = json.load(r)
    assert any("txt2img_default" in names for names in templates.values()), templates
    assert any("mnist_digits" in names for names in templates.values()), templates
    with urllib.request.urlopen(server.url + "/i18n") as r:               # locales/en/ served to the frontend
        node_defs = json.load(r)["en"]["nodeDefs"]
    assert node_defs["GuideKitFlowRefineLatent"]["inputs"]["strength"]["tooltip"]


def readme_main_command() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()[0].split("#")[0].strip()


def test_readme_main_command_draws_the_ten_digits(server, tmp_path):
    """The README's first command runs the MNIST demo; the evaluation classifier reads digits 0-9."""
    assert readme_main_command() == "python3 scripts/host.py run workflows/api/mnist_digits.json --out guidekit-out"
    result = server.run(json.loads(MNIST_DEMO.read_text()), tmp_path)
    assert len(result.images) == 10
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted(result.images)])
    assert pixels.shape == (10, 128, 128, 3)          # the native model's 32×32 digits, scaled by 4
    import torch
    from safetensors.torch import load_file

    from evidence.mnist_data import to_eval
    from evidence.networks import DigitClassifier
    clf = DigitClassifier().eval()
    clf.load_state_dict(load_file(str(REPO / "benchmarks" / "weights" / "mnist-classifier-eval.safetensors")))
    native = torch.from_numpy(pixels[:, ::4, ::4, :].mean(-1, keepdims=True) / 255.0).float().permute(0, 3, 1, 2)
    digits = to_eval(native)                          # cropped to the 28×28 digit, resized as real digits are
    with torch.no_grad():
        read = clf(digits).argmax(1).tolist()
    assert sum(r == i for i, r in enumerate(read)) >= 8, read


def test_demo_workflow_renders_an_image_deterministically(server, tmp_path):
    first = server.run(load_demo(), tmp_path / "a")
    server.free()                         # recompute every node instead of reusing cached outputs
    second = server.run(load_demo(), tmp_path / "b")
    assert len(first.images) == 1 and len(second.images) == 1
    a = np.asarray(Image.open(first.images[0]))
    b = np.asarray(Image.open(second.images[0]))
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b), "same workflow and seed must give the same image"
    prompt = load_demo()
    prompt["5"]["inputs"]["seed"] = 1
    c = np.asarray(Image.open(server.run(prompt, tmp_path / "c").images[0]))
    assert not np.array_equal(a, c)


def test_runner_cli_main_command(models_dir, tmp_path):
    out = run_cli(DEMO, "--out", tmp_path, "--set", "KSampler.steps=2", "--set", "4.width=128",
                  models_dir=models_dir)
    assert out.returncode == 0, out.stderr
    images = sorted(tmp_path.glob("*.png"))
    assert [str(p) for p in images] == [line for line in out.stdout.splitlines() if line.endswith(".png")]
    assert Image.open(images[0]).size == (128, 64)
    assert not comfyui_processes(), "the runner left a ComfyUI process behind"


def test_runner_missing_checkpoint_names_the_input(models_dir, tmp_path):
    out = run_cli(DEMO, "--out", tmp_path, "--set", "CheckpointLoaderSimple.ckpt_name=nope.safetensors",
                  models_dir=models_dir)
    assert out.returncode == 1
    error = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "ckpt_name" in error[0] and "nope.safetensors" in error[0], out.stderr
    assert not comfyui_processes()


def test_runner_reports_a_node_failure_with_comfyuis_text(models_dir, tmp_path):
    """A 16-channel SD3 latent decoded by the SD1.5 VAE fails inside VAEDecode at run time."""
    prompt = load_demo()
    prompt["8"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["6"]["inputs"]["samples"] = ["8", 0]
    wf = tmp_path / "bad_latent.json"
    wf.write_text(json.dumps(prompt))
    out = run_cli(wf, "--out", tmp_path, models_dir=models_dir)
    assert out.returncode == 1
    assert "node 6 (VAEDecode) failed" in out.stderr and "channels" in out.stderr, out.stderr
    assert not comfyui_processes()


def test_runner_rejects_malformed_json_and_unknown_formats(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {"class_type": ')
    out = run_cli(bad)
    assert out.returncode == 2 and "not valid JSON" in out.stderr and out.stderr.count("\n") == 1
    bad.write_text('{"1": {"inputs": {}}}')
    out = run_cli(bad)
    assert out.returncode == 2 and "neither an API-format" in out.stderr
    out = run_cli(tmp_path / "missing.json")
    assert out.returncode == 2 and "does not exist" in out.stderr


UI_TEMPLATES = sorted((REPO / "workflows").glob("*.json"))


@pytest.mark.parametrize("template", UI_TEMPLATES, ids=lambda p: p.stem)
def test_ui_template_matches_its_api_twin(server, template):
    """Every UI-format template converts, with the live server's node definitions, to its API twin."""
    from guidekit.cli.ui_workflow import ui_to_api
    twin = REPO / "workflows" / "api" / template.name
    assert twin.is_file(), f"{template.name} has no API-format twin in workflows/api/"
    converted = ui_to_api(json.loads(template.read_text()), server.object_info())
    expected = json.loads(twin.read_text())
    def strip(wf):
        return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in wf.items()}
    assert strip(converted) == strip(expected)


@pytest.mark.parametrize("workflow", sorted((REPO / "workflows" / "api").glob("*.json")), ids=lambda p: p.stem)
def test_every_api_workflow_runs_end_to_end(server, workflow, tmp_path):
    """Workflows naming real-size Wan / Qwen-Image files run on their thin twins (tests/thin_workflows.py)."""
    from thin_workflows import at_thin_size
    result = server.run(at_thin_size(json.loads(workflow.read_text())), tmp_path)
    assert result.images, f"{workflow.name} produced no image"
    for image in result.images:
        pixels = np.asarray(Image.open(image))
        assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)


@pytest.mark.parametrize("workflow,guidance",
                         [("pag_wan21_video", "6"), ("stg_wan21_video", "6"), ("nag_wan21_video", "6"),
                          ("seg_qwen_image", "6")])
def test_dit_workflows_guidance_reaches_the_model(server, tmp_path, workflow, guidance):
    """The Wan (video) and Qwen-Image workflows on their thin twins: every frame has the latent's size, and
    taking the guidance node out of the graph changes the frames (the hook reached the DiT's attention)."""
    from PIL import ImageSequence
    from thin_workflows import THIN_SIZE, at_thin_size
    prompt = at_thin_size(json.loads((REPO / "workflows" / "api" / f"{workflow}.json").read_text()))
    unguided = json.loads(json.dumps(prompt))
    sampler = next(n for n in unguided.values() if n["class_type"] == "KSampler")
    sampler["inputs"]["model"] = unguided[guidance]["inputs"]["model"]
    del unguided[guidance]

    def frames(p, sub):
        with Image.open(server.run(p, tmp_path / sub).images[0]) as im:
            return np.stack([np.asarray(f.convert("RGB"), dtype=np.int16) for f in ImageSequence.Iterator(im)])
    guided, plain = frames(prompt, "guided"), frames(unguided, "plain")
    latent = next(THIN_SIZE[n["class_type"]] for n in prompt.values() if n["class_type"] in THIN_SIZE)
    assert guided.shape == plain.shape == (latent.get("length", 1), latent["height"], latent["width"], 3)
    assert np.abs(guided - plain).max() > 0, f"{workflow}: the guidance node left every frame unchanged"


def test_runner_port_in_use(models_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run_cli(DEMO, "--port", port, "--out", tmp_path, models_dir=models_dir)
    assert out.returncode == 2 and f"port {port}" in out.stderr and "in use" in out.stderr
    assert not comfyui_processes()


def test_runner_bad_set_option(tmp_path):
    out = run_cli(DEMO, "--set", "KSampler.steps")
    assert out.returncode == 2 and "NODE.INPUT=VALUE" in out.stderr
    out = run_cli(DEMO, "--set", "NoSuchNode.x=1")
    assert out.returncode == 2 and "no node" in out.stderr


def test_guidance_nodes_are_registered_and_change_the_image(server, tmp_path):
    info = server.object_info()
    for node in ("GuideKitPAG", "GuideKitSEG", "GuideKitSAG"):
        assert info[node]["category"] == "GuideKit/attention" and info[node]["output"] == ["MODEL"]
    assert info["GuideKitMNISTLoader"]["category"] == "GuideKit/demo"
    assert info["GuideKitMNISTLoader"]["output"] == ["MODEL", "VAE"]
    assert info["GuideKitMNISTDigits"]["output"] == ["CONDITIONING"]
    plain = np.asarray(Image.open(server.run(load_demo(), tmp_path / "plain").images[0]))
    workflow = json.loads((REPO / "workflows" / "api" / "pag_sd15.json").read_text())
    guided = np.asarray(Image.open(server.run(workflow, tmp_path / "pag").images[0]))
    assert not np.array_equal(plain, guided), "PAG left the image unchanged"


@pytest.mark.parametrize("workflow,node_id,inputs,needle", [
    ("pag_sd15", "8", {"scale": -1.0}, "scale"),
    ("seg_sd15", "8", {"layers": "output.99"}, "input 'layers': 'output.99' names no layer"),
    ("sag_sd15", "8", {"start_percent": 0.9, "end_percent": 0.1}, "input 'start_percent'"),
    ("mnist_icg", "9", {"mode": "pool"}, "input 'pool' is not connected"),
    ("mnist_autoguidance", "9", {"start_percent": 0.9, "end_percent": 0.1}, "input 'start_percent'"),
    ("clip_guidance_sd15", "8", {"augmentations": "color,flip"}, "input 'augmentations' names ['flip']"),
    ("mnist_loss_guidance", "10", {"target_class": "12"}, "input 'target_class' = '12', but"),
    ("segmentation_guidance_sd15", "12", {"width": 128}, "input 'target_mask' is 128×64 but the image is 64×64"),
    ("mnist_flow_refiner", "8", {"refiner_name": "guidekit-thin-sd15-refiner.safetensors"},
     "GuideKit Flow Refine Latent: the refiner was trained on 4-channel latents (SD15)"),
])
def test_bad_guidance_input_is_a_clear_error_not_a_crash(server, tmp_path, workflow, node_id, inputs, needle):
    from guidekit.cli.run import RunError
    prompt = json.loads((REPO / "workflows" / "api" / f"{workflow}.json").read_text())
    prompt[node_id]["inputs"].update(inputs)
    with pytest.raises(RunError) as err:
        server.run(prompt, tmp_path)
    assert needle in str(err.value)
    assert server.run(load_demo(), tmp_path / "after").images, "the server must keep serving after the error"


def test_a_weak_model_of_another_architecture_is_a_clear_error(server, tmp_path):
    """GuideKit Autoguidance with the MNIST UNet as main and the SD1.5 checkpoint as weak model."""
    from guidekit.cli.run import RunError
    prompt = json.loads((REPO / "workflows" / "api" / "mnist_autoguidance.json").read_text())
    prompt["10"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "guidekit-thin-sd15.safetensors"}}
    with pytest.raises(RunError) as err:
        server.run(prompt, tmp_path)
    assert ("GuideKit Autoguidance: input 'weak_model' is a BaseModel model but 'model' is a MNISTDemoModel"
            in str(err.value))
