"""Tier 2: thin models of every architecture, built from ComfyUI's own classes, sampled in-process."""
import asyncio
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.host
ARCHS = ["sd15", "sdxl", "sd3", "flux"]
REPO = Path(__file__).resolve().parent.parent


def attention_blocks(model) -> set[str]:
    """Where a UNet's BasicTransformerBlocks sit: 'input', 'middle', 'output'."""
    unet = model.model.diffusion_model
    places = set()
    for place in ("input_blocks", "middle_block", "output_blocks"):
        mods = getattr(unet, place).modules()
        if any(type(m).__name__ == "BasicTransformerBlock" for m in mods):
            places.add(place.split("_")[0])
    return places


@pytest.mark.parametrize("arch", ARCHS)
def test_thin_model_keeps_the_real_block_structure(thin, arch):
    model = thin.build(arch)
    net = model.model.diffusion_model
    expected = {"sd15": "SD15", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}[arch]
    assert type(model.model.model_config).__name__ == expected
    if arch in ("sd15", "sdxl"):
        assert attention_blocks(model) == {"input", "middle", "output"}
    elif arch == "sd3":
        assert len(net.joint_blocks) == 2
    else:
        assert len(net.double_blocks) == 2 and len(net.single_blocks) == 2
    assert sum(p.numel() for p in net.parameters()) < 5_000_000


@pytest.mark.parametrize("arch", ARCHS)
def test_sampling_is_finite_and_deterministic(thin, arch):
    model = thin.build(arch)
    a = thin.sample(model, arch, seed=3, batch=2, height=16, width=24)
    b = thin.sample(model, arch, seed=3, batch=2, height=16, width=24)
    c = thin.sample(model, arch, seed=4, batch=2, height=16, width=24)
    assert a.shape == thin.latent_shape(arch, 2, 16, 24)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b), "same seed must give the same latent"
    assert not torch.allclose(a, c), "another seed must give another latent"


@pytest.mark.parametrize("arch", ARCHS)
def test_cfg_scale_changes_the_result(thin, arch):
    """The conditioning reaches the model: CFG 1 and CFG 4 sample different latents."""
    model = thin.build(arch)
    assert not torch.allclose(thin.sample(model, arch, cfg=1.0), thin.sample(model, arch, cfg=4.0))


def test_same_seed_builds_the_same_weights(thin):
    a, b = thin.build("sd15", seed=7), thin.build("sd15", seed=7)
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb), name


def test_thin_checkpoint_is_detected_as_sd15(comfy, models_dir):
    """CheckpointLoaderSimple's loader finds an SD1.5 UNet, CLIP-L text encoder and a KL VAE in the file."""
    path = models_dir / "checkpoints" / "guidekit-thin-sd15.safetensors"
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path))
    assert type(model.model.model_config).__name__ == "SD15"
    assert model.model.diffusion_model.model_channels == 320
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a digit"))
    assert cond[0][0].shape == (1, 77, 768) and torch.isfinite(cond[0][0]).all()
    latent = comfy.sample.sample(model, torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
                                 2, 3.0, "euler", "normal", cond, cond, torch.zeros(1, 4, 8, 8), seed=0,
                                 disable_pbar=True)
    image = vae.decode(latent)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()


def test_pack_loads_through_comfyui_custom_node_loader(comfy):
    """ComfyUI's own loader imports the repo as a custom node through the V3 `comfy_entrypoint`."""
    import nodes
    assert asyncio.run(nodes.load_custom_node(str(REPO), module_parent="custom_nodes")) is True
    assert nodes.LOADED_MODULE_DIRS.get(REPO.name) == str(REPO)
