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
    """DiTs: one row for the negative per active step at cfg 1; none outside the range; UNets: none."""
    from test_host_frontend_routes import StepRows
    for arch, extra in (("flux", 1), ("sd15", 0)):
        model = thin.build(arch)
        neg = thin.conditioning(arch, seed=5)
        for kw, expected in (({}, extra), ({"start_percent": 0.99}, 0)):
            patched = node.run(model=model, negative=neg, **kw)[0]
            counter = StepRows(model)
            thin.sample(patched, arch, cfg=1.0, steps=4)
            rows = counter.per_step()
            assert rows[:3] == [1 + expected] * 3, (arch, kw, rows)


def test_split_prompts_and_bad_inputs_are_clear_errors(node, thin):
    model = thin.build("flux")
    far = [[torch.randn(1, 41, thin.SPECS["flux"].context_dim), dict(thin.conditioning("flux")[0][1])]]
    with pytest.raises(ValueError, match="GuideKit NAG: ComfyUI ran the positive prompt and NAG's negative in "
                                         "separate model calls"):
        thin.sample(node.run(model=model, negative=far)[0], "flux", cfg=1.0, steps=2)
    with pytest.raises(ValueError, match="GuideKit NAG: input 'negative' is empty"):
        node.run(model=model, negative=[])
    with pytest.raises(ValueError, match="input 'layers'"):
        node.run(model=model, negative=thin.conditioning("flux"), layers="double.99")
