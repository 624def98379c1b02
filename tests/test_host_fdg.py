"""Tier 2: GuideKit FDG against kornia's Laplacian pyramid with the paper's per-band rule, and on the thin models."""
import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def node(comfy):
    from guidekit.nodes.fdg import FrequencyDecoupledGuidanceGK
    return FrequencyDecoupledGuidanceGK


def reference_fdg(cond, uncond, scales, parallel_weight=1.0):
    """Sadat et al.'s Algorithm 2 as diffusers' guider runs it, on kornia's pyramid, written out independently."""
    import kornia
    levels = len(scales)
    c_bands = kornia.geometry.transform.build_laplacian_pyramid(cond.double(), levels)
    u_bands = kornia.geometry.transform.build_laplacian_pyramid(uncond.double(), levels)
    guided = []
    for c, u, w in zip(c_bands, u_bands, scales):
        shift = c - u
        if parallel_weight != 1.0:
            unit = torch.nn.functional.normalize(c.flatten(1), dim=1).reshape(c.shape)
            parallel = (shift * unit).flatten(1).sum(1).reshape(-1, 1, 1, 1) * unit
            shift = parallel_weight * parallel + (shift - parallel)
        guided.append(u + w * shift)
    out = guided[-1]
    for band in reversed(guided[:-1]):
        out = kornia.geometry.transform.pyrup(out) + band
    return out.to(cond.dtype)


def post_cfg_args(x, cond, uncond, w, sigma=1.0):
    return {"denoised": uncond + w * (cond - uncond), "cond": [object()], "uncond": [object()],
            "cond_denoised": cond, "uncond_denoised": uncond, "cond_scale": w, "input": x,
            "sigma": torch.tensor([sigma]), "model_options": {}}


@pytest.mark.parametrize("levels,parallel_weight", [(2, 1.0), (3, 1.0), (3, 0.3)])
def test_the_rule_is_the_papers_on_kornias_pyramid(node, levels, parallel_weight):
    """D_out = x − FDG(x − D_c, x − D_u) with the scales high → sampler cfg, on identical tensors, in float64."""
    from guidekit.guidance.fdg import level_scales
    from guidekit.guidance.schedule import SigmaRange
    from guidekit.nodes.fdg import fdg_function

    from guidance_helpers import rand
    x, d_c, d_u = (rand(2, 4, 32, 24, seed=s).double() for s in (0, 1, 2))
    out = fdg_function(9.0, levels, parallel_weight, SigmaRange(10.0, 0.0))(post_cfg_args(x, d_c, d_u, 3.0))
    expected = x - reference_fdg(x - d_c, x - d_u, level_scales(9.0, 3.0, levels), parallel_weight)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    cfg = d_u + 3.0 * (d_c - d_u)
    assert (out - cfg).abs().max() > 0.1, "FDG with high 9 / low 3 must differ from CFG 3"


def test_equal_scales_are_cfg_and_the_pyramid_rebuilds_exactly(node):
    from guidekit.guidance.fdg import laplacian_pyramid, rebuild
    from guidekit.guidance.schedule import SigmaRange
    from guidekit.nodes.fdg import fdg_function

    from guidance_helpers import rand
    x, d_c, d_u = (rand(1, 4, 13, 10, seed=s).double() for s in (3, 4, 5))      # odd sides too
    torch.testing.assert_close(rebuild(laplacian_pyramid(x, 3)), x, rtol=0, atol=1e-12)
    out = fdg_function(4.0, 3, 1.0, SigmaRange(10.0, 0.0))(post_cfg_args(x, d_c, d_u, 4.0))
    torch.testing.assert_close(out, d_u + 4.0 * (d_c - d_u), rtol=0, atol=1e-12)


def test_outside_the_range_and_without_uncond_it_is_cfg(node):
    from guidekit.guidance.schedule import SigmaRange
    from guidekit.nodes.fdg import fdg_function

    from guidance_helpers import rand
    x, d_c, d_u = (rand(1, 4, 8, 8, seed=s) for s in (6, 7, 8))
    args = post_cfg_args(x, d_c, d_u, 2.0, sigma=20.0)
    assert torch.equal(fdg_function(9.0, 2, 1.0, SigmaRange(10.0, 0.0))(args), args["denoised"])
    args = dict(post_cfg_args(x, d_c, d_u, 2.0), uncond=None)
    assert torch.equal(fdg_function(9.0, 2, 1.0, SigmaRange(10.0, 0.0))(args), args["denoised"])


@pytest.mark.parametrize("arch", ["sd15", "flux", "wan21_t2v"])
def test_sampling_changes_the_result_and_leaves_the_input_model_alone(node, thin, arch):
    """UNet, DiT and a video latent (each frame split on its own); at cfg 1 the high band is still guided."""
    model = thin.build(arch, std=0.05)
    before = dict(model.model_options)
    plain = thin.sample(model, arch, cfg=3.0)
    guided = thin.sample(node.run(model=model, high_frequency_scale=8.0)[0], arch, cfg=3.0)
    assert model.model_options == before, "the node must patch a clone"
    assert guided.shape == plain.shape and torch.isfinite(guided).all()
    assert (guided - plain).abs().max() > 1e-3
    at_one = thin.sample(node.run(model=model, high_frequency_scale=8.0)[0], arch, cfg=1.0)
    assert (at_one - thin.sample(model, arch, cfg=1.0)).abs().max() > 1e-3, "cfg 1 must still run the uncond pass"


def test_bad_range_names_the_node_and_input(node, thin):
    with pytest.raises(ValueError, match="GuideKit FDG: input 'start_percent'"):
        node.run(model=thin.build("sd15"), start_percent=0.8, end_percent=0.2)
