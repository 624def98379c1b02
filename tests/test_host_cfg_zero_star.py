"""Tier 2: GuideKit CFG-Zero* against the paper's rule on velocities, zero-init, and ComfyUI core's node."""
import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def node(comfy):
    from guidekit.nodes.cfg_zero_star import CFGZeroStarGK
    return CFGZeroStarGK


def official(v_cond, v_uncond, w):
    """The paper's code on velocities, written out independently: uncond·s* + w·(cond − uncond·s*)."""
    b = v_cond.shape[0]
    c, u = v_cond.reshape(b, -1).double(), v_uncond.reshape(b, -1).double()
    s = ((c * u).sum(1, keepdim=True) / ((u ** 2).sum(1, keepdim=True) + 1e-8)).reshape(b, *[1] * (v_cond.ndim - 1))
    return (v_uncond.double() * s + w * (v_cond.double() - v_uncond.double() * s)).to(v_cond.dtype), s


def post_cfg_args(x, cond, uncond, w, sigma=0.5, schedule=(1.0, 0.5, 0.0)):
    cfg_result = uncond + w * (cond - uncond)
    return {"denoised": cfg_result, "cond": [object()], "uncond": [object()], "cond_denoised": cond,
            "uncond_denoised": uncond, "cond_scale": w, "input": x, "sigma": torch.tensor([sigma]),
            "model_options": {"transformer_options": {"sample_sigmas": torch.tensor(schedule)}}}


def test_the_rule_is_the_papers_on_velocities(node):
    """D_out = x − v_out with v = x − D (flow: v = (x − D)/σ, the factor cancels): on identical tensors."""
    from guidekit.nodes.cfg_zero_star import cfg_zero_star_function

    from guidance_helpers import rand
    x, d_c, d_u = rand(3, 4, 8, 8, seed=0), rand(3, 4, 8, 8, seed=1), rand(3, 4, 8, 8, seed=2)
    for w in (1.0, 4.5):
        out = cfg_zero_star_function(0)(post_cfg_args(x, d_c, d_u, w))
        v_out, s = official(x - d_c, x - d_u, w)
        torch.testing.assert_close(out, x - v_out, rtol=1e-5, atol=1e-5)
        assert (s - 1).abs().max() > 0.05, "the optimized scale must differ from 1 for the check to mean anything"


def test_core_cfgzerostar_scales_the_denoised_prediction_instead(node):
    """ComfyUI core's CFGZeroStar equals the paper's rule minus x·(1 − s*)·(1 − w): it scales D_u, not v_u."""
    from comfy_extras.nodes_cfg import CFGZeroStar

    from guidekit.nodes.cfg_zero_star import cfg_zero_star_function

    import thin_models
    from guidance_helpers import rand
    x, d_c, d_u, w = rand(2, 4, 8, 8, seed=3), rand(2, 4, 8, 8, seed=4), rand(2, 4, 8, 8, seed=5), 5.0
    patched = CFGZeroStar.execute(thin_models.build("sd15")).result[0]
    core_fn = patched.model_options["sampler_post_cfg_function"][-1]
    args = post_cfg_args(x, d_c, d_u, w)
    ours, core = cfg_zero_star_function(0)(args), core_fn(args)
    _, s = official(x - d_c, x - d_u, w)
    torch.testing.assert_close(core.double(), ours.double() - x.double() * (1 - s) * (1 - w), rtol=1e-4, atol=1e-4)
    assert (ours - core).abs().max() > 1e-2


def test_zero_init_steps_leave_the_sample_in_place(node, thin):
    """Rectified flow (thin Flux), zero_init_steps = 2: euler's first two steps leave x where it is; the third
    moves it."""
    import comfy.sample
    starts = []                                              # x at the start of each step
    latent = torch.zeros(thin.latent_shape("flux"))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    patched = node.run(model=thin.build("flux"), zero_init_steps=2)[0]
    comfy.sample.sample(patched, noise, 4, 4.0, "euler", "normal", thin.conditioning("flux", seed=1),
                        thin.conditioning("flux", seed=2), latent, seed=0, disable_pbar=True,
                        callback=lambda step, x0, x, total: starts.append(x.clone()))
    assert len(starts) == 4
    assert torch.equal(starts[0], starts[1]) and torch.equal(starts[1], starts[2]), "a zero-init step moved x"
    assert (starts[3] - starts[2]).abs().max() > 1e-3, "the first step after zero-init must move the sample"


def test_zero_init_is_for_rectified_flow_only(node, thin, caplog):
    """On a σ-schedule model (SD1.5, ε) a step that keeps x leaves too much noise: the node says so and runs
    the optimized scale alone, the same as zero_init_steps = 0."""
    import logging
    model = thin.build("sd15")
    with caplog.at_level(logging.WARNING):
        skipped = thin.sample(node.run(model=model, zero_init_steps=3)[0], "sd15")
    assert any("zero-init applies to rectified-flow models" in r.message for r in caplog.records)
    torch.testing.assert_close(skipped, thin.sample(node.run(model=model, zero_init_steps=0)[0], "sd15"))


def test_sampling_matches_the_reference_rule_at_every_step(node, thin):
    """The node's sampled latent = the same sampler with the paper's rule as ComfyUI's CFG function."""
    model = thin.build("sd15", std=0.05)

    def reference(args):                  # ComfyUI's CFG function returns x − D (here: the guided velocity)
        x = args["input"]
        v_out, _ = official(x - args["cond_denoised"], x - args["uncond_denoised"], args["cond_scale"])
        return v_out
    by_hand = model.clone()
    by_hand.set_model_sampler_cfg_function(reference)
    ours = thin.sample(node.run(model=model, zero_init_steps=0)[0], "sd15", cfg=4.0)
    expected = thin.sample(by_hand, "sd15", cfg=4.0)
    plain = thin.sample(model, "sd15", cfg=4.0)
    effect = (expected - plain).abs().max().item()
    assert effect > 1e-3
    assert (ours - expected).abs().max().item() <= 1e-2 * effect


def test_cfg_one_and_no_schedule_are_safe(node):
    from guidekit.nodes.cfg_zero_star import cfg_zero_star_function

    from guidance_helpers import rand
    x, d = rand(1, 4, 8, 8, seed=6), rand(1, 4, 8, 8, seed=7)
    args = post_cfg_args(x, d, torch.zeros_like(d), 1.0)
    args["uncond"] = None                                   # cfg 1: ComfyUI skipped the unconditional pass
    assert torch.equal(cfg_zero_star_function(1)(dict(args, sigma=torch.tensor([0.5]))), args["denoised"])
    args["model_options"] = {}                              # a guider without a schedule: no zero-init
    assert torch.equal(cfg_zero_star_function(5)(args), args["denoised"])
