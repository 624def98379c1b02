"""Tier 2: PAG, SEG and SAG on every DiT family GuideKit reaches, on thin models of ComfyUI's own classes.

The battery each family passes (as Flux does in test_host_attention_guidance.py): the nodes run and change the
sample; batched = separate; outside the active range no extra rows run (rows counted); SEG with a vanishing
blur is unguided and with an infinite one makes each frame's image queries constant; PAG and SEG stacked add
their terms; a wrong layer name lists the model's layers; the input model is unchanged. Video families run
on (B, C, T, H, W) latents; Wan I2V's first frame is conditioning.
"""
import pytest
import torch

from attention_nodes import RowCounter, assert_same_guidance, changed, pag, sag, seg

pytestmark = pytest.mark.host

# Lumina 2 / Z-Image, HiDream, OmniGen2, Cosmos Predict2 (and on ComfyUI 0.33 Ideogram 4, Boogu, PixelDiT, PiD,
# Anima, CogVideoX): ComfyUI neither names their blocks nor checks a dit patch, so GuideKit names them by wrapping
# the blocks' forward for the length of each call.
WRAPPED = ["lumina2", "zimage", "hidream", "omnigen2", "cosmos_predict2", "ideogram4", "boogu", "pixeldit", "pid",
           "anima", "cogvideox"]
REACHED = ["wan21_t2v", "wan21_i2v", "wan22_t2v", "qwen_image", *WRAPPED, "flux2", "hunyuan_video",
           "hunyuan_video15", "hunyuan_image21", "ltxv", "mochi", "aura_flow", "chroma_radiance",
           "kandinsky5", "kandinsky5_image", "krea2",             # Kandinsky 5, Krea 2: ComfyUI 0.33 and later
           "longcat_image", "zimage_pixel", "lens", "mage_flow", "joyimage", "cogvideox_i2v"]   # 0.33 and later
STEPS = 3



def run(thin, model, arch, **kw):
    return thin.sample(model, arch, steps=kw.pop("steps", STEPS), **kw)


@pytest.mark.parametrize("arch", REACHED)
def test_pag_seg_sag_run_and_guide(thin, built, arch):
    base = built(arch)
    plain = run(thin, base, arch)
    for name, patched in (("PAG", pag(base)), ("SEG", seg(base)), ("SAG", sag(base, scale=2.0))):
        out = run(thin, patched, arch)
        assert out.shape == plain.shape and torch.isfinite(out).all(), name
        assert changed(out, plain, 1e-4), f"{name} changed nothing on {arch}"


@pytest.mark.parametrize("arch", REACHED)
def test_batched_equals_separate(thin, built, arch):
    base = built(arch)
    plain = run(thin, base, arch)
    assert_same_guidance(run(thin, pag(base, evaluation="batched"), arch),
                         run(thin, pag(base, evaluation="separate"), arch), plain)


@pytest.mark.parametrize("arch", REACHED)
def test_no_extra_rows_outside_the_active_range(thin, built, arch):
    base, steps = built(arch), 8
    counter = RowCounter()
    thin.sample(counter.attach(pag(base, evaluation="batched", start_percent=0.3, end_percent=0.6)), arch,
                steps=steps)
    import comfy.samplers
    ms = base.get_model_object("model_sampling")
    high, low = float(ms.percent_to_sigma(0.3)), float(ms.percent_to_sigma(0.6))
    sigmas = comfy.samplers.calculate_sigmas(ms, "normal", steps)[:-1]
    active = sum(1 for s in sigmas if low <= float(s) <= high)
    assert 0 < active < steps
    assert counter.rows == 2 * steps + active


@pytest.mark.parametrize("arch", REACHED)
def test_seg_limits(thin, built, arch):
    """σ → 0: the blurred pass is the conditional one (unguided); σ → ∞: each frame's image queries equal."""
    from guidekit.nodes.attention_hooks import GRID, MARK
    base = built(arch)
    plain = run(thin, base, arch)
    assert_same_guidance(run(thin, seg(base, blur_sigma=1e-3), arch), plain, run(thin, seg(base, blur_sigma=1.0), arch))
    from guidekit.nodes.layers import architecture, parse_layers
    slot = parse_layers("default", architecture(base, "test"), "test")[0]
    first = architecture(base, "test").image_first
    seen = []

    def recorder(func, *args, **kwargs):
        to = kwargs["transformer_options"]
        seq = 2 if kwargs.get("skip_reshape") else 1                # self-attention: as many keys as queries
        if to.get(MARK) and (to.get("block_type"), to.get("block_index")) == slot and \
                args[0].shape[seq] == args[1].shape[seq]:
            heads = args[3] if len(args) > 3 else kwargs["heads"]
            seen.append((args[0].clone(), to[GRID], kwargs.get("skip_reshape", False), heads))
        return func(*args, **kwargs)
    recorded = base.clone()
    recorded.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = recorder
    run(thin, seg(recorded, blur_sigma=-1.0, evaluation="separate"), arch, steps=1)
    assert seen, "the perturbed self-attention call was not seen"
    for q, (frames, h, w), heads_first, heads in seen:
        q = q if heads_first else q.unflatten(-1, (heads, -1)).transpose(1, 2)
        n = frames * h * w
        image = q[:, :, :n] if first else q[:, :, -n:]
        per_frame = image.unflatten(2, (frames, h * w))
        torch.testing.assert_close(per_frame, per_frame.mean(dim=3, keepdim=True).expand_as(per_frame),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", REACHED)
def test_pag_and_seg_stacked_add_their_terms(thin, built, arch):
    base = built(arch)
    one = dict(steps=1)
    plain = run(thin, base, arch, **one)
    d_pag = run(thin, pag(base), arch, **one) - plain
    d_seg = run(thin, seg(base, blur_sigma=1.0), arch, **one) - plain
    both = run(thin, seg(pag(base), blur_sigma=1.0), arch, **one) - plain
    assert_same_guidance(both, d_pag + d_seg, d_pag)
    assert_same_guidance(both, d_pag + d_seg, d_seg)


@pytest.mark.parametrize("arch", REACHED)
def test_layer_errors_list_the_models_layers_and_the_input_is_unchanged(thin, built, arch):
    from guidekit.nodes.layers import architecture, format_layers
    base = built(arch)
    before = run(thin, base, arch, steps=1)
    arch_info = architecture(base, "test")
    with pytest.raises(ValueError) as err:
        pag(base, layers="nowhere.3")
    assert "GuideKit PAG: input 'layers'" in str(err.value) and format_layers(arch_info.layers) in str(err.value)
    for patched in (pag(base), seg(base, evaluation="batched"), sag(base)):
        run(thin, patched, arch, steps=1)
    torch.testing.assert_close(run(thin, base, arch, steps=1), before)


@pytest.mark.parametrize("arch", WRAPPED)
def test_wrapped_blocks_are_named_only_during_a_call(thin, built, arch):
    """The forward wrappers exist only inside a model call GuideKit hooks: a run without GuideKit never sees
    them, the call GuideKit hooks sees every layer named, and none is left after a run or a call that fails."""
    from guidekit.nodes.layers import architecture
    base = built(arch)
    layers = architecture(base, "test").layers
    dm = base.get_model_object("diffusion_model")
    blocks = [b for _, attr in architecture(base, "test").wrapped for b in getattr(dm, attr)]
    assert len(blocks) == len(layers) and all("forward" not in b.__dict__ for b in blocks)
    seen, fail = [], []

    def recorder(func, *args, **kwargs):
        to = kwargs["transformer_options"]
        seen.append(((to.get("block_type"), to.get("block_index")), any("forward" in b.__dict__ for b in blocks)))
        if fail:
            raise RuntimeError("a failing attention call")
        return func(*args, **kwargs)
    plain = base.clone()
    plain.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = recorder
    run(thin, plain, arch, steps=1)
    assert seen and not any(wrapped for _, wrapped in seen), "a run without GuideKit saw the wrappers"
    seen.clear()
    run(thin, seg(plain, blur_sigma=-1.0), arch, steps=1)           # SEG hands its queries on to `recorder`
    assert set(layers) <= {label for label, wrapped in seen if wrapped}     # SEG's own call ("separate" on CPU)
    assert all("forward" not in b.__dict__ for b in blocks)
    fail.append(True)
    with pytest.raises(RuntimeError, match="a failing attention call"):
        run(thin, seg(plain), arch, steps=1)
    assert all("forward" not in b.__dict__ for b in blocks)


# (module, class, family named in the refusal, words of the reason); the last four: ComfyUI 0.33 and later
REFUSED = [("comfy.ldm.pixart.pixartms", "PixArtMS", "PixArt", "without transformer_options"),
           ("comfy.ldm.hydit.models", "HunYuanDiT", "HunyuanDiT", "without transformer_options"),
           ("comfy.ldm.ernie.model", "ErnieImageModel", "ERNIE-Image", "without transformer_options"),
           ("comfy.ldm.lightricks.av_model", "LTXAVModel", "LTX-2 audio-video", "video and the audio"),
           ("comfy.ldm.minimax.model", "MiniMaxH3Model", "MiniMax H3", "packed sequence"),
           ("comfy.ldm.hidream_o1.model", "HiDreamO1Transformer", "HiDream-O1", "two-pass attention")]


@pytest.mark.parametrize("module, cls, name, reason", REFUSED, ids=[r[1] for r in REFUSED])
def test_families_the_override_cannot_reach_are_refused_with_the_reason(thin, module, cls, name, reason):
    import importlib

    from guidekit.nodes.layers import architecture_of
    try:
        cls = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        pytest.skip(f"this ComfyUI has no {module}.{cls}")
    dm = cls.__new__(cls)                                           # the class is all the table reads
    with pytest.raises(ValueError) as err:
        architecture_of(dm, "GuideKit PAG")
    message = str(err.value)
    assert message.startswith("GuideKit PAG: this model") and f"({name}: " in message and reason in message


# Classes GuideKit reaches through a row written for their base class (module, class, row id): 0.33 and later.
INHERITED = [("comfy.ldm.anima.model", "Anima", "cosmos_predict2"), ("comfy.ldm.pixeldit.pid", "PidNet", "pixeldit"),
             ("comfy.ldm.lumina.model", "NextDiTPixelSpace", "lumina2")]


@pytest.mark.parametrize("module, cls, family", INHERITED, ids=[r[1] for r in INHERITED])
def test_subclasses_are_reached_through_their_base_class_row(thin, module, cls, family):
    import importlib

    from guidekit.nodes.layers import family_of
    try:
        cls = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        pytest.skip(f"this ComfyUI has no {module}.{cls}")
    assert family_of(cls.__new__(cls)).id == family


def seg_queries_of_one_batched_call(thin, base, arch, height=16, width=16, extra=None):
    """(SEG's blurred queries, the conditional row's queries, grid) at the default layer in one batched sampler
    call (infinite blur): the conditional row's input to that layer is SEG's (the layers before it are not
    perturbed), so its queries are what SEG's were before the blur. `extra`: more conditioning keys."""
    import comfy.sample

    from guidekit.nodes.attention_hooks import GRID, MARK
    from guidekit.nodes.layers import architecture, parse_layers
    slot = parse_layers("default", architecture(base, "test"), "test")[0]
    seen = []

    def recorder(func, *args, **kwargs):
        to = kwargs["transformer_options"]
        seq = 2 if kwargs.get("skip_reshape") else 1
        if to.get(MARK) and (to.get("block_type"), to.get("block_index")) == slot and \
                args[0].shape[seq] == args[1].shape[seq]:
            q = args[0] if kwargs.get("skip_reshape") else args[0].unflatten(-1, (args[3], -1)).transpose(1, 2)
            seen.append((q.clone(), to[GRID], list(to["cond_or_uncond"]), dict(to[MARK])))
        return func(*args, **kwargs)
    recorded = base.clone()
    recorded.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = recorder
    latent = torch.zeros(thin.latent_shape(arch, 1, height, width))
    conds = [thin.conditioning(arch, 1, seed=s, height=height, width=width) for s in (1, 2)]
    for cond in conds:
        cond[0][1].update(extra or {})
    out = comfy.sample.sample(seg(recorded, blur_sigma=-1.0, evaluation="batched"), torch.randn(latent.shape),
                              1, 4.0, "euler", "normal", *conds, latent, seed=0, disable_pbar=True)
    assert torch.isfinite(out).all() and len(seen) == 1, len(seen)
    q, grid, labels, marks = seen[0]                                # (B, heads, L, d)
    per_chunk = q.shape[0] // len(labels)
    chunk = [j for j, label in enumerate(labels) if label in marks]
    assert len(chunk) == 1 and 0 in labels
    return (q[chunk[0] * per_chunk:(chunk[0] + 1) * per_chunk],
            q[labels.index(0) * per_chunk:(labels.index(0) + 1) * per_chunk], grid)


def assert_only_the_image_span_blurred(blurred, reference, start, n):
    """Image queries [start, start + n) constant (and not before the blur); every other token as it was."""
    image, before = blurred[:, :, start:start + n], reference[:, :, start:start + n]
    torch.testing.assert_close(image, image.mean(dim=2, keepdim=True).expand_as(image), rtol=1e-4, atol=1e-4)
    assert (before - before.mean(dim=2, keepdim=True)).abs().max() > 1e-2, "the image queries were constant already"
    torch.testing.assert_close(blurred[:, :, start + n:], reference[:, :, start + n:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(blurred[:, :, :start], reference[:, :, :start], rtol=1e-4, atol=1e-5)


def test_z_image_padding_is_not_taken_for_image_tokens(thin, built):
    """Z-Image pads its image tokens to a multiple of 32: at 12x12 latents 36 image tokens, then 28 of padding."""
    from guidekit.nodes.layers import architecture
    base = built("zimage")
    assert architecture(base, "test").image_pad == 32
    blurred, reference, grid = seg_queries_of_one_batched_call(thin, base, "zimage", height=12, width=12)
    assert grid == (1, 6, 6) and blurred.shape[2] % 32 == 0
    assert_only_the_image_span_blurred(blurred, reference, blurred.shape[2] - 64, 36)


@pytest.mark.parametrize("arch, ref_shape, extra", [
    ("flux", (1, 16, 8, 8), {}), ("flux2", (1, 128, 8, 8), {}), ("qwen_image", (1, 16, 1, 8, 8), {}),
    ("krea2", (1, 16, 1, 8, 8), {"reference_latents_method": "index"}),
    ("krea2", (1, 16, 1, 8, 8), {}),                                # Krea 2 without a method: references unused
    ("mage_flow", (1, 128, 8, 8), {})])
def test_reference_image_tokens_are_not_taken_for_image_tokens(thin, built, arch, ref_shape, extra):
    """Flux Kontext / Flux 2, Qwen-Image Edit, Mage-Flow and Krea 2 append a reference latent's tokens after the image
    tokens ([text, image, reference]): the image grid is the sampled latent's, the reference tokens are left
    alone; where the model ignores the reference (Krea 2 with no reference method) there are none to skip."""
    base = thin.build(arch, std=0.1) if arch == "flux" else built(arch)
    ref = torch.randn(ref_shape, generator=torch.Generator().manual_seed(5))
    blurred, reference, grid = seg_queries_of_one_batched_call(thin, base, arch,
                                                               extra={"reference_latents": [ref], **extra})
    n_ref = 0 if arch == "krea2" and not extra else 64 if arch in ("flux2", "mage_flow") else 16   # patch 1 / 2
    n = grid[0] * grid[1] * grid[2]
    assert_only_the_image_span_blurred(blurred, reference, blurred.shape[2] - n_ref - n, n)


@pytest.mark.parametrize("arch", REACHED)
def test_tsg_noises_the_time_embedding_of_every_family_that_has_one(thin, built, arch):
    """TSG's negative is the positive with t_emb + s·t^α·n on the uncond rows: it changes the sample (also where
    t_emb is a nested module's output: LTX-Video, OmniGen2, Boogu, JoyImage). Chroma Radiance (time through its
    modulation network) and Cosmos Predict2 / Anima (modulation from two time tensors) are refused."""
    from guidekit.nodes.tsg import TimestepGuidanceGK
    base = built(arch)
    if arch in ("chroma_radiance", "cosmos_predict2", "anima"):
        with pytest.raises(ValueError, match="GuideKit TSG: input 'model' is a .*whose time embedding GuideKit cannot"):
            TimestepGuidanceGK.run(model=base)
        return
    patched = TimestepGuidanceGK.run(model=base, noise_scale=4.0)[0]
    out, plain = run(thin, patched, arch), run(thin, base, arch)
    assert torch.isfinite(out).all() and changed(out, plain, 1e-4)
