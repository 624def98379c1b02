"""Tier 2: PAG, SEG and SAG nodes on thin models of every architecture, sampled with comfy.sample."""
import pytest
import torch

from attention_nodes import RowCounter, assert_same_guidance, changed, core_pag, core_sag, pag, sag, seg

pytestmark = pytest.mark.host

UNETS = ["sd15", "sdxl"]
DITS = ["sd3", "flux", "chroma"]


@pytest.fixture(scope="module")
def models(thin):
    """Thin models with sharp attention (weights std 0.05), so perturbing it visibly changes samples."""
    return {arch: thin.build(arch, std=0.05) for arch in UNETS + DITS}


# --- parity with ComfyUI core ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", UNETS)
@pytest.mark.parametrize("evaluation", ["separate", "batched"])
def test_pag_equals_core_pag(thin, models, arch, evaluation):
    """Mid block, full range, scale 3: the same sampled latent as core PerturbedAttentionGuidance."""
    base = models[arch]
    core = thin.sample(core_pag(base), arch)
    assert_same_guidance(thin.sample(pag(base, evaluation=evaluation), arch), core, thin.sample(base, arch))


@pytest.mark.parametrize("arch", UNETS)
@pytest.mark.parametrize("batch,height,width", [(1, 16, 16), (2, 16, 24)])
def test_sag_equals_core_sag(thin, models, arch, batch, height, width):
    """Layer middle.0.0, blur 2, threshold 1: core SelfAttentionGuidance's latent, batches and non-square too."""
    base = models[arch]
    kw = dict(batch=batch, height=height, width=width)
    core = thin.sample(core_sag(base), arch, **kw)
    ours = thin.sample(sag(base, layer="middle.0.0"), arch, **kw)
    # attention maps are computed by different kernels (ours: the host's own); float noise only
    assert_same_guidance(ours, core, thin.sample(base, arch, **kw))


# --- SEG limits ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["sd15", "flux"])
def test_seg_with_vanishing_blur_is_unguided(thin, models, arch):
    """σ → 0: the kernel is 1 tap, the perturbed pass equals the conditional one, the guidance term is 0."""
    base = models[arch]
    unguided, blurred = thin.sample(base, arch), thin.sample(seg(base, blur_sigma=1.0), arch)
    assert_same_guidance(thin.sample(seg(base, blur_sigma=1e-3), arch), unguided, blurred)


def query_recorder(previous_slot):
    """A patch that records the queries it is given on GuideKit-marked calls, then attends normally."""
    from comfy.ldm.modules.attention import optimized_attention

    from guidekit.nodes.attention_hooks import MARK
    seen = []

    def unet(q, k, v, extra):
        if extra.get(MARK):
            seen.append(q.clone())
        return optimized_attention(q, k, v, extra["n_heads"])

    def dit(func, *args, **kwargs):
        to = kwargs["transformer_options"]
        if to.get(MARK) and (to.get("block_type"), to.get("block_index")) == previous_slot:
            seen.append(args[0].clone())
        return func(*args, **kwargs)
    return seen, unet, dit


@pytest.mark.parametrize("arch,height,width", [("sd15", 16, 24), ("sdxl", 24, 16), ("flux", 16, 24)])
def test_seg_infinite_blur_makes_image_queries_constant(thin, models, arch, height, width):
    """σ → ∞ on a non-square latent: every image query of the perturbed pass is the spatial mean."""
    base = models[arch].clone()
    slot = ("single", 0)
    seen, unet, dit = query_recorder(slot)
    if arch == "flux":
        base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = dit
        layers, n_image = "single.0", (height // 2) * (width // 2)
    else:
        base.set_model_attn1_replace(unet, "middle", 0, 0)      # our hook chains to it on its rows
        layers = "middle.0.0"
    thin.sample(seg(base, layers=layers), arch, steps=2, height=height, width=width)
    assert len(seen) == 2
    for q in seen:
        if arch == "flux":      # (B, heads, text + image tokens, d): image tokens constant, text untouched
            img, text = q[:, :, -n_image:], q[:, :, :-n_image]
            assert changed(text, text.mean(dim=2, keepdim=True).expand_as(text), 1e-3)
        else:                   # (B, tokens, heads·d): all tokens are image tokens
            img = q.unflatten(-1, (8, -1)).transpose(1, 2) if arch == "sd15" else q.unsqueeze(1)
        torch.testing.assert_close(img, img.mean(dim=2, keepdim=True).expand_as(img))


# --- evaluation strategies, batches, stacking ----------------------------------------------------------

@pytest.mark.parametrize("arch", ["sd15", "flux", "sd3"])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("node", [pag, seg])
def test_batched_equals_separate(thin, models, arch, batch, node):
    base = models[arch]
    separate = thin.sample(node(base, evaluation="separate"), arch, batch=batch, height=16, width=24)
    batched = thin.sample(node(base, evaluation="batched"), arch, batch=batch, height=16, width=24)
    assert_same_guidance(batched, separate, thin.sample(base, arch, batch=batch, height=16, width=24))


@pytest.mark.parametrize("arch", ["sd15", "chroma"])
def test_replace_uncond_is_cfg_free_guidance(thin, models, arch):
    """In place of uncond: cond + s·(cond − perturbed), whatever the sampler's cfg: = extra pass at cfg 1."""
    base = models[arch]
    in_place = thin.sample(pag(base, mode="replace uncond"), arch, cfg=5.0)
    assert_same_guidance(in_place, thin.sample(pag(base), arch, cfg=1.0), thin.sample(base, arch, cfg=1.0))


@pytest.mark.parametrize("arch", ["sd15", "flux"])
@pytest.mark.parametrize("evaluation", ["separate", "batched"])
def test_stacked_pag_and_seg_follow_the_sum_rule(thin, models, arch, evaluation):
    """One euler step to σ = 0 returns D itself, so stacked terms must add: D_both − D = ΔPAG + ΔSEG."""
    base = models[arch]
    one = dict(steps=1)
    plain = thin.sample(base, arch, **one)
    d_pag = thin.sample(pag(base, evaluation=evaluation), arch, **one) - plain
    d_seg = thin.sample(seg(base, evaluation=evaluation, blur_sigma=1.0), arch, **one) - plain
    both = thin.sample(seg(pag(base, evaluation=evaluation), evaluation=evaluation, blur_sigma=1.0), arch, **one)
    assert_same_guidance(both - plain, d_pag + d_seg, d_pag)      # error ≤ 1 % of the SEG term
    assert_same_guidance(both - plain, d_pag + d_seg, d_seg)      # and of the PAG term


@pytest.mark.parametrize("stack", ["ours then core PAG", "core PAG then ours", "core SAG then ours",
                                   "ours then core SAG"])
def test_stacking_with_core_nodes_keeps_both(thin, models, stack):
    """Our node and a core patch node on the same mid block: both terms present (the sum rule)."""
    base = models["sd15"]
    one = dict(steps=1)
    plain = thin.sample(base, "sd15", **one)
    ours = (lambda m: seg(m, blur_sigma=1.0, evaluation="batched")) if "PAG" in stack else \
        (lambda m: pag(m, evaluation="batched"))
    core = core_pag if "PAG" in stack else core_sag
    stacked = core(ours(base)) if stack.startswith("ours") else ours(core(base))
    expected = (thin.sample(ours(base), "sd15", **one) - plain) + (thin.sample(core(base), "sd15", **one) - plain)
    ours_alone = thin.sample(ours(base), "sd15", **one) - plain
    assert_same_guidance(thin.sample(stacked, "sd15", **one) - plain, expected, expected - ours_alone)
    assert_same_guidance(thin.sample(stacked, "sd15", **one) - plain, expected, ours_alone)


def test_core_pag_is_a_no_op_on_chroma_and_ours_is_not(thin, models):
    """ComfyUI#12177: core PAG patches UNet attn1 only, so on a DiT it silently changes nothing.

    Core's "perturbed" pass is an ordinary conditional pass in a call of another batch size, so its result
    differs from plain CFG by float rounding alone: below 1 % of the change our PAG makes (not bit-equal,
    since BLAS kernels differ between batch shapes and CPUs)."""
    base = models["chroma"]
    plain, ours = thin.sample(base, "chroma"), thin.sample(pag(base), "chroma")
    assert changed(ours, plain, 0.1)
    assert_same_guidance(thin.sample(core_pag(base), "chroma"), plain, ours)


# --- gating, chunking, rescale, adaptive scale ---------------------------------------------------------

def evaluated_sigmas(model, steps):
    import comfy.samplers
    ms = model.get_model_object("model_sampling")
    return comfy.samplers.calculate_sigmas(ms, "normal", steps)[:-1]


@pytest.mark.parametrize("arch", ["sd15", "flux"])
@pytest.mark.parametrize("variant", ["separate", "batched", "replace uncond", "sag"])
def test_no_extra_rows_outside_the_active_range(thin, models, arch, variant):
    base, steps = models[arch], 10
    counter = RowCounter()
    window = dict(start_percent=0.3, end_percent=0.6)
    if variant == "sag":
        patched = sag(base, **window)
    elif variant == "replace uncond":
        patched = pag(base, mode="replace uncond", **window)
    else:
        patched = pag(base, evaluation=variant, **window)
    thin.sample(counter.attach(patched), arch, steps=steps)
    ms = base.get_model_object("model_sampling")
    high, low = float(ms.percent_to_sigma(0.3)), float(ms.percent_to_sigma(0.6))
    active = sum(1 for s in evaluated_sigmas(base, steps) if low <= float(s) <= high)
    assert 0 < active < steps
    extra = 0 if variant == "replace uncond" else active
    assert counter.rows == 2 * steps + extra
    assert counter.calls == steps + (extra if variant in ("separate", "sag") else 0)


def test_chunked_batches_give_the_unchunked_result(thin, models, monkeypatch):
    """When ComfyUI runs cond, uncond and the perturbed rows as separate chunks (low memory)."""
    import comfy.model_management as mm
    base = models["sdxl"]
    kw = dict(batch=2, height=16, width=24)
    whole_sag = thin.sample(sag(base), "sdxl", **kw)
    whole_pag = thin.sample(pag(base, evaluation="batched"), "sdxl", **kw)
    real = mm.get_free_memory
    # calc_cond_batch asks for free memory with one argument: answer 0 there, so it runs one cond per call
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False:
                        real(dev, True) if torch_free_too else 0)
    counter = RowCounter()
    chunked_pag = thin.sample(counter.attach(pag(base, evaluation="batched")), "sdxl", steps=4, **kw)
    assert counter.calls == 3 * 4 and counter.rows == 3 * 4 * 2      # one chunk per branch, batch 2 each
    unguided = thin.sample(base, "sdxl", **kw)
    assert_same_guidance(chunked_pag, whole_pag, unguided)
    assert_same_guidance(thin.sample(sag(base), "sdxl", **kw), whole_sag, unguided)


def test_rescale_matches_the_conditional_std(thin, models):
    """rescale = 1: at every step, per sample, std(x − D_guided) = std(x − D_cond) (Lin et al. eq. 15-16)."""
    seen = []

    def capture(args):      # registered after PAG's, so it sees PAG's result
        seen.append((args["input"], args["denoised"], args["cond_denoised"]))
        return args["denoised"]

    base = models["sd15"]
    patched = pag(base, rescale=1.0)
    patched.set_model_sampler_post_cfg_function(capture)
    thin.sample(patched, "sd15", batch=2, steps=3)
    assert len(seen) == 3
    std = lambda t: t.flatten(1).std(dim=1)  # noqa: E731
    for x, guided, cond in seen:
        torch.testing.assert_close(std(x - guided), std(x - cond))
    assert changed(thin.sample(pag(base, rescale=1.0), "sd15"), thin.sample(pag(base), "sd15"), 1e-2)


def test_adaptive_scale_fades_and_skips_the_branch_at_zero(thin, models):
    """s_t = max(0, s − a·(1000 − t)) on the model's own timesteps; steps where it is 0 cost nothing."""
    from guidekit.guidance.pag import adaptive_scale
    base, steps, a = models["sd15"], 6, 0.006
    ms = base.get_model_object("model_sampling")
    scales = [adaptive_scale(3.0, a, float(ms.timestep(s))) for s in evaluated_sigmas(base, steps)]
    assert scales[0] > 2.9 and scales[-1] == 0.0
    counter = RowCounter()
    faded = thin.sample(counter.attach(pag(base, adaptive_scale=a)), "sd15", steps=steps)
    assert counter.rows == 2 * steps + sum(s > 0 for s in scales)
    assert changed(faded, thin.sample(pag(base), "sd15", steps=steps), 1e-2)
    assert changed(faded, thin.sample(base, "sd15", steps=steps), 1e-2)


# --- the model is cloned, never changed -----------------------------------------------------------------

def test_nodes_leave_their_input_model_unchanged(thin, models):
    base = models["sdxl"]
    before = thin.sample(base, "sdxl")
    options = repr(sorted(base.model_options.keys()))
    for patched in (pag(base), seg(base, evaluation="batched"), sag(base), pag(base, mode="replace uncond")):
        assert patched is not base and patched.model_options is not base.model_options
        thin.sample(patched, "sdxl", steps=1)
    assert repr(sorted(base.model_options.keys())) == options
    torch.testing.assert_close(thin.sample(base, "sdxl"), before)


# --- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,layers,needle", [
    ("sd15", "middle.x", "cannot read 'middle.x'"),
    ("sd15", "output.99", "'output.99' names no layer"),
    ("sd15", "double.0", "'double.0' names no layer"),
    ("flux", "middle", "'middle' names no layer"),
    ("flux", "double.0.1", "'double.0.1' names no layer"),
])
def test_bad_layer_lists_name_the_input_and_list_valid_layers(models, arch, layers, needle):
    with pytest.raises(ValueError) as err:
        pag(models[arch], layers=layers)
    message = str(err.value)
    assert message.startswith("GuideKit PAG: input 'layers'") and needle in message
    assert ("middle.0.0" in message) if arch == "sd15" else ("double.0-1, single.0-1" in message)


def test_bad_ranges_and_sag_layer_counts(models):
    with pytest.raises(ValueError, match="GuideKit SEG: input 'start_percent'.*after 'end_percent'"):
        seg(models["sd15"], start_percent=0.8, end_percent=0.2)
    with pytest.raises(ValueError, match="GuideKit PAG: inputs 'sigma_start' / 'sigma_end' give an empty range"):
        pag(models["sd15"], sigma_start=1.0, sigma_end=2.0)
    with pytest.raises(ValueError, match="GuideKit SAG: input 'layer' must name exactly one layer.*middle.0.0-1"):
        sag(models["sdxl"], layer="middle")
    with pytest.raises(ValueError, match="GuideKit PAG: input 'mode': another GuideKit node"):
        pag(seg(models["sd15"], mode="replace uncond"), mode="replace uncond")


def test_a_model_without_reachable_attention_is_refused_by_name(thin):
    import comfy.supported_models
    config = {**thin.SPECS["sd15"].unet_config, "transformer_depth": [0, 0], "transformer_depth_middle": 0,
              "transformer_depth_output": [0, 0, 0, 0]}
    no_attention = thin.seeded_patcher(comfy.supported_models.SD15, config, 0)
    with pytest.raises(ValueError, match=r"GuideKit SEG: this model \(UNetModel\) has no self-attention"):
        seg(no_attention)
