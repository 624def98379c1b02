"""Tier 2: the Compare node samples each method as its own node + KSampler would, and lays out a labelled grid."""
from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def checkpoint(models_dir):
    import comfy.sd
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(
        str(models_dir / "checkpoints" / "guidekit-thin-sd15.safetensors"))[:3]
    positive = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)), {}]]
    negative = [[torch.zeros(1, 77, 768), {}]]
    return model, vae, positive, negative


def run_compare(checkpoint, methods="cfg,pag,icg", latent=None, steps=2):
    from guidekit.nodes.compare import CompareGK
    model, vae, positive, negative = checkpoint
    latent = {"samples": torch.zeros(1, 4, 8, 8)} if latent is None else latent
    with torch.inference_mode():
        return CompareGK.execute(model, positive, negative, latent, vae, methods, 3, steps, 5.0, "euler",
                                 "normal").result


def test_each_panel_is_the_methods_own_node_sampled_with_the_same_seed(checkpoint):
    import comfy.sample

    from guidekit.nodes.pag import PerturbedAttentionGuidanceGK
    grid, images, report = run_compare(checkpoint)
    model, vae, positive, negative = checkpoint
    assert grid.shape == (1, 256 + 34, 3 * 256, 3) and images.shape == (3, 64, 64, 3)
    rows = json.loads(report)
    assert [r["method"] for r in rows] == ["cfg", "pag", "icg"] and rows[0]["vs_cfg"] == pytest.approx(1.0)
    assert all(r["seconds_per_step"] > 0 for r in rows)
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 3)
    with torch.inference_mode():
        pag = PerturbedAttentionGuidanceGK.execute(model, 3.0, "default", 0.0, 1.0, 0.0, 0.0, "extra pass",
                                                   "auto").result[0]
        expected = vae.decode(comfy.sample.sample(pag, noise, 2, 5.0, "euler", "normal", positive, negative, latent,
                                                  seed=3, disable_pbar=True))
    assert torch.allclose(images[1], expected[0], atol=1e-5)
    assert (images[1] - images[0]).abs().max() > 1e-3, "PAG left the CFG image unchanged"
    panel = grid[0, 34:, 256:512]                       # the PAG panel is its image, scaled up
    assert panel.shape == (256, 256, 3) and torch.std(panel) > 0


def test_bad_methods_and_batches_are_clear_errors(checkpoint):
    with pytest.raises(ValueError, match="GuideKit Compare: input 'methods' names \\['nope'\\]"):
        run_compare(checkpoint, methods="cfg, nope")
    with pytest.raises(ValueError, match="input 'methods' names nothing"):
        run_compare(checkpoint, methods=" , ")
    with pytest.raises(ValueError, match="input 'latent_image' has batch 2"):
        run_compare(checkpoint, latent={"samples": torch.zeros(2, 4, 8, 8)})
