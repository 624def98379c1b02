"""Tier 2: the flow refiner nodes under ComfyUI's inference mode (loader, Refine Latent / Image, Train)."""
import json

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def fr(comfy, models_dir):
    import folder_paths

    from guidekit.nodes import flow_refiner
    folder_paths.add_model_folder_path(flow_refiner.FOLDER, str(models_dir / flow_refiner.FOLDER))
    flow_refiner.register_refiner_folder()
    return flow_refiner


@pytest.fixture(scope="module")
def sd15_refiner(fr, thin):
    with torch.inference_mode():
        return fr.FlowRefinerLoaderGK.execute(thin.REFINER_FILE).result[0]


def test_loader_lists_and_loads_the_refiner_with_what_it_was_trained_for(fr, thin, sd15_refiner):
    assert thin.REFINER_FILE in fr.model_files(fr.FOLDER)
    assert "mnist-refiner-k20.safetensors" in fr.model_files(fr.FOLDER)          # the pack's demo refiner
    assert sd15_refiner.space == "latent" and sd15_refiner.sample_shape == (4, 8, 8)
    assert sd15_refiner.latent_format == "SD15"


def test_refine_latent_runs_under_inference_mode_and_keeps_other_fields(fr, sd15_refiner):
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 1, 8, 8)
    with torch.inference_mode():
        out = fr.FlowRefineLatentGK.execute(sd15_refiner, {"samples": x, "noise_mask": mask}, "heun", 4, 1.0).result[0]
        same = fr.FlowRefineLatentGK.execute(sd15_refiner, {"samples": x}, "euler", 4, 0.0).result[0]
    assert out["samples"].shape == x.shape and torch.isfinite(out["samples"]).all()
    assert out["noise_mask"] is mask
    assert (out["samples"] - x).abs().mean() > 1e-3                   # the trained refiner moves samples
    assert torch.equal(same["samples"], x)                            # strength 0 = unchanged


def test_refine_latent_equals_the_ode_of_the_refiner(fr, sd15_refiner):
    from guidekit.postprocess import ode
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        node = fr.FlowRefineLatentGK.execute(sd15_refiner, {"samples": x}, "euler", 3, 0.6).result[0]["samples"]
    h = 0.2
    ref = x.clone()
    with torch.no_grad():
        for i in range(3):
            ref = ref + h * sd15_refiner.refiner(ref, i * h)
        assert torch.allclose(node, ref, atol=1e-5)
        assert torch.allclose(ode.refine(sd15_refiner.refiner, x, 0.6, 3), ref, atol=1e-5)


def test_refine_latent_takes_batches_and_other_resolutions(fr, sd15_refiner, caplog):
    x = torch.randn(5, 4, 13, 9)
    with torch.inference_mode():
        out = fr.FlowRefineLatentGK.execute(sd15_refiner, {"samples": x}, "dopri5", 4, 1.0).result[0]["samples"]
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_a_refiner_for_another_latent_format_is_a_clear_error(fr, sd15_refiner):
    with torch.inference_mode(), pytest.raises(ValueError, match=r"GuideKit Flow Refine Latent.*4-channel latents "
                                                                 r"\(SD15\).*input 'samples'.*\(16, 8, 8\)"):
        fr.FlowRefineLatentGK.execute(sd15_refiner, {"samples": torch.randn(1, 16, 8, 8)}, "euler", 2, 1.0)
    with torch.inference_mode(), pytest.raises(ValueError, match="GuideKit Flow Refine Image.*not images"):
        fr.FlowRefineImageGK.execute(sd15_refiner, torch.rand(1, 8, 8, 3), "euler", 2, 1.0)


def test_missing_and_foreign_files_are_clear_errors(fr, models_dir):
    from safetensors.torch import save_file
    with pytest.raises(ValueError, match="GuideKit Flow Refiner Loader: input 'refiner_name' = 'nope.safetensors' "
                                         "is not one of its options"):
        fr.FlowRefinerLoaderGK.execute("nope.safetensors")
    with pytest.raises(ValueError, match="'weights.ckpt' is not a file of the 'guidekit_refiners' model folder"):
        fr.load_refiner_file("weights.ckpt")
    save_file({"w": torch.zeros(1)}, str(models_dir / fr.FOLDER / "foreign.safetensors"))
    try:
        with pytest.raises(ValueError,
                           match="input 'refiner_name' = 'foreign.safetensors': .*not a GuideKit flow refiner"):
            fr.FlowRefinerLoaderGK.execute("foreign.safetensors")
    finally:
        (models_dir / fr.FOLDER / "foreign.safetensors").unlink()


def blob_images(n, seed, bright):
    g = torch.Generator().manual_seed(seed)
    base = torch.full((n, 12, 12, 3), bright)
    return (base + 0.05 * torch.randn(base.shape, generator=g)).clamp(0, 1)


def test_train_node_in_pixel_space_then_refine_image(fr, models_dir):
    generated = torch.rand(24, 12, 12, 3, generator=torch.Generator().manual_seed(2))
    real = torch.cat([blob_images(16, 3, 0.2), blob_images(16, 4, 0.8)])
    torch.manual_seed(0)                                              # the refiner's initial weights
    with torch.inference_mode():
        rf = fr.TrainFlowRefinerGK.execute(4, 150, 16, 2e-3, 0, "test_pixel", generated=generated,
                                           real_images=real).result[0]
        refined = fr.FlowRefineImageGK.execute(rf, generated, "heun", 6, 1.0).result[0]
    assert rf.space == "pixel" and rf.sample_shape == (3, 12, 12)
    saved = sorted((models_dir / fr.FOLDER).glob("test_pixel_*.safetensors"))
    assert saved and json.loads(rf.metadata["guidekit.data_sha256"]).keys() == {"generated", "real"}
    assert refined.shape == generated.shape and refined.min() >= 0 and refined.max() <= 1

    def to_real(x):
        return torch.cdist(x.flatten(1), real.flatten(1)).min(1).values.mean()
    assert to_real(refined) < 0.6 * to_real(generated)
    for p in saved:
        p.unlink()


def test_train_node_in_a_vae_latent_space_with_open_clip_neighbours(fr, lg_folders, thin, models_dir):
    from guidekit.nodes import loss_terms
    generated = torch.rand(6, 32, 32, 3, generator=torch.Generator().manual_seed(5))
    real = torch.rand(8, 48, 40, 3, generator=torch.Generator().manual_seed(6))      # other size: cropped, resized
    with torch.inference_mode():
        vae = thin.taesd_vae()
        clip = loss_terms.OpenClipLoaderGK.execute(thin.TINY_CLIP_FILE, "auto").result[0]
        rf = fr.TrainFlowRefinerGK.execute(3, 5, 4, 1e-3, 0, "test_latent", generated=generated, real_images=real,
                                           vae=vae, open_clip=clip, neighbour_space="open_clip mean-patch").result[0]
        latent = vae.encode(generated)
        out = fr.FlowRefineLatentGK.execute(rf, {"samples": latent}, "euler", 2, 1.0).result[0]["samples"]
    assert rf.space == "latent" and rf.sample_shape == (4, 4, 4)
    assert rf.metadata["guidekit.neighbour_space"] == "open_clip mean-patch"
    assert out.shape == latent.shape and torch.isfinite(out).all()
    for p in (models_dir / fr.FOLDER).glob("test_latent_*.safetensors"):
        p.unlink()


@pytest.fixture(scope="module")
def lg_folders(comfy, models_dir):
    import folder_paths

    from guidekit.nodes import loss_networks
    folder_paths.add_model_folder_path(loss_networks.OPEN_CLIP_FOLDER, str(models_dir / loss_networks.OPEN_CLIP_FOLDER))
    loss_networks.register_model_folders()


@pytest.mark.parametrize("kwargs,needle", [
    ({}, "connect exactly one of 'generated'"),
    ({"generated": torch.rand(2, 8, 8, 3)}, "no real data"),
    ({"generated": torch.rand(2, 8, 8, 3), "real_images": torch.rand(2, 8, 8, 3)}, "input 'k' = 3 is more than the 2"),
    ({"generated": torch.rand(4, 8, 8, 3), "real_images": torch.rand(4, 8, 8, 3),
      "neighbour_space": "open_clip pooled"}, "needs input 'open_clip'"),
    ({"generated": torch.rand(2, 8, 8, 3), "real_folder": "no/such/folder"}, "input 'real_folder'"),
    ({"generated_latent": {"samples": torch.randn(2, 4, 8, 8)}, "real_images": torch.rand(2, 8, 8, 3)},
     "needs input 'vae'"),
])
def test_train_node_bad_input_names_the_input(fr, kwargs, needle):
    with torch.inference_mode(), pytest.raises(ValueError, match=f"GuideKit Train Flow Refiner: .*{needle}"):
        fr.TrainFlowRefinerGK.execute(3, 2, 2, 1e-3, 0, "bad", **kwargs)


def test_command_line_trains_in_a_vae_latent_space_with_open_clip_neighbours(fr, thin, models_dir, tmp_path):
    """train_refiner --vae (ComfyUI's VAE from a file) on image folders, neighbours in open_clip patch features."""
    from PIL import Image
    from safetensors.torch import save_file

    from guidekit.cli import train_refiner as cli
    from guidekit.postprocess.refiner import load_refiner
    g = torch.Generator().manual_seed(7)
    for name, n in (("gen", 6), ("real", 8)):
        (tmp_path / name).mkdir()
        for i in range(n):
            pixels = (torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    vae_file = tmp_path / "taesd.safetensors"
    save_file({k: v.contiguous() for k, v in thin.tiny_taesd(4).state_dict().items()}, str(vae_file))
    out = tmp_path / "r.safetensors"
    assert cli.main(["--generated", str(tmp_path / "gen"), "--real", str(tmp_path / "real"), "--out", str(out),
                     "--vae", str(vae_file), "--latent-format", "SD15", "--neighbour-space", "open_clip",
                     "--open-clip", str(models_dir / "open_clip" / thin.TINY_CLIP_FILE), "--k", "3",
                     "--iterations", "3", "--batch-size", "4", "--quiet"]) == 0
    rf = load_refiner(out)
    assert rf.space == "latent" and rf.sample_shape == (4, 4, 4) and rf.latent_format == "SD15"
    assert (rf.metadata["guidekit.neighbour_space"].startswith("open_clip")
            and "mean-patch" in rf.metadata["guidekit.neighbour_space"])
