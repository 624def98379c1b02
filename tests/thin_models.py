"""Thin diffusion models of real architectures, built from ComfyUI's own model classes (seeded).

Each architecture keeps its real block structure (UNet: attention in input, middle and output blocks;
DiT: double and single / joint blocks) at tiny widths, so hooks meet the same modules as on full
models. ComfyUI builds models with weight init disabled, so `init_weights` seeds every parameter.

Also a command line: `python tests/thin_models.py checkpoint OUT.safetensors` writes a checkpoint that
ComfyUI's CheckpointLoaderSimple detects as SD1.5 (model_channels 320, context_dim 768) with CLIP-L
and VAE weights, the pack's embedded default model until a trained one replaces it.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from guidekit.cli.inprocess import import_comfy  # noqa: E402

import_comfy()
import comfy.latent_formats  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.supported_models_base  # noqa: E402

UNET_COMMON = {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True,
               "legacy": False, "in_channels": 4, "out_channels": 4, "adm_in_channels": None,
               "use_temporal_attention": False, "use_temporal_resblock": False, "dtype": torch.float32}


@dataclass(frozen=True)
class ThinSpec:
    """One thin architecture: the ComfyUI model config class, its unet/dit config, its conditioning."""
    name: str
    config_class: type
    unet_config: dict
    context_dim: int
    pooled_dim: int | None      # pooled text vector (SDXL adm, SD3 y, Flux vec); None when unused
    latent_channels: int


SPECS: dict[str, ThinSpec] = {
    # SD1.5: 2 levels, attention at both, middle transformer; heads fixed to 8 like SD1.5.
    "sd15": ThinSpec("sd15", comfy.supported_models.SD15, {
        **UNET_COMMON, "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1],
        "transformer_depth": [1, 1], "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1],
        "context_dim": 64, "use_linear_in_transformer": False}, 64, None, 4),
    # SDXL: 3 levels, no attention at the first (as in SDXL), deeper transformers lower down, adm input.
    "sdxl": ThinSpec("sdxl", comfy.supported_models.SDXL, {
        **UNET_COMMON, "model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": [1, 1, 1],
        "transformer_depth": [0, 1, 2], "transformer_depth_middle": 2,
        "transformer_depth_output": [0, 0, 1, 1, 2, 2], "context_dim": 64, "num_head_channels": 16,
        "use_linear_in_transformer": True, "adm_in_channels": 2816, "num_classes": "sequential"}, 64, 1280, 4),
    # SD3 (MMDiT): joint blocks; hidden = 64 * depth as in ComfyUI's detection.
    "sd3": ThinSpec("sd3", comfy.supported_models.SD3, {
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
        "adm_in_channels": 32, "pos_embed_max_size": 64, "num_patches": 4096, "pos_embed_scaling_factor": None,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}},
        "x_block_self_attn_layers": [], "dtype": torch.float32}, 64, 32, 16),
    # Flux: double and single stream blocks, guidance embedding, rotary axes summing to the head dim.
    "flux": ThinSpec("flux", comfy.supported_models.Flux, {
        "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
        "vec_in_dim": 32, "context_in_dim": 64, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2,
        "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2,
        "qkv_bias": True, "dtype": torch.float32}, 64, 32, 16),
    # Chroma: Flux blocks without per-block modulation, driven by the distilled guidance approximator
    # (out_dim = hidden size, as ComfyUI's detection sets 3072 for 3072); its model_base still reads a
    # pooled vector. Core PAG is a silent no-op on it (ComfyUI#12177).
    "chroma": ThinSpec("chroma", comfy.supported_models.Chroma, {
        "image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": 64, "hidden_size": 64,
        "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12],
        "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 64, "hidden_dim": 64,
        "n_layers": 1, "dtype": torch.float32}, 64, 32, 16),
}


def init_weights(module: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """Seeded init: matrices/kernels ~ N(0, std), norm scales 1, biases 0 (ComfyUI leaves them empty).

    Floating buffers too (MMDiT's pos_embed is torch.empty until a checkpoint fills it): left alone
    they hold whatever memory the allocator hands back, and sampling turns NaN after other tests.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
        for b in module.buffers():
            if b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=gen) * std)
    return module


def host_config(config_class: type, unet_config: dict) -> dict:
    """`unet_config` with the fields this ComfyUI's DiT parameter class also requires (GuideKit's compat module)."""
    from guidekit.nodes.compat import complete_dit_config
    params = {"flux": "comfy.ldm.flux.model.FluxParams", "chroma": "comfy.ldm.chroma.model.ChromaParams"}
    name = params.get(unet_config.get("image_model", ""))
    if name is None:
        return dict(unet_config)
    module, _, cls = name.rpartition(".")
    return complete_dit_config(getattr(importlib.import_module(module), cls), unet_config)


def seeded_patcher(config_class: type, unet_config: dict, seed: int,
                   std: float = 0.02) -> "comfy.model_patcher.ModelPatcher":
    """ComfyUI's model for `config_class` + `unet_config` on the CPU, weights seeded, in a ModelPatcher."""
    cpu = torch.device("cpu")
    config = config_class(host_config(config_class, unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device=cpu)
    init_weights(model.diffusion_model, seed, std)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def build(arch: str, seed: int = 0, std: float = 0.02) -> "comfy.model_patcher.ModelPatcher":
    """A thin model of `arch` (a SPECS key), seeded, wrapped in ComfyUI's ModelPatcher.

    A larger `std` sharpens attention (bigger logits), so attention perturbations change more.
    """
    spec = SPECS[arch]
    return seeded_patcher(spec.config_class, spec.unet_config, seed, std)


def conditioning(arch: str, batch: int = 1, tokens: int = 8, seed: int = 0) -> list:
    """A ComfyUI CONDITIONING list with seeded embeddings of the width `arch` expects."""
    spec = SPECS[arch]
    gen = torch.Generator().manual_seed(seed)
    extra = {}
    if spec.pooled_dim is not None:
        extra["pooled_output"] = torch.randn(batch, spec.pooled_dim, generator=gen)
    if arch == "flux":
        extra["guidance"] = 3.5
    return [[torch.randn(batch, tokens, spec.context_dim, generator=gen), extra]]


def latent_shape(arch: str, batch: int = 1, height: int = 16, width: int = 16) -> tuple[int, ...]:
    return (batch, SPECS[arch].latent_channels, height, width)


def sample(model, arch: str, seed: int = 0, steps: int = 4, cfg: float = 4.0, batch: int = 1,
           height: int = 16, width: int = 16, sampler: str = "euler", scheduler: str = "normal") -> torch.Tensor:
    """Sample a latent with comfy.sample.sample, exactly as KSampler does."""
    latent = torch.zeros(latent_shape(arch, batch, height, width))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    positive = conditioning(arch, batch, seed=1)
    negative = conditioning(arch, batch, seed=2)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               seed=seed, disable_pbar=True)


# ---------------------------------------------------------------------------------------------------
# The SD1.5-detected checkpoint file

CHECKPOINT_UNET = {**UNET_COMMON, "model_channels": 320, "channel_mult": [1], "num_res_blocks": [1],
                   "transformer_depth": [1], "transformer_depth_middle": 1, "transformer_depth_output": [1, 1],
                   "context_dim": 768, "use_linear_in_transformer": False}


def thin_kl_autoencoder() -> torch.nn.Module:
    """The SD1.x KL autoencoder as ComfyUI builds it for a checkpoint (its config is fixed by ComfyUI)."""
    import comfy.ldm.models.autoencoder as ae
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    return ae.AutoencoderKL(ddconfig=ddconfig, embed_dim=4)


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a thin SD1.5-architecture checkpoint (UNet + CLIP-L + KL VAE, seeded) in ComfyUI's format."""
    cpu = torch.device("cpu")
    patcher = seeded_patcher(comfy.supported_models.SD15, CHECKPOINT_UNET, seed)
    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer,
                                                                comfy.sd1_clip.SD1ClipModel),
                         model_options={"load_device": cpu, "offload_device": cpu, "dtype": torch.float32})
    init_weights(clip.cond_stage_model, seed + 1)
    vae = comfy.sd.VAE(sd=init_weights(thin_kl_autoencoder(), seed + 2).state_dict())
    for module in (patcher.model, clip.cond_stage_model, vae.first_stage_model):
        module.half()  # half the file size; ComfyUI casts to its working dtype on load
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    comfy.sd.save_checkpoint(str(tmp), patcher, clip, vae,
                             metadata={"guidekit": f"thin sd15 checkpoint, seed {seed}, tests/thin_models.py"})
    tmp.replace(path)
    return path


# Guidance networks and decoders for loss guidance (random weights, tiny widths)

TINY_OPEN_CLIP = {"embed_dim": 32,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
TINY_CLIP_FILE = "guidekit-tiny-open-clip.safetensors"
SEGMENTATION_FILE = "guidekit-tiny-lraspp.safetensors"
SEGMENTATION_ARCH = "torchvision:lraspp_mobilenet_v3_large"


def _save(path: Path, state: dict, metadata: dict) -> Path:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def write_tiny_open_clip(path: Path, seed: int = 0) -> Path:
    """A random open_clip CLIP with 2-layer towers; its config travels in the file's metadata."""
    import json

    import open_clip
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP)
    return _save(path, model.state_dict(),
                 {"open_clip.arch": "guidekit-tiny", "open_clip.config": json.dumps(TINY_OPEN_CLIP)})


def write_segmentation_network(path: Path, classes: int = 3, seed: int = 0) -> Path:
    """A random torchvision LR-ASPP (MobileNetV3) with `classes` outputs, architecture in the metadata."""
    import torchvision
    torch.manual_seed(seed)
    model = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None, weights_backbone=None,
                                         num_classes=classes)
    return _save(path, model.state_dict(), {"guidekit.arch": SEGMENTATION_ARCH})


def tiny_taesd(latent_channels: int = 4, seed: int = 0) -> torch.nn.Module:
    """ComfyUI's TAESD (its layers start empty) with seeded weights, scale 1 and shift 0."""
    import comfy.taesd.taesd as taesd
    model = init_weights(taesd.TAESD(latent_channels=latent_channels), seed, std=0.05)
    with torch.no_grad():
        model.vae_shift.zero_()
    return model


def taesd_vae(latent_channels: int = 4, seed: int = 0):
    """A ComfyUI VAE object holding a seeded TAESD (the cheap decoder of loss guidance)."""
    return comfy.sd.VAE(sd=tiny_taesd(latent_channels, seed).state_dict())


def write_taesd(folder: Path, seed: int = 0) -> Path:
    """Seeded TAESD encoder + decoder files, which ComfyUI's VAE Loader offers as 'taesd'."""
    model = tiny_taesd(4, seed)
    _save(folder / "taesd_encoder.safetensors", model.taesd_encoder.state_dict(), {})
    return _save(folder / "taesd_decoder.safetensors", model.taesd_decoder.state_dict(), {})


REFINER_FILE = "guidekit-thin-sd15-refiner.safetensors"


def write_refiner(path: Path, shape: tuple[int, ...] = (4, 8, 8), iterations: int = 30, seed: int = 0) -> Path:
    """A flow refiner for SD1.5 latents of 64×64 images, briefly trained from seeded noise to a shifted set."""
    from guidekit.postprocess import neighbours
    from guidekit.postprocess.refiner import save_refiner
    from guidekit.postprocess.train import TrainSettings, new_refiner, train_refiner
    g = torch.Generator().manual_seed(seed)
    generated = torch.randn(64, *shape, generator=g)
    real = torch.randn(64, *shape, generator=g) * 0.5 + 0.3
    torch.manual_seed(seed)
    with torch.inference_mode(False):
        result = train_refiner(new_refiner(real), generated, real, neighbours.top_k(generated, real, 4),
                               TrainSettings(iterations=iterations, batch_size=16, lr=1e-3, checkpoint_every=0))
    return save_refiner(path, result.refiner, "latent", shape, "SD15", k=4, iterations=iterations,
                        command="tests/thin_models.py write_refiner (test asset)")


def write_guidance_files(models: Path) -> None:
    """Every loss-guidance test asset under a models folder (skipped when present)."""
    if not (models / "open_clip" / TINY_CLIP_FILE).exists():
        write_tiny_open_clip(models / "open_clip" / TINY_CLIP_FILE)
    if not (models / "guidekit_networks" / SEGMENTATION_FILE).exists():
        write_segmentation_network(models / "guidekit_networks" / SEGMENTATION_FILE)
    if not (models / "vae_approx" / "taesd_decoder.safetensors").exists():
        write_taesd(models / "vae_approx")
    if not (models / "guidekit_refiners" / REFINER_FILE).exists():
        write_refiner(models / "guidekit_refiners" / REFINER_FILE)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("checkpoint", "guidance-files"):
        sys.exit("usage: thin_models.py checkpoint OUT.safetensors | thin_models.py guidance-files MODELS_DIR")
    if sys.argv[1] == "checkpoint":
        print(write_checkpoint(Path(sys.argv[2])))
    else:
        write_guidance_files(Path(sys.argv[2]))
