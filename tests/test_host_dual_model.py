"""Tier 2: Autoguidance (model patch, guider, degraded self) and SIMS on thin models, sampled with comfy.sample.

One euler step from σ_max to 0 returns the guided D itself, so formulas are checked on D exactly.
"""
import gc
import weakref

import pytest
import torch

from attention_nodes import pag

pytestmark = pytest.mark.host

ONE = dict(steps=1)


@pytest.fixture(scope="module")
def nodes(comfy):
    from guidekit.nodes import autoguidance, sims
    return autoguidance, sims


def ag(nodes, model, weak, w=2.0, start=0.0, end=1.0, **kw):
    return nodes[0].AutoguidanceGK.execute(model, weak, w, start, end, **kw).result[0]


def lora_for(model, strength: float, seed: int = 0):
    """`model` + a real LoRA file's weights on every self-attention projection, loaded as LoraLoader does."""
    import comfy.sd
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, weight in model.model.state_dict().items():
        if ".attn1.to_" in key and key.endswith(".weight") and weight.ndim == 2:
            name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
            sd[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], 4, generator=gen) * 0.2
            sd[f"{name}.lora_down.weight"] = torch.randn(4, weight.shape[1], generator=gen) * 0.2
            sd[f"{name}.alpha"] = torch.tensor(4.0)
    patched, _ = comfy.sd.load_lora_for_models(model, None, sd, strength, 0.0)
    assert len(patched.patches) == len(sd) // 3 > 0
    return patched


def assert_close(a, b, what, tol=1e-4):
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"{what}: max |Δ| = {err:.3e}"


@pytest.mark.parametrize("arch", ["sd15", "flux"])
@pytest.mark.parametrize("batch", [1, 3])
def test_autoguidance_is_the_papers_lerp(thin, nodes, arch, batch):
    """Karras et al. eq. 2 at cfg 1: D = D_weak + w·(D_main − D_weak), the weak model on the same condition."""
    main, weak = thin.build(arch, seed=0, std=0.05), thin.build(arch, seed=1, std=0.05)
    d_main = thin.sample(main, arch, cfg=1.0, batch=batch, **ONE)
    d_weak = thin.sample(weak, arch, cfg=1.0, batch=batch, **ONE)
    assert (d_main - d_weak).abs().max() > 1e-2
    guided = thin.sample(ag(nodes, main, weak, w=2.5), arch, cfg=1.0, batch=batch, **ONE)
    assert_close(guided, torch.lerp(d_weak, d_main, 2.5), "autoguidance")


def test_w_one_is_the_main_model_and_weak_equal_main_is_the_main_model(thin, nodes):
    main, weak = thin.build("sd15", seed=0, std=0.05), thin.build("sd15", seed=1, std=0.05)
    plain = thin.sample(main, "sd15", cfg=1.0)
    assert torch.equal(thin.sample(ag(nodes, main, weak, w=1.0), "sd15", cfg=1.0), plain)
    assert_close(thin.sample(ag(nodes, main, main, w=3.0), "sd15", cfg=1.0), plain, "weak = main", tol=1e-5)
    assert_close(thin.sample(ag(nodes, main, main.clone(), w=3.0), "sd15", cfg=4.0),
                 thin.sample(main, "sd15", cfg=4.0), "weak = clone of main, with CFG", tol=1e-5)


def test_cfg_rides_on_top(thin, nodes):
    """cfg > 1: CFG(D_c, D_u) + (w − 1)·(D_main(c) − D_weak(c))."""
    main, weak = thin.build("sdxl", seed=0, std=0.05), thin.build("sdxl", seed=1, std=0.05)
    cfg_only = thin.sample(main, "sdxl", cfg=4.0, **ONE)
    d_main = thin.sample(main, "sdxl", cfg=1.0, **ONE)
    d_weak = thin.sample(weak, "sdxl", cfg=1.0, **ONE)
    guided = thin.sample(ag(nodes, main, weak, w=2.0), "sdxl", cfg=4.0, **ONE)
    assert_close(guided, cfg_only + 1.0 * (d_main - d_weak), "CFG + autoguidance")


def test_same_file_at_two_lora_strengths(thin, nodes):
    """main = checkpoint + LoRA 1.0, weak = the same loaded checkpoint + LoRA 0.3: no copy, different weights."""
    base = thin.build("sd15", seed=0, std=0.05)
    main, weak = lora_for(base, 1.0), lora_for(base, 0.3)
    assert main.model is weak.model is base.model            # one set of modules, as for one file
    d_base = thin.sample(base, "sd15", cfg=1.0, **ONE)
    d_main = thin.sample(main, "sd15", cfg=1.0, **ONE)
    d_weak = thin.sample(weak, "sd15", cfg=1.0, **ONE)
    assert (d_main - d_weak).abs().max() > 1e-2, "the two LoRA strengths must predict differently"
    guided = thin.sample(ag(nodes, main, weak, w=2.0), "sd15", cfg=1.0, **ONE)
    assert_close(guided, torch.lerp(d_weak, d_main, 2.0), "same-file autoguidance")
    # and nothing leaked: each model alone still predicts what it did, bare weights untouched
    assert_close(thin.sample(main, "sd15", cfg=1.0, **ONE), d_main, "main after", tol=1e-6)
    assert_close(thin.sample(base, "sd15", cfg=1.0, **ONE), d_base, "base after", tol=1e-6)
    guided_bare = thin.sample(ag(nodes, main, base, w=2.0), "sd15", cfg=1.0, **ONE)
    assert_close(guided_bare, torch.lerp(d_base, d_main, 2.0), "LoRA main, bare weak")


def test_both_models_load_for_sampling_and_are_released_after(thin, nodes):
    import comfy.model_management as mm
    import comfy.sample
    main, weak = thin.build("sd15", seed=0), thin.build("sd15", seed=1)
    patched = ag(nodes, main, weak)
    during = []

    def callback(step, x0, x, total):
        during.append({id(lm.model.model): lm.currently_used for lm in mm.current_loaded_models})

    latent = torch.zeros(thin.latent_shape("sd15"))
    comfy.sample.sample(patched, torch.randn(latent.shape), 2, 1.0, "euler", "normal", thin.conditioning("sd15"),
                        thin.conditioning("sd15", seed=2), latent, seed=0, disable_pbar=True, callback=callback)
    assert during and all(d.get(id(main.model)) and d.get(id(weak.model)) for d in during)
    assert weak.model.current_patcher is None, "the weak model was not cleaned up after sampling"
    mm.unload_all_models()
    assert weak.model.model_loaded_weight_memory == 0 and main.model.model_loaded_weight_memory == 0
    assert not any(lm.model is not None and lm.model.model in (main.model, weak.model)
                   for lm in mm.current_loaded_models)


def test_a_twin_dies_with_the_patched_model(thin, nodes):
    import comfy.model_management as mm
    base = thin.build("sd15", seed=0)
    main, weak = lora_for(base, 1.0), lora_for(base, 0.3)
    patched = ag(nodes, main, weak)
    twin = patched.additional_models["guidekit_weak_model"][0].model
    assert twin is not base.model
    shared = {n: p.data_ptr() for n, p in base.model.named_parameters()}
    assert all(p.data_ptr() == shared[n] for n, p in twin.named_parameters()), "twin must share the file's tensors"
    thin.sample(patched, "sd15", cfg=1.0, **ONE)
    ref = weakref.ref(twin)
    del twin, patched
    mm.unload_all_models()
    gc.collect()
    assert ref() is None


class HostBuffer:
    """Stands for what a dynamic-VRAM patcher (ComfyUI ≥ 0.4, NVIDIA) keeps on the model object: pinned host
    memory that must never be copied."""

    def __deepcopy__(self, memo):
        raise TypeError("a host buffer cannot be copied")

    def __reduce_ex__(self, protocol):
        raise TypeError("a host buffer cannot be copied")


def test_a_twin_copies_nothing_the_model_object_holds(thin, nodes):
    """The twin is a new module tree over the same tensors: the model's config, buffers and any load state on
    the model object (host buffers, patcher bookkeeping) are shared or dropped, never deep-copied."""
    base = thin.build("sd15", seed=0, std=0.05)
    base.model.dynamic_pins = {"cpu": HostBuffer()}
    try:
        main, weak = lora_for(base, 1.0), lora_for(base, 0.3)
        patched = ag(nodes, main, weak, w=2.0)
        twin = patched.additional_models["guidekit_weak_model"][0].model
        assert twin is not base.model and "dynamic_pins" not in twin.__dict__
        assert twin.model_config is base.model.model_config
        assert all(a is b for a, b in zip(twin.buffers(), base.model.buffers()))
        assert type(patched.additional_models["guidekit_weak_model"][0]).__name__ == "ModelPatcher"
        d_main = thin.sample(main, "sd15", cfg=1.0, **ONE)
        d_weak = thin.sample(weak, "sd15", cfg=1.0, **ONE)
        assert_close(thin.sample(patched, "sd15", cfg=1.0, **ONE), torch.lerp(d_weak, d_main, 2.0), "twin guidance")
    finally:
        del base.model.dynamic_pins


def test_input_models_are_left_unchanged(thin, nodes):
    main, weak = thin.build("sd15", seed=0), thin.build("sd15", seed=1)
    before = (dict(main.model_options), dict(main.additional_models), main.patches_uuid)
    ag(nodes, main, weak)
    assert (dict(main.model_options), dict(main.additional_models), main.patches_uuid) == before


def test_stacked_with_an_attention_node_the_terms_add(thin, nodes):
    main, weak = thin.build("sd15", seed=0, std=0.05), thin.build("sd15", seed=1, std=0.05)
    plain = thin.sample(main, "sd15", cfg=1.0, **ONE)
    d_pag = thin.sample(pag(main), "sd15", cfg=1.0, **ONE) - plain
    d_ag = thin.sample(ag(nodes, main, weak), "sd15", cfg=1.0, **ONE) - plain
    for stacked in (ag(nodes, pag(main), weak), pag(ag(nodes, main, weak))):
        assert_close(thin.sample(stacked, "sd15", cfg=1.0, **ONE) - plain, d_pag + d_ag, "PAG + autoguidance")
    assert d_pag.abs().max() > 1e-3 and d_ag.abs().max() > 1e-3


def test_active_range_skips_the_weak_pass(thin, nodes):
    main, weak = thin.build("sd15", seed=0), thin.build("sd15", seed=1)
    calls = []
    weak_counted = weak.clone()
    weak_counted.set_model_unet_function_wrapper(lambda f, a: calls.append(1) or f(a["input"], a["timestep"], **a["c"]))
    thin.sample(ag(nodes, main, weak_counted, start=0.5, end=1.0), "sd15", cfg=1.0, steps=4)
    assert 0 < len(calls) < 4


def test_guider_equals_the_model_patch(thin, nodes, comfy):
    import comfy.samplers
    main, weak = thin.build("sd15", seed=0, std=0.05), thin.build("sd15", seed=1, std=0.05)
    pos, neg = thin.conditioning("sd15", seed=1), thin.conditioning("sd15", seed=2)
    guider = nodes[0].AutoguidanceGuiderGK.execute(main, weak, 2.0, 0.0, 1.0, pos, 3.0, neg).result[0]
    latent = torch.zeros(thin.latent_shape("sd15"))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    sigmas = comfy.samplers.calculate_sigmas(main.get_model_object("model_sampling"), "normal", 4)
    out = guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=0, disable_pbar=True)
    assert_close(out, thin.sample(ag(nodes, main, weak), "sd15", cfg=3.0, steps=4), "guider vs patch", tol=1e-5)
    with pytest.raises(ValueError, match="'negative'"):
        nodes[0].AutoguidanceGuiderGK.execute(main, weak, 2.0, 0.0, 1.0, pos, 3.0)


def test_degraded_self_is_a_weak_model_on_the_same_weights(thin, nodes):
    main = thin.build("sd15", seed=0, std=0.05)
    degraded = nodes[0].DegradedModelGK.execute(main, "identity attention (PAG)", "default", -1.0).result[0]
    d_main = thin.sample(main, "sd15", cfg=1.0, **ONE)
    d_weak = thin.sample(degraded, "sd15", cfg=1.0, **ONE)
    assert (d_main - d_weak).abs().max() > 1e-3
    patched = ag(nodes, main, degraded, w=2.0)
    assert "guidekit_weak_model" not in patched.additional_models     # no second model: same weights
    assert_close(thin.sample(patched, "sd15", cfg=1.0, **ONE), torch.lerp(d_weak, d_main, 2.0), "degraded self")


@pytest.mark.parametrize("other", ["sdxl", "flux"])
def test_a_weak_model_of_another_architecture_is_refused(thin, nodes, other):
    with pytest.raises(ValueError, match="GuideKit Autoguidance: input 'weak_model'"):
        ag(nodes, thin.build("sd15"), thin.build(other))


def test_a_weak_model_with_another_schedule_is_refused(thin, nodes):
    import copy
    main = thin.build("sd15")
    schedule = copy.deepcopy(main.get_model_object("model_sampling"))
    schedule.set_sigmas(schedule.sigmas * 2.0)            # as a ModelSampling node would patch it
    weak = thin.build("sd15", seed=1)
    weak.add_object_patch("model_sampling", schedule)
    with pytest.raises(ValueError, match="noise schedule"):
        ag(nodes, main, weak)


@pytest.mark.parametrize("arch", ["sd15", "flux", "chroma"])
def test_sims_lora_trains_and_guides_on_the_same_loaded_model(thin, nodes, arch):
    """SIMS: a LoRA fine-tuned on the model's own samples is a different model on the same file's weights.
    Flux and Chroma: training backpropagates through their RoPE attention (a kernel without autograd on
    current ComfyUI unless GuideKit's compat layer switches it to the differentiable form)."""
    import comfy.model_management
    flag = getattr(comfy.model_management, "in_training", None)
    cfg = 1.0
    with torch.inference_mode():           # as in the server: weights, latents and the node run in inference mode
        main = thin.build(arch, seed=0, std=0.05)
        latents = thin.sample(main, arch, cfg=cfg, batch=4, steps=2)
        positive = thin.conditioning(arch, batch=4, seed=1)
        node = nodes[1].SIMSLoRAGK
        sims_model, lora, loss = node.execute(main, {"samples": latents}, positive, 5, 2, 1e-2, 4, 0).result
    assert getattr(comfy.model_management, "in_training", None) == flag, "the host's training flag was left changed"
    assert sims_model.model is main.model and lora and all(torch.isfinite(v).all() for v in lora.values())
    assert loss > 0 and not any(p.requires_grad for p in lora.values())
    d_main = thin.sample(main, arch, cfg=cfg, **ONE)
    d_sims = thin.sample(sims_model, arch, cfg=cfg, **ONE)
    assert (d_main - d_sims).abs().max() > 1e-4, "training changed nothing"
    omega = 1.5
    guided = thin.sample(ag(nodes, main, sims_model, w=1.0 + omega), arch, cfg=cfg, **ONE)
    assert_close(guided, d_main + omega * (d_main - d_sims), "SIMS: D_base + ω(D_base − D_sims)")
    assert_close(thin.sample(main, arch, cfg=cfg, **ONE), d_main, "base after", tol=1e-6)
    with pytest.raises(ValueError, match="input 'latents'"):
        node.execute(main, {"samples": latents[:1]}, positive, 5, 2, 1e-2, 4, 0)


def test_a_weak_model_in_another_latent_space_is_refused(thin, nodes):
    import comfy.latent_formats
    weak = thin.build("sd15", seed=1)
    weak.model.latent_format = comfy.latent_formats.SDXL()     # same UNet class, other VAE's latents
    with pytest.raises(ValueError, match="input 'weak_model' works in the SDXL latent space"):
        ag(nodes, thin.build("sd15"), weak)
