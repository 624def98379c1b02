"""Tier 2: what the frontend extension is told — a model file's attention layers, the step schedule and each
node's extra passes — matches what ComfyUI builds and what the nodes really run."""
from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
from safetensors.torch import save_file

pytestmark = pytest.mark.host
ARCHS = ["sd15", "sdxl", "sd3"]     # Flux: below, at its real widths on the meta device


@pytest.fixture(scope="module")
def info(comfy):
    from guidekit.nodes import catalog, layers, model_info
    return model_info, layers, catalog


def diffusion_model_file(thin, arch, folder):
    """A thin model of `arch` saved as a bare diffusion-model file (what UNETLoader loads)."""
    model = thin.build(arch)
    path = folder / f"thin-{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.model.diffusion_model.state_dict().items()}, str(path))
    return model, path


@pytest.mark.parametrize("arch", ARCHS)
def test_described_layers_are_the_built_models_layers(info, thin, tmp_path, arch):
    model_info, layers, _ = info
    model, path = diffusion_model_file(thin, arch, tmp_path)
    described = model_info._describe(str(path), os.path.getmtime(path), "diffusion_models")
    arch_of_model = layers.architecture(model, "test")
    assert described.family == arch_of_model.family
    assert described.layers == tuple(layers.format_layers([layer]) for layer in arch_of_model.layers)
    assert described.default_layers == arch_of_model.default_layers
    assert len(described.layers) > 1


def test_real_size_flux_described_from_its_state_dict(info, comfy, thin):
    """ComfyUI's Flux detection fixes 24 heads of 128 channels, so thin widths cannot be detected: a full-width
    Flux (3 double, 4 single blocks) built on the meta device gives the state dict instead."""
    import comfy.supported_models
    model_info, layers, _ = info
    config = {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
              "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 3,
              "depth_single_blocks": 4, "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True}
    model = comfy.supported_models.Flux(thin.host_config(comfy.supported_models.Flux, config)).get_model(
        {}, device=torch.device("meta"))
    sd = {f"model.diffusion_model.{k}": v for k, v in model.diffusion_model.state_dict().items()}
    described = model_info.describe_state_dict(sd, {}, "model.diffusion_model.", "flux")
    assert described.family == "flux"
    assert described.layers == ("double.0", "double.1", "double.2", "single.0", "single.1", "single.2", "single.3")
    assert described.default_layers == "single.1"            # PAG: the layer at 5/8 of 7 (docs/methods.md)
    assert described.to_json()["node_defaults"]["GuideKitSEG"] == "single.0"     # SEG: the middle layer
    assert described.model_sampling.__class__.__name__ == model.model_sampling.__class__.__name__


def test_checkpoint_file_described_like_comfyui_loads_it(info, models_dir):
    import comfy.sd
    model_info, layers, _ = info
    path = models_dir / "checkpoints" / "guidekit-thin-sd15.safetensors"
    described = model_info._describe(str(path), os.path.getmtime(path), "checkpoints")
    loaded = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=False)[0]
    assert described.layers == tuple(layers.format_layers([layer]) for layer in layers.architecture(loaded, "t").layers)
    assert described.to_json()["sigma_max"] == pytest.approx(float(loaded.get_model_object("model_sampling").sigma_max))


def test_mnist_demo_weights_are_described(info):
    """What the routes answer for the pack's own loader: serialisable description and a real schedule."""
    import json
    model_info, _, _ = info
    d = model_info.describe("guidekit_mnist", "mnist-main.safetensors")
    assert d.family == "unet" and "middle.0.0" in d.layers
    body = json.loads(json.dumps(d.to_json()))
    assert body["sigma_max"] > body["sigma_min"] > 0
    got = model_info.schedule(d.model_sampling, "normal", "euler", 6, 1.0, 0.0, 0.5)
    assert len(got["sigmas"]) == 7 and got["active"][0] and not got["active"][-1]


def test_unknown_files_and_folders_are_clear_errors(info, tmp_path):
    model_info, _, _ = info
    with pytest.raises(ValueError, match="'nope.safetensors' is not a file of the 'checkpoints' model folder"):
        model_info.describe("checkpoints", "nope.safetensors")
    with pytest.raises(ValueError, match="folder 'loras' is not one GuideKit describes"):
        model_info.describe("loras", "x.safetensors")
    with pytest.raises(ValueError, match="is not one of the pack's files"):
        model_info.describe("guidekit_mnist", "../../README.md")


@pytest.mark.parametrize("sampler,scheduler,steps,denoise", [("euler", "normal", 10, 1.0), ("euler", "karras", 7, 0.6),
                                                              ("dpm_2", "simple", 8, 1.0)])
def test_schedule_is_ksamplers(info, thin, sampler, scheduler, steps, denoise):
    import comfy.samplers
    model_info, _, _ = info
    model = thin.build("sd15")
    ks = comfy.samplers.KSampler(model, steps, torch.device("cpu"), sampler, scheduler, denoise)
    got = model_info.schedule(model.get_model_object("model_sampling"), scheduler, sampler, steps, denoise, 0.0, 1.0)
    assert got["sigmas"] == pytest.approx(ks.sigmas.tolist(), rel=1e-6)
    assert len(got["active"]) == len(got["sigmas"]) - 1 and all(got["active"])


def test_schedule_rejects_bad_input(info, thin):
    model_info, _, _ = info
    ms = thin.build("sd15").get_model_object("model_sampling")
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        model_info.schedule(ms, "nope", "euler", 10, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="'start_percent' .* is after 'end_percent'"):
        model_info.schedule(ms, "normal", "euler", 10, 1.0, 0.8, 0.2)
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        model_info.schedule(ms, "normal", "nope", 10, 1.0, 0.0, 1.0)
    for denoise in (0.0, -1.0, 1.5):
        with pytest.raises(ValueError, match="denoise must be above 0 and at most 1"):
            model_info.schedule(ms, "normal", "euler", 10, denoise, 0.0, 1.0)
    with pytest.raises(ValueError, match="steps / denoise = 1000000 schedule steps"):
        model_info.schedule(ms, "normal", "euler", 100, 0.0001, 0.0, 1.0)
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        model_info.schedule(ms, "normal", "euler", 1001, 1.0, 0.0, 1.0)


class StepRows:
    """Counts the diffusion model's batch rows per distinct timestep (one sampling step each)."""

    def __init__(self, *patchers):
        self.rows: Counter = Counter()
        self.handles = [p.model.diffusion_model.register_forward_pre_hook(self.hook, with_kwargs=True)
                        for p in patchers]

    def hook(self, module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs.get("timesteps", kwargs.get("timestep"))
        self.rows[round(float(t.flatten()[0]), 3)] += args[0].shape[0]

    def per_step(self) -> list[int]:
        for h in self.handles:
            h.remove()
        return [self.rows[k] for k in sorted(self.rows, reverse=True)]


def sampled_rows(thin, patched, *hooked, steps=6, cfg=4.0):
    counter = StepRows(*hooked)
    thin.sample(patched, "sd15", steps=steps, cfg=cfg)
    return counter.per_step()


def node_cases(thin):
    """Every registered node with a cost that runs on a model (and a weak model): at its defaults, and with each
    widget value its cost table names."""
    from guidekit.nodes.base import WIDGETS
    from guidekit.nodes.catalog import NODES
    main, weak = thin.build("sd15", seed=0), thin.build("sd15", seed=1)
    sockets = {"model": main, "weak_model": weak}
    for cls in NODES:
        needed = {s.id for s in cls.define_schema().inputs if not isinstance(s, WIDGETS) and not s.optional}
        if cls.COST is None or not needed <= sockets.keys():
            continue
        for widgets in [{}] + [{rule["widget"]: rule["value"]} for rule in cls.COST.get("overrides", [])]:
            patched = cls.run(**{name: sockets[name] for name in needed}, **widgets)[0]
            yield cls.node_id(), widgets, patched, [sockets[name] for name in ("model", "weak_model") if name in needed]


def test_declared_extra_passes_are_what_each_node_runs(info, thin):
    """The badge's numbers: rows per step with the node minus plain CFG's two, on every step."""
    _, _, catalog = info
    bare = thin.build("sd15")
    plain = sampled_rows(thin, bare, bare)
    seen = set()
    for node_id, widgets, patched, hooked in node_cases(thin):
        expected = catalog.extra_passes(node_id, widgets)
        rows = sampled_rows(thin, patched, *hooked)
        assert rows == [r + expected for r in plain], (node_id, widgets, rows, plain)
        seen.add(node_id)
    # NAG's cost depends on the family (UNets 0, DiTs 1: its badge shows the DiT number): test_host_nag.py counts both
    assert set(catalog.costs()) - seen <= {"GuideKitAutoguidanceGuider", "GuideKitDegradedModel",
                                           "GuideKitLossGuidance", "GuideKitNAG"}


def test_schedule_view_predicts_the_steps_the_extra_pass_runs(info, thin):
    """The frontend's active steps for a range are exactly the steps where PAG ran its extra pass."""
    from guidekit.nodes import pag

    from attention_nodes import BRANCH
    model_info, _, _ = info
    main = thin.build("sd15")
    patched = pag.PerturbedAttentionGuidanceGK.execute(
        main, 3.0, **{**BRANCH, "start_percent": 0.3, "end_percent": 0.7}, adaptive_scale=0.0).result[0]
    rows = sampled_rows(thin, patched, main, steps=10)
    view = model_info.schedule(main.get_model_object("model_sampling"), "normal", "euler", 10, 1.0, 0.3, 0.7)
    assert [r == 3 for r in rows] == view["active"]
    assert 0 < sum(view["active"]) < 10


def test_layer_selection_uses_the_nodes_parser(info, models_dir):
    import folder_paths
    folder_paths.add_model_folder_path("checkpoints", str(models_dir / "checkpoints"))
    model_info, _, _ = info
    d = model_info.describe("checkpoints", "guidekit-thin-sd15.safetensors")
    assert d.selection("default") == {"selected": ["middle.0.0"], "selected_text": "middle.0.0"}
    both = d.selection("output.0.0, output.1.0")
    assert both["selected"] == ["output.0.0", "output.1.0"] and both["selected_text"] == "output.0.0, output.1.0"
    bad = d.selection("double.3")
    assert bad["selected"] == [] and "names no layer" in bad["selected_error"]
