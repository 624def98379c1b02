"""Tier 2: ICG and TSG on thin models: the unconditional pass replaced by the method's negative.

Each check rebuilds the negative independently (the random condition from the same step generator, or the
time-embedding noise through a hook of the test's own) and compares with plain CFG against it, one euler
step to σ = 0 so the output is the guided D itself.
"""
import pytest
import torch

pytestmark = pytest.mark.host

ONE = dict(steps=1)


@pytest.fixture(scope="module")
def mods(comfy):
    from guidekit.guidance import icg as icg_math
    from guidekit.nodes import icg, registrar, tsg
    return icg, tsg, icg_math, registrar


def first_sigma(model):
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 1)[0]


def cfg_against(thin, model, arch, negative, cfg, batch=1):
    """Plain CFG (ComfyUI's KSampler path) with an explicit negative conditioning."""
    import comfy.sample
    latent = torch.zeros(thin.latent_shape(arch, batch))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(model, noise, 1, cfg, "euler", "normal", thin.conditioning(arch, batch, seed=1),
                               negative, latent, seed=0, disable_pbar=True)


def icg(mods, model, mode="gaussian", seed=0, start=0.0, end=1.0, pool=None):
    return mods[0].IndependentConditionGuidanceGK.execute(model, mode, seed, start, end, pool=pool).result[0]


def assert_close(a, b, what, tol=1e-5):
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"{what}: max |Δ| = {err:.3e}"


@pytest.mark.parametrize("arch", ["sd15", "flux"])
def test_icg_gaussian_is_cfg_against_matched_noise(thin, mods, arch):
    """ŷ = per-row mean + std·n for the tokens, then (Flux) for the pooled vector, from the step's generator."""
    model = thin.build(arch, std=0.05)
    gen = mods[3].step_generator(7, first_sigma(model))
    positive = thin.conditioning(arch, seed=1)
    tokens = mods[2].gaussian_condition(positive[0][0], gen)
    extra = dict(positive[0][1])
    if "pooled_output" in extra:
        extra["pooled_output"] = mods[2].gaussian_condition(extra["pooled_output"], gen)
    out = thin.sample(icg(mods, model, seed=7), arch, cfg=3.0, **ONE)
    assert_close(out, cfg_against(thin, model, arch, [[tokens, extra]], 3.0), "ICG gaussian")
    assert (out - thin.sample(model, arch, cfg=3.0, **ONE)).abs().max() > 1e-3


def test_icg_on_sdxl_noises_tokens_and_the_adm_vector(thin, mods):
    model = thin.build("sdxl", std=0.05)
    out = thin.sample(icg(mods, model), "sdxl", cfg=3.0, batch=2, **ONE)
    assert torch.isfinite(out).all() and (out - thin.sample(model, "sdxl", cfg=3.0, batch=2, **ONE)).abs().max() > 1e-3


def test_icg_pool_and_other_row_are_cfg_against_that_condition(thin, mods):
    model = thin.build("sd15", std=0.05)
    pool = thin.conditioning("sd15", seed=9)
    assert_close(thin.sample(icg(mods, model, "pool", pool=pool), "sd15", cfg=3.0, **ONE),
                 cfg_against(thin, model, "sd15", pool, 3.0), "ICG pool of one")
    positive = thin.conditioning("sd15", batch=2, seed=1)
    swapped = [[positive[0][0].flip(0), {}]]
    assert_close(thin.sample(icg(mods, model, "other batch row"), "sd15", cfg=3.0, batch=2, **ONE),
                 cfg_against(thin, model, "sd15", swapped, 3.0, batch=2), "ICG other row, batch 2")


def test_icg_shuffled_tokens(thin, mods):
    model = thin.build("sd15", std=0.05)
    gen = mods[3].step_generator(3, first_sigma(model))
    shuffled = mods[2].shuffled_tokens(thin.conditioning("sd15", seed=1)[0][0], gen)
    assert_close(thin.sample(icg(mods, model, "shuffled tokens", seed=3), "sd15", cfg=3.0, **ONE),
                 cfg_against(thin, model, "sd15", [[shuffled, {}]], 3.0), "ICG shuffled")


def test_icg_outside_its_range_and_at_cfg_one_is_plain_sampling(thin, mods):
    model = thin.build("sd15", std=0.05)
    late = icg(mods, model, start=0.9, end=1.0)
    assert torch.equal(thin.sample(late, "sd15", cfg=3.0, **ONE), thin.sample(model, "sd15", cfg=3.0, **ONE))
    assert torch.equal(thin.sample(icg(mods, model), "sd15", cfg=1.0), thin.sample(model, "sd15", cfg=1.0))


def test_icg_errors_name_the_input(thin, mods):
    model = thin.build("sd15")
    with pytest.raises(ValueError, match="input 'pool' is not connected"):
        icg(mods, model, "pool")
    with pytest.raises(ValueError, match="'other batch row'"):
        thin.sample(icg(mods, model, "other batch row"), "sd15", cfg=3.0, **ONE)
    from guidekit.nodes.pag import PerturbedAttentionGuidanceGK
    taken = PerturbedAttentionGuidanceGK.execute(model, 3.0, "default", 0.0, 1.0, 0.0, 0.0, "replace uncond",
                                                 "auto").result[0]
    with pytest.raises(ValueError, match="already replaces the unconditional pass"):
        icg(mods, taken)


class TimeNoiseHook:
    """The test's own TSG negative: a forward hook adding s·t^α·n to the time embedding."""

    def __init__(self, module, scale, alpha, gen, t_unit):
        self.args = (scale, alpha, gen, t_unit)
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, inputs, out):
        scale, alpha, gen, t_unit = self.args
        return out + scale * t_unit ** alpha * torch.randn(out.shape, generator=gen)


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "sd3", "flux", "omnigen2", "ltxv", "joyimage", "boogu"])
def test_tsg_is_cfg_against_the_noised_time_embedding(thin, mods, arch):
    """Also where t_emb is a nested module's output (OmniGen2 / Boogu time_caption_embed.timestep_embedder,
    LTX-Video adaln_single.emb.timestep_embedder, JoyImage condition_embedder.time_embedder)."""
    if thin.missing(arch):
        pytest.skip(f"this ComfyUI has no {thin.missing(arch)}")
    model = thin.build(arch, std=0.05)
    scale, alpha, seed, w = 0.7, 1.5, 4, 3.0
    tsg = mods[1].TimestepGuidanceGK.execute(model, scale, alpha, seed, 0.0, 1.0).result[0]
    out = thin.sample(tsg, arch, cfg=w, **ONE)
    d_cond = thin.sample(model, arch, cfg=1.0, **ONE)
    ms = model.get_model_object("model_sampling")
    sigma = first_sigma(model)
    t_unit = float(ms.timestep(sigma)) / float(ms.timestep(ms.sigma_max))
    embedder = model.get_model_object("diffusion_model").get_submodule(mods[1].time_embedder(model))
    hook = TimeNoiseHook(embedder, scale, alpha, mods[3].step_generator(seed, sigma), t_unit)
    try:
        d_neg = thin.sample(model, arch, cfg=1.0, **ONE)
    finally:
        hook.handle.remove()
    assert (d_cond - d_neg).abs().max() > 1e-3
    assert_close(out, d_neg + w * (d_cond - d_neg), "TSG", tol=1e-4)


def test_tsg_shares_one_noise_vector_over_per_token_time_embeddings(thin, mods):
    """LTX-Video under a denoise mask embeds one timestep per token (b·n rows): TSG noises them with one vector per
    sample, so an all-ones mask (every token at the sample's t) gives the unmasked result."""
    import comfy.sample
    model = thin.build("ltxv", std=0.05)
    tsg = mods[1].TimestepGuidanceGK.execute(model, 0.7, 1.5, 4, 0.0, 1.0).result[0]
    latent = torch.zeros(thin.latent_shape("ltxv"))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    pos, neg = thin.conditioning("ltxv", seed=1), thin.conditioning("ltxv", seed=2)

    def run(mask):
        return comfy.sample.sample(tsg, noise, 1, 3.0, "euler", "normal", pos, neg, latent, noise_mask=mask,
                                   seed=0, disable_pbar=True)
    assert_close(run(torch.ones(latent.shape[:1] + latent.shape[2:])), run(None), "TSG, all-ones mask", tol=1e-5)


def test_tsg_refuses_an_ltx_model_that_embeds_time_twice(thin, mods):
    model = thin.build("ltxv")
    model.get_model_object("diffusion_model").prompt_adaln_single = torch.nn.Identity()   # cross-attention adaLN
    with pytest.raises(ValueError, match="LTXVModel, whose time embedding .*embeds time twice"):
        mods[1].TimestepGuidanceGK.execute(model, 1.0, 1.0, 0, 0.0, 1.0)


def test_tsg_without_noise_is_the_conditional_model(thin, mods):
    model = thin.build("sd15", std=0.05)
    tsg = mods[1].TimestepGuidanceGK.execute(model, 0.0, 1.0, 0, 0.0, 1.0).result[0]
    assert_close(thin.sample(tsg, "sd15", cfg=5.0, batch=2), thin.sample(model, "sd15", cfg=1.0, batch=2),
                 "TSG s = 0", tol=1e-4)


def test_tsg_refuses_a_model_whose_time_embedding_it_cannot_reach(thin, mods):
    with pytest.raises(ValueError, match="GuideKit TSG: input 'model' is a Chroma"):
        mods[1].TimestepGuidanceGK.execute(thin.build("chroma"), 1.0, 1.0, 0, 0.0, 1.0)
