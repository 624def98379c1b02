"""Tier 2: loss guidance on thin models under ComfyUI's inference mode (real sampler, real VAE, open_clip).

Everything runs inside torch.inference_mode(), as ComfyUI executes prompts: loading, loss nodes, sampling.
The guided step itself is checked in tests/test_math_loss_guidance.py; here the host path is checked:
the gradient reaches x_t through the model, each method lowers the loss, batches, stacking, bad input.
"""
import logging

import pytest
import torch

pytestmark = pytest.mark.host

STEPS = 3


@pytest.fixture(scope="module")
def lg(comfy, models_dir):
    import folder_paths

    from guidekit.nodes import loss_guidance, loss_networks, loss_terms
    for folder in (loss_networks.OPEN_CLIP_FOLDER, loss_networks.NETWORK_FOLDER, "vae_approx"):
        folder_paths.add_model_folder_path(folder, str(models_dir / folder))
    loss_networks.register_model_folders()
    return loss_guidance, loss_terms, loss_networks


@pytest.fixture(scope="module")
def taesd(thin):
    with torch.inference_mode():
        return thin.taesd_vae()


@pytest.fixture(scope="module")
def clip_loss(lg, thin):
    with torch.inference_mode():
        clip = lg[1].OpenClipLoaderGK.execute(thin.TINY_CLIP_FILE, "auto").result[0]
        return lg[1].ClipTextLossGK.execute(clip, "a red apple", 1.0).result[0], clip


def guide(lg, model, vae, loss, method="FreeDoM", rule="polyak", scale=1.0, copies=0, recurrence=1, end=1.0,
          mc=2, backward_steps=0, gradient_vae=None, augmentations="color,translation,resize,cutout",
          gradient="exact"):
    return lg[0].LossGuidanceGK.execute(model, vae, loss, method, rule, scale, copies, augmentations, recurrence,
                                        0.0, 1.0, 0.0, end, mc, backward_steps, 0.1, gradient=gradient,
                                        gradient_vae=gradient_vae).result[0]


def patch_of(lg, model):
    import comfy.patcher_extension
    return model.get_wrappers(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, lg[0].WRAPPER_KEY)[0]


def sample(thin, model, arch="sd15", **kw):
    with torch.inference_mode():
        return thin.sample(model, arch, steps=STEPS, cfg=kw.pop("cfg", 2.0), **kw)


def final_loss(lg, loss, vae, latent):
    """The loss chain on the decoded final latents (what guidance tries to lower)."""
    with torch.inference_mode(False), torch.no_grad():
        images = vae.first_stage_model.decode(latent.clone()).float().add(1).div(2)
        return sum(t.weight * t.fn(images, torch.arange(images.shape[0])) for t in loss)


def test_gradient_reaches_x_t_through_the_model_under_inference_mode(thin, lg, taesd, clip_loss):
    model = thin.build("sd15")
    guided = guide(lg, model, taesd, clip_loss[0], "FreeDoM", "fixed", 50.0)
    out = sample(thin, guided)
    last = patch_of(lg, guided).last
    assert last is not None and torch.isfinite(last.change).all() and last.change.abs().max() > 0
    assert not last.skipped.any()
    assert torch.isfinite(out).all()
    assert (out - sample(thin, model)).abs().max() > 1e-4


def test_one_guided_step_equals_the_hand_computed_freedom_step(lg):
    """Pixel-space MNIST model, cfg 1, one euler step σ0 → 0: the sample is D − ρ·∇_x ℓ/√ᾱ (ᾱ' = 1)."""
    import comfy.sample
    import comfy.samplers

    from guidekit.nodes import demo_mnist
    with torch.inference_mode():
        model = demo_mnist.load_patcher(demo_mnist.WEIGHTS_DIR / "mnist-uncond.safetensors")
        vae = demo_mnist.pixel_space_vae()
        net = lg[1].NetworkLoaderGK.execute("mnist-classifier-guidance.safetensors", "auto", "auto", 0).result[0]
        loss = lg[1].ClassifierLossGK.execute(net, "3,7", 1.0).result[0]
        guided = guide(lg, model, vae, loss, "FreeDoM", "fixed", 0.5)
        cond = [[demo_mnist.digit_context([demo_mnist.NULL]), {}]]
        noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        out = comfy.sample.sample(guided, noise, 1, 1.0, "euler", "normal", cond, cond, torch.zeros_like(noise),
                                  seed=0, disable_pbar=True)
        sigma = float(comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 1)[0])
    base = model.model
    with torch.inference_mode(False), torch.enable_grad():
        x = (noise.clone() * (1 + sigma ** 2) ** 0.5).requires_grad_(True)   # ComfyUI: max_denoise start
        context = demo_mnist.digit_context([demo_mnist.NULL]).repeat(2, 1, 1)
        d = base.apply_model(x, torch.full((2,), sigma), c_crossattn=context)
        images = ((d + 1) / 2).mean(1, keepdim=True)
        ce = torch.nn.functional.cross_entropy(net.module(images), torch.tensor([3, 7]), reduction="sum")
        (grad,) = torch.autograd.grad(ce, x)
    ab = 1 / (1 + sigma ** 2)
    expected = d.detach() - 0.5 * grad / ab ** 0.5
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_mpgd_does_not_backpropagate_into_the_diffusion_model(thin, lg, taesd, clip_loss):
    model = thin.build("sd15")
    calls = []
    first = model.model.diffusion_model.input_blocks[0][0]
    handle = first.register_full_backward_hook(lambda *a: calls.append(1))
    try:
        sample(thin, guide(lg, model, taesd, clip_loss[0], "MPGD", "polyak", 1.0))
        assert calls == []
        sample(thin, guide(lg, model, taesd, clip_loss[0], "FreeDoM", "polyak", 1.0))
        assert len(calls) == STEPS                      # FreeDoM: one backward through the model per step
    finally:
        handle.remove()


@pytest.mark.parametrize("method,rule,scale", [("FreeDoM", "polyak", 2.0), ("DPS", "fixed", 30.0),
                                               ("MPGD", "polyak", 2.0), ("UG", "polyak", 2.0),
                                               ("LGD-MC", "polyak", 2.0)])
def test_each_method_lowers_the_loss(thin, lg, taesd, clip_loss, method, rule, scale):
    model = thin.build("sd15")
    loss = clip_loss[0]
    plain = final_loss(lg, loss, taesd, sample(thin, model, batch=2))
    guided = final_loss(lg, loss, taesd, sample(thin, guide(lg, model, taesd, loss, method, rule, scale), batch=2))
    assert torch.all(guided < plain), f"{method}: {guided.tolist()} vs unguided {plain.tolist()}"


def test_sketch_clip_image_and_chained_losses_are_lowered(thin, lg, taesd, clip_loss):
    nodes = lg[1]
    target = torch.zeros(1, 128, 128, 3)
    target[:, 40:88, 60:68] = 1.0                                    # a vertical bar
    with torch.inference_mode():
        sketch = nodes.SketchLossGK.execute(target, False, 1.0).result[0]
        reference = nodes.ClipImageLossGK.execute(clip_loss[1], torch.rand(1, 128, 128, 3), 1.0).result[0]
        chained = nodes.ClipTextLossGK.execute(clip_loss[1], "a bar", 0.5, loss=sketch).result[0]
    assert [t.name for t in chained] == ["sketch", "CLIP text 'a bar'"] and chained[1].weight == 0.5
    model = thin.build("sd15")
    for loss, scale in ((sketch, 0.3), (reference, 0.3), (chained, 0.3)):
        plain = final_loss(lg, loss, taesd, sample(thin, model))
        guided = final_loss(lg, loss, taesd, sample(thin, guide(lg, model, taesd, loss, "FreeDoM", "polyak", scale)))
        assert torch.all(guided < plain), f"{[t.name for t in loss]}: {guided.tolist()} vs {plain.tolist()}"


def test_batch_images_are_guided_independently(thin, lg, taesd, clip_loss):
    """Per-image losses and step sizes: image 0's guided step is the same alone, in a batch of 2, and beside
    another image 1. One step, so the comparison sees the guidance itself and not sampling's amplification
    of rounding (rows of batches of different sizes meet different BLAS kernels on different CPUs); the
    tolerance is 1 % of image 0's guidance change, which leaking another image's loss would exceed."""
    import comfy.sample
    model = thin.build("sd15")
    guided = guide(lg, model, taesd, clip_loss[0], "FreeDoM", "fixed", 100.0)
    noise = torch.randn(thin.latent_shape("sd15", 3), generator=torch.Generator().manual_seed(3))

    def one_step(m, rows):
        with torch.inference_mode():
            cond = thin.conditioning("sd15", 1, seed=1)
            x = noise[rows]
            return comfy.sample.sample(m, x, 1, 1.0, "euler", "normal", cond, cond, torch.zeros_like(x), seed=0,
                                       disable_pbar=True)[:1]

    alone, unguided = one_step(guided, [0]), one_step(model, [0])
    effect = (alone - unguided).abs().max().item()
    assert effect > 1e-2, f"the guidance changed nothing (max |Δ| = {effect:.2e})"
    for rows in ([0, 1], [0, 2]):
        error = (one_step(guided, rows) - alone).abs().max().item()
        assert error <= 1e-2 * effect, f"image 0 beside image {rows[1]}: |Δ| {error:.3e} vs effect {effect:.3e}"


def test_per_image_targets_follow_their_image(thin, lg):
    with torch.inference_mode():
        net = lg[1].NetworkLoaderGK.execute("mnist-classifier-guidance.safetensors", "auto", "auto", 0).result[0]
        loss = lg[1].ClassifierLossGK.execute(net, "0,2", 1.0).result[0]
    images = torch.rand(4, 3, 16, 16)
    with torch.inference_mode(False), torch.no_grad():
        values = loss[0].fn(images, torch.tensor([0, 1, 0, 1]))
        logits = net.module(images.mean(1, keepdim=True))            # grey, [0, 1] (the file's metadata)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2, 0, 2]), reduction="none")
    torch.testing.assert_close(values, expected)


def test_stacks_with_an_attention_node_either_way(thin, lg, taesd, clip_loss):
    from attention_nodes import pag
    model = thin.build("sd15", std=0.05)
    with_pag = pag(model, scale=2.0)
    a = sample(thin, guide(lg, with_pag, taesd, clip_loss[0]))
    b = sample(thin, pag(guide(lg, model, taesd, clip_loss[0]), scale=2.0))
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a - sample(thin, with_pag)).abs().max() > 1e-4
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)       # the order of patches does not matter


def test_tiny_decoder_and_augmentation_and_recurrence_run(thin, lg, taesd, clip_loss, models_dir):
    import comfy.sd
    import comfy.utils
    with torch.inference_mode():
        full = comfy.sd.load_checkpoint_guess_config(str(models_dir / "checkpoints" / "guidekit-thin-sd15.safetensors"),
                                                     output_vae=True, output_clip=False)[2]
    model = thin.build("sd15")
    outs = {}
    for name, kw in {"full": {}, "tiny": {"gradient_vae": taesd}, "aug": {"copies": 4},
                     "recur": {"recurrence": 2}}.items():
        outs[name] = sample(thin, guide(lg, model, full, clip_loss[0], "FreeDoM", "fixed", 20.0, **kw))
        assert torch.isfinite(outs[name]).all(), name
    assert (outs["full"] - outs["tiny"]).abs().max() > 1e-5       # the gradient came through another decoder
    assert (outs["full"] - outs["aug"]).abs().max() > 1e-5
    assert (outs["full"] - outs["recur"]).abs().max() > 1e-5


@pytest.mark.parametrize("arch", ["sdxl", "sd3", "flux", "chroma"])
def test_other_architectures_are_guided(thin, lg, clip_loss, arch):
    """SDXL (ε), SD3, Flux and Chroma (rectified flow; Flux's blocks update activations in place, and its RoPE
    is a kernel without autograd on current ComfyUI unless the compat layer selects the differentiable form;
    the host's flag is restored after each guided step)."""
    import comfy.model_management
    flag = getattr(comfy.model_management, "in_training", None)
    with torch.inference_mode():
        vae = thin.taesd_vae(thin.SPECS[arch].latent_channels, seed=1)
    model = thin.build(arch)
    guided = guide(lg, model, vae, clip_loss[0], "FreeDoM", "polyak", 2.0)
    cfg = 1.0 if arch in ("flux", "chroma") else 2.0
    out = sample(thin, guided, arch, cfg=cfg)
    assert getattr(comfy.model_management, "in_training", None) == flag
    assert torch.isfinite(out).all()
    assert (out - sample(thin, model, arch, cfg=cfg)).abs().max() > 1e-5
    last = patch_of(lg, guided).last
    assert last.change.abs().max() > 0 and not last.skipped.any()


def test_input_model_is_left_unchanged(thin, lg, taesd, clip_loss):
    model = thin.build("sd15")
    before = sample(thin, model)
    guide(lg, model, taesd, clip_loss[0])
    import comfy.patcher_extension
    assert not model.get_wrappers(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, lg[0].WRAPPER_KEY)
    torch.testing.assert_close(sample(thin, model), before)


def test_a_nan_loss_skips_the_step_reports_once_and_sampling_goes_on(thin, lg, taesd, caplog):
    nan_term = lg[1].LossTerm("nan", 1.0, lambda images, rows: images.mean((1, 2, 3)) * float("nan"))
    guided = guide(lg, thin.build("sd15"), taesd, (nan_term,), "FreeDoM", "polyak", 1.0)
    with caplog.at_level(logging.WARNING):
        out = sample(thin, guided)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, sample(thin, thin.build("sd15")))
    assert sum("not finite" in r.message for r in caplog.records) == 1


def test_bad_inputs_name_the_node_and_input(thin, lg, taesd, clip_loss):
    nodes = lg[1]
    model = thin.build("sd15")
    with torch.inference_mode():
        with pytest.raises(ValueError, match="Guidance Network Loader: input 'network_name' = 'missing.safetensors' is "
                                             "not one of its options"):
            nodes.NetworkLoaderGK.execute("missing.safetensors", "auto", "auto", 0)
        with pytest.raises(ValueError, match="'net.pt' is not a file of the 'guidekit_networks' model folder"):
            lg[2].load_network("net.pt", "auto", "auto", 0)
        with pytest.raises(ValueError, match="does not fit architecture 'guidekit:digit-cnn'"):
            nodes.NetworkLoaderGK.execute(thin.SEGMENTATION_FILE, "guidekit:digit-cnn", "auto", 0)
        with pytest.raises(ValueError,
                           match="OpenCLIP Loader: input 'architecture' = 'nope' is not an open_clip model"):
            nodes.OpenClipLoaderGK.execute(thin.TINY_CLIP_FILE, "nope")
        with pytest.raises(ValueError, match="input 'augmentations' names \\['flip'\\]"):
            guide(lg, model, taesd, clip_loss[0], augmentations="color,flip")
        with pytest.raises(ValueError, match="already has loss guidance"):
            guide(lg, guide(lg, model, taesd, clip_loss[0]), taesd, clip_loss[0])
        with pytest.raises(ValueError, match="input 'text' is empty"):
            nodes.ClipTextLossGK.execute(clip_loss[1], "  \n", 1.0)
        with pytest.raises(ValueError, match="input 'target_class'"):
            nodes.ClassifierLossGK.execute(None, "seven", 1.0)
        with pytest.raises(ValueError, match="Loss Guidance: input 'gradient' = 'slow' is not one of its options"):
            guide(lg, model, taesd, clip_loss[0], gradient="slow")


def test_an_inference_tensor_in_the_gradient_is_a_clear_error(thin, lg, taesd):
    with torch.inference_mode():
        frozen = torch.ones(1)                           # made under inference mode, as a careless loss might
    term = lg[1].LossTerm("careless", 1.0, lambda images, rows: (images * frozen).mean((1, 2, 3)))
    with pytest.raises(ValueError,
                       match="Loss Guidance: a tensor made under torch.inference_mode reached the gradient"):
        sample(thin, guide(lg, thin.build("sd15"), taesd, (term,)))


def test_segmentation_mask_of_another_size_is_resized_another_aspect_is_refused(thin, lg, taesd, caplog):
    with torch.inference_mode():
        net = lg[1].NetworkLoaderGK.execute(thin.SEGMENTATION_FILE, "auto", "auto", 0).result[0]
        square = torch.zeros(1, 64, 64)
        square[:, 16:48, 16:48] = 1
        loss = lg[1].SegmentationLossGK.execute(net, square, 1, 0, 1.0).result[0]
        wide = lg[1].SegmentationLossGK.execute(net, torch.zeros(1, 32, 64), 1, 0, 1.0).result[0]
    model = thin.build("sd15")
    with caplog.at_level(logging.WARNING):
        out = sample(thin, guide(lg, model, taesd, loss, "FreeDoM", "polyak", 1.0))   # image 128², mask 64²
    assert torch.isfinite(out).all()
    assert sum("resized to the image" in r.message for r in caplog.records) == 1
    with pytest.raises(ValueError, match="Segmentation Loss: input 'target_mask' is 64×32 but the image is 128×128"):
        sample(thin, guide(lg, model, taesd, wide, "FreeDoM", "polyak", 1.0))
    with pytest.raises(ValueError, match="exceed"):
        with torch.inference_mode():
            bad = lg[1].SegmentationLossGK.execute(net, square, 7, 0, 1.0).result[0]
        sample(thin, guide(lg, model, taesd, bad, "FreeDoM", "polyak", 1.0))


def test_networks_moved_under_inference_mode_keep_ordinary_weights(lg, thin):
    """ComfyUI runs nodes under inference mode; moving a loss network to the GPU there copies its weights as
    inference tensors (found by benchmarks/gpu.py on an H200). A dtype change copies the same way on the CPU."""
    net = torch.nn.Linear(4, 4)
    with torch.inference_mode():
        plain = torch.nn.Linear(4, 4).to(torch.float64)
        ours = lg[2].moved_outside_inference(net, torch.float64)
    assert next(plain.parameters()).is_inference(), "the check must be able to fail: a plain move makes them"
    assert not any(p.is_inference() for p in ours.parameters())
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    ours(x).sum().backward()
    assert x.grad is not None


def one_guided_step(thin, model, cfg: float, seed: int = 3) -> torch.Tensor:
    """One euler step of the thin SD1.5 from seeded noise (the guided step itself, not sampling's amplification)."""
    import comfy.sample
    noise = torch.randn(thin.latent_shape("sd15", 1), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        positive, negative = thin.conditioning("sd15", 1, seed=1), thin.conditioning("sd15", 1, seed=2)
        return comfy.sample.sample(model, noise, 1, cfg, "euler", "normal", positive, negative,
                                   torch.zeros_like(noise), seed=0, disable_pbar=True)


def recorded_calls(model) -> tuple[list, object]:
    """(rows, gradients on) of every diffusion-model call, recorded by a forward hook (remove the handle after)."""
    calls: list = []
    handle = model.model.diffusion_model.register_forward_hook(
        lambda module, args, out: calls.append((out.shape[0], torch.is_grad_enabled())))
    return calls, handle


def sketch_loss(lg):
    """A loss on every pixel (Sobel edges, no network): the fast gradient decodes at full size for it."""
    with torch.inference_mode():
        target = torch.zeros(1, 128, 128, 3)
        target[:, 32:96, 32:96] = 1
        return lg[1].SketchLossGK.execute(target, False, 1.0).result[0]


def test_fast_gradient_runs_the_conditional_row_with_gradients_and_the_others_without(thin, lg, taesd, clip_loss):
    model = thin.build("sd15")
    for gradient, expected in (("exact", [(2, True)]), ("fast", [(1, False), (1, True)])):
        guided = guide(lg, model, taesd, clip_loss[0], "FreeDoM", "polyak", 1.0, gradient=gradient)
        calls, handle = recorded_calls(guided)
        try:
            out = one_guided_step(thin, guided, cfg=3.0)
        finally:
            handle.remove()
        assert torch.isfinite(out).all()
        assert [c for c in calls if c[1] or gradient == "fast"] == expected, f"{gradient}: {calls}"
        assert patch_of(lg, guided).rows_split == (1 if gradient == "fast" else 0)
    assert not model.get_wrappers("calc_cond_batch", lg[0].WRAPPER_KEY)      # the input model is unchanged


def test_fast_gradient_batched_form_equals_the_split_form(thin, lg, taesd, clip_loss, monkeypatch):
    """Accelerators keep ComfyUI's batched call and detach the other rows: the same gradient w·J_c as the CPU's
    split calls, up to float rounding of batch-2 vs batch-1 kernels carried through a fixed-scale step (2.2e-4 of
    the guidance's effect measured; 2e-3 allowed). A smooth loss: Sobel edge magnitudes (the sketch loss) are
    ill-conditioned near flat regions and turn rounding into 1 % differences."""
    model, loss = thin.build("sd15"), clip_loss[0]
    split = one_guided_step(thin, guide(lg, model, taesd, loss, "FreeDoM", "fixed", 20.0, gradient="fast"), 3.0)
    monkeypatch.setattr(lg[0], "split_rows", lambda x: False)
    guided = guide(lg, model, taesd, loss, "FreeDoM", "fixed", 20.0, gradient="fast")
    calls, handle = recorded_calls(guided)
    try:
        batched = one_guided_step(thin, guided, 3.0)
    finally:
        handle.remove()
    effect = (split - one_guided_step(thin, model, 3.0)).abs().max().item()
    assert (2, True) in calls and patch_of(lg, guided).rows_split == 1, calls
    assert effect > 1e-3
    assert (batched - split).abs().max().item() <= 2e-3 * effect


def test_fast_gradient_at_cfg_1_is_the_exact_gradient(thin, lg, taesd):
    """At cfg 1 ComfyUI runs the conditional row only, so with a loss on every pixel (full-size decode) the fast
    step is the exact one: the same computation, up to the order of float operations."""
    model, loss = thin.build("sd15"), sketch_loss(lg)
    exact = one_guided_step(thin, guide(lg, model, taesd, loss, "FreeDoM", "fixed", 20.0), cfg=1.0)
    fast = guide(lg, model, taesd, loss, "FreeDoM", "fixed", 20.0, gradient="fast")
    out = one_guided_step(thin, fast, cfg=1.0)
    assert patch_of(lg, fast).rows_split == 0
    assert (exact - one_guided_step(thin, model, cfg=1.0)).abs().max() > 1e-3          # the guidance acts
    torch.testing.assert_close(out, exact, atol=1e-5, rtol=1e-5)


def test_fast_gradient_drops_only_the_unconditional_rows_share(thin, lg, taesd):
    """At cfg w the exact gradient is w·J_c − (w − 1)·J_u (J: each row's vector-Jacobian product) and the fast one
    w·J_c: with the fixed step their guidance changes differ by (w − 1)·J_u, relative to the change about w − 1
    where the rows' Jacobians are alike (0.020 and 0.200 measured); checked within 10× of that, growing with w."""
    model, loss = thin.build("sd15"), sketch_loss(lg)
    differences, weights = [], (1.02, 1.2)
    for cfg in weights:
        steps = {g: one_guided_step(thin, guide(lg, model, taesd, loss, "FreeDoM", "fixed", 20.0, gradient=g), cfg)
                 for g in ("exact", "fast")}
        plain = one_guided_step(thin, model, cfg)
        effect = (steps["exact"] - plain).norm().item()
        differences.append((steps["fast"] - steps["exact"]).norm().item() / effect)
        assert effect > 1e-3
    assert all(0.1 < d / (w - 1) < 10 for d, w in zip(differences, weights)), differences
    assert differences[1] > 2 * differences[0], differences


def test_fast_gradient_decodes_at_the_loss_networks_size(thin, lg, taesd, clip_loss, monkeypatch):
    decoded: list = []
    decode = taesd.first_stage_model.decode
    monkeypatch.setattr(taesd.first_stage_model, "decode", lambda z, *a, **k: decoded.append(z.shape) or decode(z))
    for gradient in ("exact", "fast"):
        one_guided_step(thin, guide(lg, thin.build("sd15"), taesd, clip_loss[0], gradient=gradient), cfg=2.0)
        decoded.append(gradient)
    clip_side = clip_loss[1].image_size[0]                       # 32: the tiny CLIP's input; images are 128²
    exact_shapes = decoded[:decoded.index("exact")]
    fast_shapes = decoded[decoded.index("exact") + 1:decoded.index("fast")]
    assert exact_shapes and all(tuple(s[-2:]) == (16, 16) for s in exact_shapes)
    assert fast_shapes and all(tuple(s[-2:]) == (clip_side // 8,) * 2 for s in fast_shapes)


@pytest.mark.parametrize("latent, sizes, expected", [
    ((64, 64), [(224, 224)], (28, 28)),             # SD1.5 512² and CLIP ViT-B/16
    ((64, 96), [(224, 224)], (28, 42)),             # the larger factor keeps both sides ≥ 224, same aspect
    ((128, 128), [(224, 224), (520, 520)], (65, 65)),   # the largest network decides
    ((16, 16), [(224, 224)], None),                 # already smaller: never upsampled
    ((64, 64), [(224, 224), None], None),           # a loss on every pixel keeps the full size
    ((64, 64), [], None),
])
def test_loss_latent_size(lg, latent, sizes, expected):
    assert lg[0].loss_latent_size(latent, 8, sizes) == expected


def test_each_loss_term_states_its_networks_input_size(lg, clip_loss, thin):
    with torch.inference_mode():
        net = lg[1].NetworkLoaderGK.execute("mnist-classifier-guidance.safetensors", "auto", "auto", 20).result[0]
        classifier = lg[1].ClassifierLossGK.execute(net, "3", 1.0).result[0]
    assert clip_loss[0][0].size == tuple(clip_loss[1].image_size)
    assert classifier[0].size == (20, 20)
    assert sketch_loss(lg)[0].size is None
