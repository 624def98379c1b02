"""Tier 2: thin models of the DiT families (Wan, Qwen-Image, Lumina 2, HunyuanVideo, ...), built from ComfyUI's
own model classes and sampled in-process with CFG 4, so the attention batteries can run on each family.

A family whose config class this ComfyUI lacks skips, naming the class.
"""
import dataclasses

import pytest
import torch

pytestmark = pytest.mark.host

# tests/thin_models.py FAMILY_SPECS (listed here so collection does not import ComfyUI)
FAMILIES = ["wan21_t2v", "wan21_i2v", "wan22_t2v", "qwen_image", "lumina2", "zimage", "flux2", "hunyuan_video",
            "hunyuan_video15", "hunyuan_image21", "hidream", "cosmos_predict2", "ltxv", "mochi", "omnigen2",
            "aura_flow", "chroma_radiance", "kandinsky5", "kandinsky5_image", "krea2", "longcat_image",
            "zimage_pixel", "lens", "mage_flow", "ideogram4", "joyimage", "boogu", "pixeldit", "pid", "anima",
            "cogvideox", "cogvideox_i2v"]
# Init scale of these tests: at the default 0.02 the text barely moves some families' output (AuraFlow ~1e-7
# relative, Flux 2 / HunyuanVideo 1.5 / HunyuanImage 2.1 ~1e-5); at 0.1 every family's is >= 1e-2.
STD = 0.1
STEPS = 2       # two Euler steps with CFG 4: four model calls, each a cond + uncond batch


@pytest.fixture(scope="module")
def family(thin):
    """arch -> (ModelPatcher, latent sampled with seed 3, CFG 4, conditioning seeds 1/2), built once per module."""
    cache = {}

    def get(arch: str):
        absent = thin.missing(arch)
        if absent:
            pytest.skip(f"this ComfyUI has no comfy.supported_models.{absent} (needed by {arch})")
        if arch not in cache:
            model = thin.build(arch, std=STD)
            cache[arch] = model, thin.sample(model, arch, seed=3, steps=STEPS, cfg=4.0)
        return cache[arch]
    return get


def test_family_keys_match_the_specs(thin):
    assert tuple(FAMILIES) == thin.FAMILIES
    for arch in ("sd15", "sdxl", "sd3", "flux", "chroma"):           # the UNet / first DiT rows stay as they were
        spec = thin.SPECS[arch]
        assert not spec.video and spec.frames is None and not spec.requires
        assert thin.latent_shape(arch, 2, 16, 24) == (2, spec.latent_channels, 16, 24)


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_builds_from_comfyui_class(thin, family, arch):
    model, _ = family(arch)
    spec = thin.SPECS[arch]
    net = model.model.diffusion_model
    assert type(model.model.model_config) is spec.config_class
    assert type(model.model.model_config).__name__ == spec.requires
    assert type(net).__name__ == spec.model_class
    assert spec.blocks and all(len(getattr(net, name)) == 2 for name in spec.blocks), spec.blocks
    fixed = {id(p) for name in spec.fixed for p in getattr(net, name).parameters()}   # real width whatever the config
    assert sum(p.numel() for p in net.parameters() if id(p) not in fixed) < 10_000_000


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_samples_finite_latents_with_cfg(thin, family, arch):
    _, latent = family(arch)
    spec = thin.SPECS[arch]
    assert latent.shape == thin.latent_shape(arch)
    assert latent.shape[1] == spec.latent_channels and latent.shape[-2:] == (16, 16)
    if spec.video:
        assert latent.ndim == 5 and latent.shape[2] >= 2
    assert torch.isfinite(latent).all()


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_conditioning_reaches_the_model(thin, family, arch):
    """Other conditioning seeds (text, pooled vectors, I2V frame, ByT5 / Llama / CLIP-vision states) give
    another latent from the same noise."""
    model, latent = family(arch)
    other = thin.sample(model, arch, seed=3, steps=STEPS, cfg=4.0, cond_seeds=(5, 6))
    change = (latent - other).abs().max() / latent.abs().max()
    assert change > 1e-3, f"{arch}: conditioning changed the latent by only {float(change):.2g} (relative)"


def test_missing_family_class_is_reported(thin, monkeypatch):
    absent = dataclasses.replace(thin.SPECS["wan21_t2v"], config_class=None, requires="WAN99_T2V")
    monkeypatch.setitem(thin.SPECS, "wan21_t2v", absent)
    assert thin.missing("wan21_t2v") == "WAN99_T2V"
    with pytest.raises(LookupError, match="WAN99_T2V"):
        thin.build("wan21_t2v")


def test_compat_fills_version_only_dit_fields(comfy):
    """complete_dit_config fills only the fields the host's dataclass has, with the family's detected value."""
    from guidekit.nodes.compat import complete_dit_config

    @dataclasses.dataclass
    class Newer:
        txt_ids_dims: list
        meanflow_sum: bool
        use_x0: bool

    @dataclasses.dataclass
    class Older:
        depth: int

    assert complete_dit_config(Newer, {"image_model": "flux2"})["txt_ids_dims"] == [3]
    assert complete_dit_config(Newer, {"image_model": "flux"})["txt_ids_dims"] == []
    assert complete_dit_config(Newer, {"vision_in_dim": 1152})["meanflow_sum"] is True
    assert complete_dit_config(Newer, {"vision_in_dim": None})["meanflow_sum"] is False
    assert complete_dit_config(Newer, {"txt_ids_dims": [1, 2]})["txt_ids_dims"] == [1, 2]
    assert complete_dit_config(Older, {"depth": 2}) == {"depth": 2}
