"""Tier 2: GuideKit NAG against the official rule, ComfyUI core's NAGuidance on Flux, and on every family."""
import pytest
import torch
from test_host_dit_families import REACHED

pytestmark = pytest.mark.host

FAMILIES = ["sd15", "sdxl", "flux", "chroma", "sd3", *REACHED]


@pytest.fixture(scope="module")
def node(comfy):
    from guidekit.nodes.nag import NormalizedAttentionGuidanceGK
    return NormalizedAttentionGuidanceGK


def official_nag(z_pos, z_neg, scale, tau, alpha):
    """ChenDarYen/ComfyUI-NAG utils.nag, written out independently (float64)."""
    z_pos, z_neg = z_pos.double(), z_neg.double()
    guidance = z_pos * scale - z_neg * (scale - 1)
    s = guidance.norm(p=1, dim=-1, keepdim=True).clamp_min(1e-6) / z_pos.norm(p=1, dim=-1, keepdim=True).clamp_min(1e-6)
    guidance = torch.where(s > tau, guidance * (tau / s), guidance)
    return guidance * alpha + z_pos * (1 - alpha)


def test_the_rule_is_the_official_one():
    from guidekit.guidance.nag import nag

    from guidance_helpers import rand
    z_pos, z_neg = rand(2, 64, 96, seed=0).double(), rand(2, 64, 96, seed=1).double()
    for scale, tau, alpha in ((5.0, 2.5, 0.25), (3.0, 1.2, 0.5), (1.0, 2.5, 0.5)):
        torch.testing.assert_close(nag(z_pos, z_neg, scale, tau, alpha), official_nag(z_pos, z_neg, scale, tau, alpha),
                                   rtol=1e-12, atol=1e-12)
    capped = nag(z_pos, z_neg, 5.0, 1.2, 1.0)
    assert (capped.norm(p=1, dim=-1) / z_pos.norm(p=1, dim=-1)).max() <= 1.2 + 1e-9


def test_unet_cross_attention_uses_the_negative_keys_of_that_layer(node, thin):
    """The attn2 patch on a real CrossAttention: the cond rows get NAG(Z⁺, softmax(q·to_k(neg)ᵀ)·to_v(neg)),
    the uncond rows are untouched."""
    from comfy.ldm.modules.attention import optimized_attention

    from guidekit.guidance.schedule import SigmaRange
    from guidekit.nodes.block_hooks import layer_modules
    from guidekit.nodes.layers import architecture
    from guidekit.nodes.nag import Settings, UNetCrossAttention

    from guidance_helpers import rand
    model = thin.build("sd15")
    arch = architecture(model, "t")
    attn2 = layer_modules(model.get_model_object("diffusion_model"), arch)[arch.layers[0]].attn2
    heads = attn2.heads
    x, pos, neg = rand(2, 16, attn2.to_q.in_features, seed=2), rand(2, 8, attn2.to_k.in_features, seed=3), \
        rand(1, 5, attn2.to_k.in_features, seed=4)
    with torch.no_grad():
        q, k, v = attn2.to_q(x), attn2.to_k(pos), attn2.to_v(pos)
        options = {"n_heads": heads, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0])}
        out = UNetCrossAttention(attn2, neg, Settings(4.0, 2.0, 0.5, SigmaRange()), None)(q, k, v, options)
        plain = optimized_attention(q, k, v, heads)
        z_neg = optimized_attention(q[1:], attn2.to_k(neg), attn2.to_v(neg), heads)
    torch.testing.assert_close(out[:1], plain[:1])
    torch.testing.assert_close(out[1:].double(), official_nag(plain[1:], z_neg, 4.0, 2.0, 0.5), rtol=1e-5, atol=1e-5)


def test_flux_equals_core_nag_when_the_negative_differs_only_in_text(node, thin):
    """ComfyUI core's NAGuidance (0.33): the same combination at the same point (attention output, image tokens,
    every block), with the negative as the unconditional pass. With the positive's pooled vector in the
    negative (core's negative rows modulate the image with their own), the two agree."""
    try:
        from comfy_extras.nodes_nag import NAGuidance
    except ImportError:
        pytest.skip("this ComfyUI has no core NAGuidance (comfy_extras/nodes_nag.py, ComfyUI 0.3.7x)")
    import comfy.sample
    model = thin.build("flux", std=0.1)
    positive = thin.conditioning("flux", seed=1)
    negative = [[thin.conditioning("flux", seed=2)[0][0], dict(positive[0][1])]]
    latent = torch.zeros(thin.latent_shape("flux"))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))

    def sample(m, neg):
        return comfy.sample.sample(m, noise, 3, 1.0, "euler", "normal", positive, neg, latent, seed=0,
                                   disable_pbar=True)
    core = sample(NAGuidance.execute(model, 5.0, 0.5, 1.5).result[0], negative)
    ours = sample(node.run(model=model, negative=negative, scale=5.0, alpha=0.5, tau=1.5)[0], negative)
    plain = sample(model, negative)
    effect = (core - plain).abs().max().item()
    assert effect > 1e-3
    assert (ours - core).abs().max().item() <= 1e-3 * effect


@pytest.mark.parametrize("arch", FAMILIES)
def test_nag_guides_every_family_and_an_equal_negative_changes_nothing(node, thin, arch):
    if arch not in thin.SPECS:
        pytest.skip(f"no thin spec {arch}")
    if thin.missing(arch):
        pytest.skip(f"this ComfyUI has no {thin.missing(arch)}")
    model = thin.build(arch, std=0.1)
    before = dict(model.model_options)
    plain = thin.sample(model, arch, cfg=1.0, steps=3)
    guided = thin.sample(node.run(model=model, negative=thin.conditioning(arch, seed=5))[0], arch, cfg=1.0, steps=3)
    same = thin.sample(node.run(model=model, negative=thin.conditioning(arch, seed=1))[0], arch, cfg=1.0, steps=3)
    assert torch.isfinite(guided).all() and (guided - plain).abs().max() > 1e-3, f"NAG changed nothing on {arch}"
    # Z⁻ = Z⁺ makes Z̃ = s·Z⁺ − (s − 1)·Z⁺ = Z⁺ up to rounding, amplified by s = 5 and the steps
    assert (same - plain).abs().max() <= 1e-3 * max(1.0, plain.abs().max().item())
    assert model.model_options == before


def test_rows_per_step(node, thin):
    """Extra-row route (Flux): one row for the negative per active step at cfg 1, none outside the range;
    keys in the layer (UNets, Wan): none."""
    from test_host_frontend_routes import StepRows
    for arch, extra in (("flux", 1), ("sd15", 0), ("wan21_t2v", 0)):
        model = thin.build(arch)
        neg = thin.conditioning(arch, seed=5)
        for kw, expected in (({}, extra), ({"start_percent": 0.99}, 0)):
            patched = node.run(model=model, negative=neg, **kw)[0]
            counter = StepRows(model)
            thin.sample(patched, arch, cfg=1.0, steps=4)
            rows = counter.per_step()
            assert rows[:3] == [1 + expected] * 3, (arch, kw, rows)


def test_two_nag_nodes_stack(node, thin):
    """Two NAG nodes on one model: each guides with its own negative (extra rows: one row each, none guided by
    the other node; keys in the layer: none), and the second negative changes the sample."""
    from test_host_frontend_routes import StepRows
    for arch, extra in (("flux", 2), ("wan21_t2v", 0)):
        model = thin.build(arch, std=0.1)
        once = node.run(model=model, negative=thin.conditioning(arch, seed=5))[0]
        twice = node.run(model=once, negative=thin.conditioning(arch, seed=6))[0]
        counter = StepRows(model)
        stacked = thin.sample(twice, arch, cfg=1.0, steps=3)
        assert counter.per_step() == [1 + extra] * 3
        single = thin.sample(once, arch, cfg=1.0, steps=3)
        assert torch.isfinite(stacked).all() and (stacked - single).abs().max() > 1e-3


def test_prompts_of_far_apart_lengths_and_bad_inputs(node, thin):
    """A negative 41 tokens long beside an 8-token positive: ComfyUI never batches the two (their common
    length is over 4× either), NAG's own call pads them and guides; bad inputs are clear errors."""
    model = thin.build("flux", std=0.1)
    far = [[torch.randn(1, 41, thin.SPECS["flux"].context_dim), dict(thin.conditioning("flux")[0][1])]]
    plain = thin.sample(model, "flux", cfg=1.0, steps=2)
    guided = thin.sample(node.run(model=model, negative=far)[0], "flux", cfg=1.0, steps=2)
    assert torch.isfinite(guided).all() and (guided - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="GuideKit NAG: input 'negative' is empty"):
        node.run(model=model, negative=[])
    with pytest.raises(ValueError, match="input 'layers'"):
        node.run(model=model, negative=thin.conditioning("flux"), layers="double.99")


# ---------------------------------------------------------------------------------------------------------------
# NAG does not depend on ComfyUI batching the positive with anything: each cond in its own model call

GIB = 1 << 30


@pytest.fixture
def one_cond_per_call(comfy, monkeypatch):
    """ComfyUI's batch planner told that one row needs 1 GiB and 2 GiB are free: it runs every cond in a model
    call of its own (samplers._calc_cond_batch: memory_required(rows) · 1.5 < free memory). Restored after."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher

    def free(dev=None, torch_free_too=False):
        return (2 * GIB, 2 * GIB) if torch_free_too else 2 * GIB
    monkeypatch.setattr(comfy.model_base.BaseModel, "memory_required",
                        lambda self, input_shape, *args, **kwargs: input_shape[0] * GIB)
    monkeypatch.setattr(comfy.model_management, "get_free_memory", free)
    if hasattr(comfy.model_patcher.ModelPatcher, "get_free_memory"):
        monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "get_free_memory", lambda self, *a, **k: 2 * GIB)


class CallRows:
    """The batch size of every diffusion-model call."""

    def __init__(self, patcher):
        self.sizes: list[int] = []
        self.handle = patcher.model.diffusion_model.register_forward_pre_hook(
            lambda module, args: self.sizes.append(args[0].shape[0]))

    def stop(self) -> list[int]:
        self.handle.remove()
        return self.sizes


def rounding_bound(thin, model, arch: str, steps: int, sample: torch.Tensor, scale: float = 5.0) -> float:
    """How far two float32 evaluations of the same sample may differ when only their batch shapes (the order of
    their sums) differ: a dot product of n terms rounds by ≤ n·u of its size (u = 2⁻²⁴, n = the widest reduction:
    a linear layer's inputs or the attention's tokens), NAG's s·Z⁺ − (s − 1)·Z⁻ amplifies a rounding in Z by
    ≤ 2s − 1, and the steps add up."""
    from guidekit.nodes.attention_hooks import image_grid
    from guidekit.nodes.layers import architecture
    dm = model.model.diffusion_model
    tokens = torch.tensor(image_grid(architecture(model, "test"), thin.latent_shape(arch))).prod().item() + 8
    n = max([tokens] + [m.in_features for m in dm.modules() if isinstance(m, torch.nn.Linear)])
    return steps * (2 * scale - 1) * n * 2.0 ** -24 * max(1.0, sample.abs().max().item())


@pytest.mark.parametrize("cfg", [1.0, 4.0])
@pytest.mark.parametrize("arch", ["flux", "qwen_image"])
def test_each_cond_in_its_own_call_equals_the_batched_result(node, thin, arch, cfg, request):
    """Extra-row route: with ComfyUI running every cond alone, NAG's negative rows still share the positive's
    call; the sample equals the batched one up to rounding and the rows per step are the same."""
    from test_host_frontend_routes import StepRows
    model = thin.build(arch, std=0.1)
    patched = node.run(model=model, negative=thin.conditioning(arch, seed=5))[0]
    plain = thin.sample(model, arch, cfg=cfg, steps=3)
    counter = StepRows(model)
    batched = thin.sample(patched, arch, cfg=cfg, steps=3)
    batched_rows = counter.per_step()
    request.getfixturevalue("one_cond_per_call")
    calls = CallRows(model)
    counter = StepRows(model)
    split = thin.sample(patched, arch, cfg=cfg, steps=3)
    split_rows, sizes = counter.per_step(), calls.stop()
    assert set(sizes) == ({2} if cfg == 1.0 else {1, 2}), f"ComfyUI batched the conds ({sizes}): no split"
    assert split_rows == batched_rows == [2 if cfg == 1.0 else 3] * 3
    effect = (batched - plain).abs().max().item()
    diff = (split - batched).abs().max().item()
    print(f"{arch} cfg {cfg}: effect {effect:.3e} split-batched {diff:.3e}")
    tol = rounding_bound(thin, model, arch, 3, batched)
    assert effect > 10 * tol                             # the bound tells a wrong route from rounding
    assert diff <= tol


# ---------------------------------------------------------------------------------------------------------------
# Keys in the layer (families whose text enters only through cross-attention) against the extra-row route


def rows_route(model, negative: list, scale=5.0, tau=2.5, alpha=0.25):
    """A clone of `model` with NAG forced onto the extra-row route (its family row without `text_cross`)."""
    import dataclasses

    from guidekit.guidance.schedule import SigmaRange
    from guidekit.nodes.layers import architecture
    from guidekit.nodes.nag import NAGStep, Settings
    arch = dataclasses.replace(architecture(model, "test"), text_cross=None)
    step = NAGStep(arch, arch.layers, negative, Settings(scale, tau, alpha, SigmaRange()), None)
    m = model.clone()
    m.set_model_sampler_calc_cond_batch_function(lambda args: step(args))
    return m


@pytest.mark.parametrize("cfg", [1.0, 4.0])
@pytest.mark.parametrize("arch", ["wan21_t2v", "wan21_i2v"])
def test_keys_in_the_layer_equal_the_extra_rows_on_wan(node, thin, arch, cfg, request):
    """Wan: Z⁻ from the negative's keys in each cross-attention equals the extra-row route's Z⁻ (every block
    chosen: the negative's rows then carry the positive's image stream), with no extra row; also with every
    cond in its own call."""
    from test_host_frontend_routes import StepRows
    if thin.missing(arch):
        pytest.skip(f"this ComfyUI has no {thin.missing(arch)}")
    model = thin.build(arch, std=0.1)
    negative = thin.conditioning(arch, seed=5)
    plain = thin.sample(model, arch, cfg=cfg, steps=3)
    counter = StepRows(model)
    rows = thin.sample(rows_route(model, negative), arch, cfg=cfg, steps=3)
    rows_per_step = counter.per_step()
    counter = StepRows(model)
    keys = thin.sample(node.run(model=model, negative=negative)[0], arch, cfg=cfg, steps=3)
    keys_per_step = counter.per_step()
    request.getfixturevalue("one_cond_per_call")
    split = thin.sample(node.run(model=model, negative=negative)[0], arch, cfg=cfg, steps=3)
    unguided_rows = 1 if cfg == 1.0 else 2
    assert keys_per_step == [unguided_rows] * 3 and rows_per_step == [unguided_rows + 1] * 3
    effect = (keys - plain).abs().max().item()
    print(f"{arch} cfg {cfg}: effect {effect:.3e} keys-rows {(keys - rows).abs().max().item():.3e} "
          f"split-keys {(split - keys).abs().max().item():.3e} size {keys.abs().max().item():.3e}")
    tol = rounding_bound(thin, model, arch, 3, keys)      # the routes order the same sums differently
    assert effect > 10 * tol                             # the bound tells a wrong route from rounding
    assert (keys - rows).abs().max().item() <= tol
    assert (split - keys).abs().max().item() <= tol


# ---------------------------------------------------------------------------------------------------------------
# Extra-row route: the tokens a negative row shares with its positive row are computed once per Linear layer


class LinearTokens:
    """Tokens every Linear layer of a diffusion model computes (its input after any pre-hook packed it)."""

    def __init__(self, patcher):
        self.count = 0
        self.handles = [m.register_forward_hook(self.add) for m in patcher.model.diffusion_model.modules()
                        if isinstance(m, torch.nn.Linear)]

    def add(self, module, args, out) -> None:
        self.count += args[0].shape[:-1].numel()

    def stop(self) -> int:
        for handle in self.handles:
            handle.remove()
        return self.count


class AttentionQueries:
    """Query elements of every attention call of a clone of `patcher` (an attention override under the others)."""

    def __init__(self, patcher):
        self.count = 0
        self.model = patcher.clone()
        to = self.model.model_options.setdefault("transformer_options", {})
        to["optimized_attention_override"] = self

    def __call__(self, func, *args, **kwargs):
        self.count += args[0].numel()
        return func(*args, **kwargs)

    def __deepcopy__(self, memo):
        return self                    # ModelPatcher.clone deep-copies model_options: count in this one


@pytest.mark.parametrize("arch, layers", [("flux", "all"), ("flux", "double.0"), ("qwen_image", "all"),
                                          ("sd3", "all"), ("chroma", "all"), ("lumina2", "all"),
                                          ("hunyuan_video", "all"), ("ltxv", "all"), ("wan21_t2v", "rows")])
def test_shared_tokens_are_computed_once_and_change_nothing(node, thin, arch, layers, monkeypatch):
    """With every block chosen the negative's rows carry the positive's image tokens throughout, and the Linear
    layers compute them once: the sample equals the unshared computation's up to rounding while the layers see
    at most 60 % of the tokens (2 rows → 1 row + the negative's text). Image-only self-attention (Wan on the
    extra-row route) is attended once. With one block chosen the image streams part after it: fewer tokens are
    shared, and the sample is still the unshared one's."""
    import contextlib

    from guidekit.nodes import nag_rows, nag_shared
    if thin.missing(arch):
        pytest.skip(f"this ComfyUI has no {thin.missing(arch)}")
    model = thin.build(arch, std=0.1)
    negative = thin.conditioning(arch, seed=5)

    def run() -> tuple[torch.Tensor, int, int]:
        queries = AttentionQueries(model)
        patched = rows_route(queries.model, negative) if layers == "rows" else \
            node.run(model=queries.model, negative=negative, layers=layers)[0]
        counter = LinearTokens(model)
        out = thin.sample(patched, arch, cfg=1.0, steps=3)
        return out, counter.stop(), queries.count
    shared, shared_tokens, shared_queries = run()
    with monkeypatch.context() as m:
        m.setattr(nag_shared.SharedTokens, "installed", lambda self, module: contextlib.nullcontext())
        m.setattr(nag_rows.DiTAttention, "shared", lambda self, *args: None)
        m.setattr(nag_rows, "split_joint_attention", lambda *args: None)
        unshared, unshared_tokens, unshared_queries = run()
    plain = thin.sample(model, arch, cfg=1.0, steps=3)
    tol = rounding_bound(thin, model, arch, 3, unshared)      # packed rows: the same sums in other kernels
    print(f"{arch} {layers}: tokens {shared_tokens}/{unshared_tokens}, queries {shared_queries}/{unshared_queries}, "
          f"diff {(shared - unshared).abs().max().item():.2e}, tol {tol:.2e}")
    assert (unshared - plain).abs().max().item() > 10 * tol
    assert (shared - unshared).abs().max().item() <= tol
    if layers == "double.0":
        assert 0.6 * unshared_tokens < shared_tokens < unshared_tokens
    else:
        assert shared_tokens <= 0.6 * unshared_tokens
    if arch == "wan21_t2v":            # self-attention once: 3 of the 4 (2 rows × self, cross) query sets
        assert shared_queries <= 0.8 * unshared_queries


class AttentionWork:
    """Query × key products of every attention call NAG's override makes: the host's attention it calls and the
    split attention's partial parts."""

    def __init__(self, monkeypatch):
        from guidekit.nodes import nag_rows, nag_shared
        self.work = 0
        partial, override = nag_shared.partial_attention.attention, nag_rows.DiTAttention.__call__

        def counted(q, k, v):
            self.work += q.shape[:-1].numel() * k.shape[-2]
            return partial(q, k, v)

        def counted_override(attention, func, *args, **kwargs):
            return override(attention, self.host(func), *args, **kwargs)
        monkeypatch.setattr(nag_shared.partial_attention, "attention", counted)
        monkeypatch.setattr(nag_rows.DiTAttention, "__call__", counted_override)

    def host(self, func):
        def counted(q, k, v, heads, *args, **kwargs):
            seq = 2 if kwargs.get("skip_reshape", False) else 1
            self.work += q.shape[:seq + 1].numel() * k.shape[seq] * (1 if seq == 2 else heads)
            return func(q, k, v, heads, *args, **kwargs)
        return counted


@pytest.mark.parametrize("arch, at_most", [("flux", 0.6), ("qwen_image", 0.6), ("sd3", 0.6), ("hunyuan_video", 0.6),
                                           ("lumina2", 0.7)])   # + image-only refiner layers, attended once in both
def test_joint_attention_attends_the_shared_image_keys_once(node, thin, arch, at_most, monkeypatch):
    """Every block chosen: the negative's image queries and keys are the positive's, only its text keys differ.
    The image queries attend over the image keys once and over each row's text apart, merged exactly: the sample
    equals the one that attends over both rows in full up to rounding, for ≤ 60 % of the query × key work (a
    32×32 latent: 2 rows of 256 image + 8 text tokens → 256² + 2·256·8 + 2·8·264 of 2·264² products, 53 %)."""
    from guidekit.nodes import nag_rows
    if thin.missing(arch):
        pytest.skip(f"this ComfyUI has no {thin.missing(arch)}")
    model = thin.build(arch, std=0.1)
    patched = node.run(model=model, negative=thin.conditioning(arch, seed=5))[0]

    def run() -> tuple[torch.Tensor, int]:
        with monkeypatch.context() as m:
            counter = AttentionWork(m)
            return thin.sample(patched, arch, cfg=1.0, steps=3, height=32, width=32), counter.work
    split, split_work = run()
    with monkeypatch.context() as m:
        m.setattr(nag_rows, "split_joint_attention", lambda *args: None)
        full, full_work = run()
    plain = thin.sample(model, arch, cfg=1.0, steps=3, height=32, width=32)
    tol = rounding_bound(thin, model, arch, 3, full)
    print(f"{arch}: attention work {split_work}/{full_work}, diff {(split - full).abs().max().item():.2e}, "
          f"tol {tol:.2e}")
    assert (full - plain).abs().max().item() > 10 * tol
    assert (split - full).abs().max().item() <= tol
    assert split_work <= at_most * full_work


def test_the_step_range_is_read_once_per_step(comfy):
    """The UNet patch asks at each cross-attention layer whether the step is in range; reading a GPU tensor waits
    for the device, so the answer is read once per step's σ tensor and reused by the other layers."""
    from guidekit.guidance.schedule import SigmaRange
    from guidekit.nodes.nag_settings import Settings

    class Counting(SigmaRange):
        reads = 0

        def active(self, sigma):
            Counting.reads += 1
            return super().active(sigma)
    settings = Settings(5.0, 2.5, 0.25, Counting(sigma_low=0.5, sigma_high=2.0))
    step1, step2 = torch.tensor([1.0]), torch.tensor([3.0])
    assert [settings.active_at(step1) for _ in range(70)] == [True] * 70
    assert [settings.active_at(step2) for _ in range(70)] == [False] * 70
    assert Counting.reads == 2
