"""Tier 2: GuideKit's attention-perturbation math against ComfyUI core's own helpers on identical tensors."""
import pytest
import torch

from guidekit.guidance.blur import gaussian_blur_2d, token_grid
from guidekit.guidance.sag import attention_mask, degrade

from guidance_helpers import rand

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def core_sag(comfy):
    import comfy_extras.nodes_sag as core_sag
    return core_sag


@pytest.mark.parametrize("sigma", [0.5, 2.0, 3.0])
def test_blur_equals_core_sag_blur(core_sag, sigma):
    img = rand(2, 4, 16, 24, seed=1)
    torch.testing.assert_close(gaussian_blur_2d(img, 9, 9, sigma), core_sag.gaussian_blur_2d(img, 9, sigma))


@pytest.mark.parametrize("lh,lw", [(16, 16), (16, 24), (24, 16)])
def test_sag_degradation_equals_core_create_blur_map(core_sag, lh, lw):
    """Same mask (keys with above-average attention) and same blur as core SAG, also on non-square latents."""
    b, heads = 2, 3
    h, w = token_grid((lh // 2) * (lw // 2), lh, lw)
    logits = rand(b * heads, h * w, h * w, seed=2) * 3
    attn = logits.softmax(dim=-1)
    x0 = rand(b, 4, lh, lw, seed=3)
    ours = degrade(x0, attention_mask(attn.reshape(b, heads, h * w, h * w), h, w), blur_sigma=2.0)
    core = core_sag.create_blur_map(x0, attn, sigma=2.0, threshold=1.0)
    torch.testing.assert_close(ours, core)
    assert not torch.allclose(ours, x0), "the mask selected nothing: the comparison would be vacuous"
