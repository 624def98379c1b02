"""Thin diffusion models of real architectures, built from ComfyUI's own model classes (seeded).

Each architecture keeps its real block structure (UNet: attention in input, middle and output blocks;
DiT: double and single / joint blocks) at tiny widths, so hooks meet the same modules as on full
models. ComfyUI builds models with weight init disabled, so `init_weights` seeds every parameter.

`FAMILIES` adds the other DiT families (Wan, Qwen-Image, Lumina 2 / Z-Image, Flux 2, HunyuanVideo / 1.5 /
HunyuanImage 2.1, HiDream, Cosmos Predict2, LTX-Video, Mochi, OmniGen2, AuraFlow, Chroma Radiance): video
families sample 5-D latents (`latent_shape`, `frames`), and `conditioning` carries every key a family's
model_base reads (pooled vectors, masks, I2V frame, ByT5 / Llama / CLIP-vision states). A family whose
config class a ComfyUI lacks keeps its row with `config_class` None (`missing` names the class). At the
default init scale the text barely moves some families' output (AuraFlow, Flux 2, HunyuanVideo 1.5,
HunyuanImage 2.1); std 0.1 makes every family's conditioning visible.

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
    config_class: type | None   # None when this ComfyUI lacks the class (see `requires`)
    unet_config: dict
    context_dim: int
    pooled_dim: int | None      # pooled text vector (SDXL adm, SD3 y, Flux vec); None when unused
    latent_channels: int
    video: bool = False         # a video model: 5-D latents (B, C, T, H, W) with T = `frames` >= 2
    frames: int | None = None   # latent frames: None for 4-D latents; 1 for image models whose latent
    #                             format is 3-D (KSampler samples them as (B, C, 1, H, W))
    model_class: str = ""       # class name of the diffusion model ComfyUI builds for the family
    requires: str = ""          # the comfy.supported_models class the family needs (empty: every host has it)
    blocks: tuple[str, ...] = ()    # the diffusion model's ModuleLists of transformer blocks (2 each)
    fixed: tuple[str, ...] = ()     # diffusion-model submodules ComfyUI builds at the real width whatever the
    #                                 config (Anima's LLM adapter): not part of the thin size


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


# ---------------------------------------------------------------------------------------------------
# DiT families: ComfyUI's config class (by name: a host without it skips the family), the unet_config keys
# its model_detection.py gives a real checkpoint, at hidden 64 / 2 heads (head dim 32, rotary axes summing
# to 32) / 2 blocks of each kind / text width 32. Values not tied to the width are the detected ones.

F32 = {"dtype": torch.float32}
TEXT = 32                   # text context width of the DiT families
CLIP_VISION_WAN = 1280      # Wan I2V's img_emb takes CLIP-H penultimate states of this width (fixed in WanModel)
BYT5 = 1472                 # HunyuanImage 2.1 / Video 1.5 ByT5 mapper input width (fixed in the model)
VISION_HV15 = 32            # HunyuanVideo 1.5 vision_in width (SigLIP 1152 on the real model)
LLAMA_HIDREAM = 24          # HiDream's Llama-3 hidden-state width (4096 on the real model)
LLAMA_LAYERS_HIDREAM = 4    # Llama layers in HiDream's conditioning_llama3 (32 real), one per block here
ANIMA_TEXT = 1024           # Anima's Qwen3 0.6B states and its LLM adapter's width (fixed in the model)
ANIMA_T5_VOCAB = 32128      # the adapter embeds T5 token ids (its vocabulary is fixed in the model)
PID_LQ = 16                 # PiD's low-quality latent channels (a Flux latent)
PID_LQ_DOWN = 2             # pixels per PiD LQ-latent pixel here (sr_scale 1 x 2; 4 x 8 on the real model), so
#                             the LQ latent is exactly the patch grid at patch 2


def _family(name: str, class_name: str, unet_config: dict, latent_channels: int, model_class: str,
            blocks: tuple[str, ...], *, context_dim: int = TEXT, pooled_dim: int | None = None, video: bool = False,
            frames: int | None = None, overrides=None, fixed: tuple[str, ...] = ()) -> ThinSpec:
    """`overrides`: config class -> class attributes a same-named subclass changes (widths or sampling ComfyUI
    pins on the class itself)."""
    config_class = getattr(comfy.supported_models, class_name, None)
    if overrides is not None and config_class is not None:
        config_class = type(class_name, (config_class,), overrides(config_class))
    return ThinSpec(name, config_class, {**unet_config, **F32}, context_dim,
                    pooled_dim, latent_channels, video, 2 if video else frames, model_class, class_name, blocks, fixed)


WAN = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "in_dim": 16, "out_dim": 16,
       "dim": 64, "ffn_dim": 128, "freq_dim": 256, "text_dim": TEXT, "num_heads": 2, "num_layers": 2,
       "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}
HUNYUAN = {"image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "vec_in_dim": None,
           "context_in_dim": TEXT, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2,
           "depth_single_blocks": 2, "axes_dim": [8, 12, 12], "theta": 256, "patch_size": [1, 2, 2],
           "qkv_bias": True, "guidance_embed": False, "byt5": False, "meanflow": False,
           "use_cond_type_embedding": False, "vision_in_dim": None}
LUMINA = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "cap_feat_dim": TEXT,
          "n_layers": 2, "n_refiner_layers": 2, "n_heads": 2, "n_kv_heads": 1, "multiple_of": 16,
          "ffn_dim_multiplier": 4.0, "norm_eps": 1e-5, "qk_norm": True, "axes_dims": [8, 12, 12],
          "axes_lens": [300, 512, 512], "rope_theta": 10000.0}

KANDINSKY5 = {"image_model": "kandinsky5", "in_visual_dim": 16, "out_visual_dim": 16, "in_text_dim": TEXT,
              "in_text_dim2": TEXT, "time_dim": 32, "model_dim": 64, "ff_dim": 128, "visual_embed_dim": 132,
              "patch_size": (1, 2, 2), "num_text_blocks": 1, "num_visual_blocks": 2, "axes_dims": (8, 12, 12)}

UNPINNED_WIDTHS = lambda cls: {"unet_extra_config": {}}      # noqa: E731 (widths from our unet_config)
# CogVideoX samples zero-terminal-SNR: its first sigma (~4500) scales the noise so far that float32 rounding
# (~2e-3) swamps a step's guidance terms; the thin rows keep its beta schedule without zsnr (first sigma ~15).
WITHOUT_ZSNR = lambda cls: {"sampling_settings": {**cls.sampling_settings, "zsnr": False}}   # noqa: E731
# CogVideoX: head dim 64 as ComfyUI detects it and a 128-wide time embedding (narrower, the text moves its
# DDPM v-prediction output by only ~3e-4 at std 0.1).
COGVIDEOX = {"image_model": "cogvideox", "num_attention_heads": 2, "attention_head_dim": 64, "in_channels": 16,
             "out_channels": 16, "time_embed_dim": 128, "text_embed_dim": TEXT, "num_layers": 2, "patch_size": 2,
             "use_rotary_positional_embeddings": True}

# Cosmos Predict2 (the detected values at width 64); Anima is this DiT behind an LLM text adapter.
COSMOS_PREDICT2 = {
    "image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
    "in_channels": 16, "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 64,
    "concat_padding_mask": True, "crossattn_emb_channels": TEXT, "pos_emb_cls": "rope3d",
    "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30,
    "use_adaln_lora": True, "adaln_lora_dim": 16, "num_blocks": 2, "num_heads": 2,
    "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
    "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0, "extra_h_extrapolation_ratio": 1.0,
    "extra_w_extrapolation_ratio": 1.0, "extra_t_extrapolation_ratio": 1.0,
    "rope_enable_fps_modulation": False}
# PixelDiT at width 64, patch 2 (16 on the real model); PiD is this body with an LQ-latent branch.
PIXELDIT = {"image_model": "pixeldit_t2i", "in_channels": 3, "num_groups": 2, "hidden_size": 64,
            "pixel_hidden_size": 8, "pixel_attn_hidden_size": 64, "pixel_num_groups": 2, "patch_depth": 2,
            "pixel_depth": 2, "patch_size": 2, "txt_embed_dim": TEXT, "txt_max_length": 64}

LUMINA_BLOCKS = ("context_refiner", "noise_refiner", "layers")
FLUX_BLOCKS = ("double_blocks", "single_blocks")

FAMILY_SPECS: dict[str, ThinSpec] = {
    # Wan 2.1 T2V: WanAttentionBlocks (self-attention over video tokens, cross-attention to the text).
    "wan21_t2v": _family("wan21_t2v", "WAN21_T2V", WAN, 16, "WanModel", ("blocks",), video=True),
    # Wan 2.1 I2V: the first frame as concat latent + mask (in_dim 16 + 4 + 16), CLIP-vision tokens in front
    # of the text for the I2V cross-attention (k_img / v_img).
    "wan21_i2v": _family("wan21_i2v", "WAN21_I2V", {**WAN, "model_type": "i2v", "in_dim": 36}, 16, "WanModel",
                         ("blocks",), video=True),
    # Wan 2.2 TI2V 5B: 48-channel latents (Wan 2.2 VAE), same blocks.
    "wan22_t2v": _family("wan22_t2v", "WAN22_T2V", {**WAN, "in_dim": 48, "out_dim": 48}, 48, "WanModel",
                         ("blocks",), video=True),
    # Qwen-Image: MMDiT-style dual-stream blocks with one joint attention; 16-channel latents packed 2x2
    # into 64 input features; the Wan 2.1 latent format, so KSampler samples (B, 16, 1, H, W).
    "qwen_image": _family("qwen_image", "QwenImage", {
        "image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 2,
        "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": TEXT,
        "pooled_projection_dim": TEXT, "axes_dims_rope": (8, 12, 12)}, 16, "QwenImageTransformer2DModel",
        ("transformer_blocks",), frames=1),
    # Lumina 2 (NextDiT): context_refiner (text only), noise_refiner (image only), joint main layers; GQA.
    "lumina2": _family("lumina2", "Lumina2", LUMINA, 16, "NextDiT", LUMINA_BLOCKS),
    # Z-Image: NextDiT with Z-Image modulation, time scale 1000, pad tokens to a multiple of 32. Its adaLN
    # input is min(dim, 256) wide while the time embedder always gives 256, so dim is 256 (2 heads of 128,
    # the real rotary axes).
    "zimage": _family("zimage", "ZImage", {
        **LUMINA, "dim": 256, "n_kv_heads": 2, "ffn_dim_multiplier": 8.0 / 3.0, "axes_dims": [32, 48, 48],
        "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "z_image_modulation": True, "time_scale": 1000.0,
        "pad_tokens_multiple": 32}, 16, "NextDiT", LUMINA_BLOCKS),
    # Flux 2: Flux blocks with global modulation, 4 rotary axes (text position on the 4th), patch 1 over
    # 128-channel latents; ComfyUI pads the text to 512 tokens.
    "flux2": _family("flux2", "Flux2", {
        "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
        "context_in_dim": TEXT, "hidden_size": 64, "mlp_ratio": 3.0, "num_heads": 2, "depth": 2,
        "depth_single_blocks": 2, "axes_dim": [8, 8, 8, 8], "theta": 2000, "patch_size": 1, "qkv_bias": False,
        "guidance_embed": True, "global_modulation": True, "mlp_silu_act": True, "ops_bias": False,
        "default_ref_method": "index", "ref_index_scale": 10.0}, 128, "Flux", FLUX_BLOCKS),
    # HunyuanVideo: token refiner, double blocks (img, txt streams) and single blocks, pooled CLIP vector,
    # guidance embedding.
    "hunyuan_video": _family("hunyuan_video", "HunyuanVideo", {
        **HUNYUAN, "vec_in_dim": TEXT, "guidance_embed": True}, 16, "HunyuanVideo", FLUX_BLOCKS,
        pooled_dim=TEXT, video=True),
    # HunyuanVideo 1.5: patch 1, 32-channel latents + 32 image + 1 mask input channels, ByT5 glyph tokens and
    # condition-type embeddings, vision_in for SigLIP tokens.
    "hunyuan_video15": _family("hunyuan_video15", "HunyuanVideo15", {
        **HUNYUAN, "in_channels": 65, "out_channels": 32, "patch_size": [1, 1, 1], "byt5": True,
        "use_cond_type_embedding": True, "vision_in_dim": VISION_HV15}, 32, "HunyuanVideo", FLUX_BLOCKS,
        video=True),
    # HunyuanImage 2.1: the HunyuanVideo blocks on 2-D 64-channel latents (2 rotary axes), ByT5 tokens.
    "hunyuan_image21": _family("hunyuan_image21", "HunyuanImage21", {
        **HUNYUAN, "in_channels": 64, "out_channels": 64, "patch_size": [1, 1], "axes_dim": [16, 16],
        "byt5": True}, 64, "HunyuanVideo", FLUX_BLOCKS),
    # HiDream-I1: double-stream then single-stream blocks with MoE feed-forwards; T5 + per-block Llama states.
    "hidream": _family("hidream", "HiDream", {
        "image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2,
        "num_single_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2,
        "caption_channels": [TEXT, LLAMA_HIDREAM], "text_emb_dim": TEXT, "num_routed_experts": 4,
        "num_activated_experts": 2, "axes_dims_rope": [16, 8, 8], "max_resolution": [128, 128],
        "llama_layers": list(range(LLAMA_LAYERS_HIDREAM))}, 16, "HiDreamImageTransformer2DModel",
        ("double_stream_blocks", "single_stream_blocks"), pooled_dim=TEXT),
    # Cosmos Predict2 (text to image): self-, cross-attention and MLP per block, AdaLN-LoRA, 3-D RoPE;
    # the Wan 2.1 latent format, so KSampler samples (B, 16, 1, H, W).
    "cosmos_predict2": _family("cosmos_predict2", "CosmosT2IPredict2", COSMOS_PREDICT2, 16, "MiniTrainDIT",
                               ("blocks",), frames=1),
    # LTX-Video: transformer blocks with self-attention (attn1) and text cross-attention (attn2); patch 1.
    "ltxv": _family("ltxv", "LTXV", {
        "image_model": "ltxv", "in_channels": 128, "cross_attention_dim": 64, "attention_head_dim": 32,
        "num_attention_heads": 2, "caption_channels": TEXT, "num_layers": 2}, 128, "LTXVModel",
        ("transformer_blocks",), video=True),
    # Mochi: asymmetric joint blocks (video stream 64 wide, text stream 32 wide), T5 attention pooling. The
    # block asserts a video MLP width of 1536 * 8, hence mlp_ratio_x 192 at width 64.
    "mochi": _family("mochi", "GenmoMochi", {
        "image_model": "mochi_preview", "depth": 2, "patch_size": 2, "num_heads": 2, "hidden_size_x": 64,
        "hidden_size_y": 32, "mlp_ratio_x": 1536 * 8 / 64, "mlp_ratio_y": 4.0, "learn_sigma": False,
        "in_channels": 12, "qk_norm": True, "qkv_bias": False, "out_bias": True, "attn_drop": 0.0,
        "patch_embed_bias": True, "posenc_preserve_area": True, "timestep_mlp_bias": True,
        "attend_to_padding": False, "timestep_scale": 1000.0, "use_t5": True, "t5_feat_dim": TEXT,
        "t5_token_length": 256, "rope_theta": 10000.0}, 12, "AsymmDiTJoint", ("blocks",), video=True),
    # OmniGen2: Lumina-style refiners (context, noise, reference image) and joint layers; GQA.
    "omnigen2": _family("omnigen2", "Omnigen2", {
        "image_model": "omnigen2", "axes_dim_rope": [8, 12, 12], "axes_lens": [1024, 1664, 1664],
        "ffn_dim_multiplier": None, "hidden_size": 64, "in_channels": 16, "multiple_of": 16, "norm_eps": 1e-5,
        "num_attention_heads": 2, "num_kv_heads": 1, "num_layers": 2, "num_refiner_layers": 2,
        "out_channels": None, "patch_size": 2, "text_feat_dim": TEXT, "timestep_scale": 1000.0}, 16,
        "OmniGen2Transformer2DModel", ("context_refiner", "noise_refiner", "ref_image_refiner", "layers")),
    # AuraFlow: MMDiT double layers then single layers, register tokens, learned positions; SDXL latents.
    "aura_flow": _family("aura_flow", "AuraFlow", {
        "in_channels": 4, "out_channels": 4, "patch_size": 2, "dim": 64, "n_layers": 4, "n_double_layers": 2,
        "n_heads": 2, "global_conddim": 64, "cond_seq_dim": TEXT, "max_seq": 256}, 4, "MMDiT",
        ("double_layers", "single_layers")),
    # Chroma Radiance: Chroma's blocks on pixels (3 channels) with the NeRF patch decoder; patch 2 here
    # (16 on the real model) so a 16x16 input still makes an 8x8 token grid.
    "chroma_radiance": _family("chroma_radiance", "ChromaRadiance", {
        "image_model": "chroma_radiance", "in_channels": 3, "out_channels": 3, "context_in_dim": TEXT,
        "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
        "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 64,
        "hidden_dim": 64, "n_layers": 1, "nerf_hidden_size": 16, "nerf_mlp_ratio": 4, "nerf_depth": 2,
        "nerf_max_freqs": 8, "nerf_tile_size": 512, "nerf_final_head_type": "conv",
        "nerf_embedder_dtype": torch.float32}, 3, "ChromaRadiance", (*FLUX_BLOCKS, "nerf_blocks")),
    # Kandinsky 5 (ComfyUI 0.33+): text encoder blocks, then visual blocks with self-attention over the video tokens
    # and cross-attention to the text; the video model takes latent + first-frame image + mask channels (33 = 132/4).
    "kandinsky5": _family("kandinsky5", "Kandinsky5", KANDINSKY5, 16, "Kandinsky5", ("visual_transformer_blocks",),
                          pooled_dim=TEXT, video=True),
    # Kandinsky 5 image: the same blocks on Flux-format 2-D latents (no concat channels).
    "kandinsky5_image": _family("kandinsky5_image", "Kandinsky5Image", {**KANDINSKY5, "visual_embed_dim": 64}, 16,
                                "Kandinsky5", ("visual_transformer_blocks",), pooled_dim=TEXT),
    # Krea 2 (ComfyUI 0.33+): one stream of [text, image] single blocks with grouped-query attention, a text
    # fusion transformer over the encoder's layer stack; the Wan 2.1 latent format, so (B, 16, 1, H, W).
    "krea2": _family("krea2", "Krea2", {
        "image_model": "krea2", "features": 64, "tdim": 32, "txtdim": TEXT, "heads": 2, "kvheads": 1,
        "multiplier": 2, "layers": 2, "patch": 2, "channels": 16, "txtlayers": 1, "txtheads": 2, "txtkvheads": 2},
        16, "SingleStreamDiT", ("blocks",), frames=1),
    # ComfyUI 0.33+ families below.
    # LongCat-Image: Flux blocks without guidance or pooled vector, text ids on two rotary axes.
    "longcat_image": _family("longcat_image", "LongCatImage", {
        "image_model": "flux", "guidance_embed": False, "vec_in_dim": None, "context_in_dim": TEXT,
        "txt_ids_dims": [1, 2], "in_channels": 16, "out_channels": 16, "hidden_size": 64, "mlp_ratio": 4.0,
        "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12], "theta": 10000,
        "patch_size": 2, "qkv_bias": True}, 16, "Flux", FLUX_BLOCKS),
    # Z-Image pixel space: the Z-Image NextDiT on RGB patches with an MLP patch decoder (patch 2 here, 16 real).
    "zimage_pixel": _family("zimage_pixel", "ZImagePixelSpace", {
        **LUMINA, "image_model": "zimage_pixel", "in_channels": 3, "dim": 256, "n_kv_heads": 2,
        "ffn_dim_multiplier": 8.0 / 3.0, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
        "rope_theta": 256.0, "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32,
        "decoder_hidden_size": 32, "decoder_num_res_blocks": 1, "decoder_max_freqs": 4}, 3,
        "NextDiTPixelSpace", LUMINA_BLOCKS),
    # Lens: dual-stream MMDiT with one joint [image, text] attention; a token per 128-channel Flux 2 latent pixel.
    "lens": _family("lens", "Lens", {
        "image_model": "lens", "patch_size": 2, "in_channels": 128, "out_channels": 32, "num_layers": 2,
        "attention_head_dim": 32, "num_attention_heads": 2, "enc_hidden_dim": TEXT, "axes_dims_rope": (8, 12, 12),
        "multi_layer_encoder_feature": False, "selected_layer_index": (0,)}, 128, "LensTransformer2DModel",
        ("transformer_blocks",)),
    # Mage-Flow: Qwen-Image double-stream blocks, patch 1 over 128-channel Flux 2 latents.
    "mage_flow": _family("mage_flow", "MageFlow", {
        "image_model": "mage_flow", "in_channels": 128, "out_channels": 128, "num_layers": 2,
        "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": TEXT,
        "axes_dims_rope": (8, 12, 12)}, 128, "MageFlowTransformer2DModel", ("transformer_blocks",)),
    # Ideogram 4: one stream of [text, image] layers, MRoPE; 128-dim tokens (2x2 patches of a 32-channel AE).
    "ideogram4": _family("ideogram4", "Ideogram4", {
        "image_model": "ideogram4", "in_channels": 128, "num_layers": 2, "num_attention_heads": 2,
        "attention_head_dim": 32, "intermediate_size": 128, "adaln_dim": 32, "llm_features_dim": TEXT,
        "rope_theta": 5000000, "mrope_section": [6, 5, 5], "norm_eps": 1e-5}, 128,
        "Ideogram4Transformer2DModel", ("layers",), overrides=UNPINNED_WIDTHS),   # its class pins the real widths
    # JoyImage: double blocks with one joint [image, references, text] attention; the rotary axes are fixed to
    # [16, 56, 56] (head dim 128), so 2 heads of 128. The Wan 2.1 latent format: (B, 16, 1, H, W).
    "joyimage": _family("joyimage", "JoyImage", {
        "image_model": "joyimage", "in_channels": 16, "hidden_size": 256, "patch_size": [1, 2, 2],
        "num_layers": 2, "num_attention_heads": 2, "text_dim": TEXT}, 16, "JoyImageTransformer3DModel",
        ("double_blocks",), frames=1),
    # Boogu: OmniGen2 refiners, dual-stream layers (joint [text, refs, image] + image self-attention), then
    # OmniGen2 single-stream layers; GQA.
    "boogu": _family("boogu", "Boogu", {
        "image_model": "boogu", "patch_size": 2, "in_channels": 16, "hidden_size": 64, "num_layers": 2,
        "num_double_stream_layers": 2, "num_refiner_layers": 2, "num_attention_heads": 2, "num_kv_heads": 1,
        "multiple_of": 16, "axes_dim_rope": (8, 12, 12), "axes_lens": (1024, 1664, 1664),
        "instruction_feat_dim": TEXT}, 16, "BooguTransformer2DModel",
        ("context_refiner", "noise_refiner", "ref_image_refiner", "double_stream_layers", "single_stream_layers")),
    # PixelDiT: joint [text, image] patch blocks, then pixel blocks (self-attention over the patch grid) on RGB;
    # patch 2 here (16 on the real model).
    "pixeldit": _family("pixeldit", "PixelDiTT2I", PIXELDIT, 3, "PixDiT_T2I", ("patch_blocks", "pixel_blocks")),
    # PiD (Pixel Diffusion Decoder, v1.5 as detected): PixelDiT plus an LQ-latent projection whose sigma-gated
    # features enter the patch stream before every other patch block and once before the pixel blocks; it
    # samples RGB from a Flux latent (conditioning's lq_latent, degrade_sigma). Its rotary reference grid is the
    # real one (2048 px / patch 16 = 128 patches), at patch 2.
    "pid": _family("pid", "PiD", {
        **PIXELDIT, "image_model": "pid", "lq_latent_channels": PID_LQ, "lq_hidden_dim": 16, "lq_num_res_blocks": 1,
        "lq_interval": 2, "sr_scale": 1, "latent_spatial_down_factor": PID_LQ_DOWN, "lq_latent_unpatchify_factor": 1,
        "lq_conv_padding_mode": "replicate", "lq_gate_per_token": False, "pit_lq_inject": True,
        "rope_ref_h": 128 * 2, "rope_ref_w": 128 * 2}, 3, "PidNet", ("patch_blocks", "pixel_blocks")),
    # Anima: the Cosmos Predict2 DiT (image_model "anima") whose text is the Qwen3 0.6B states (1024 wide) read
    # by a 6-layer, 1024-wide LLM adapter over T5 token ids; ComfyUI fixes the adapter's size, so it is the
    # real one (~130 M parameters, `fixed`) and only the DiT is thin.
    "anima": _family("anima", "Anima", {
        **COSMOS_PREDICT2, "image_model": "anima", "crossattn_emb_channels": ANIMA_TEXT}, 16, "Anima", ("blocks",),
        context_dim=ANIMA_TEXT, frames=1, fixed=("llm_adapter",)),
    # CogVideoX (1.0, rotary): joint [text, video] blocks, DDPM v-prediction.
    "cogvideox": _family("cogvideox", "CogVideoX_T2V", COGVIDEOX, 16, "CogVideoXTransformer3DModel", ("blocks",),
                         video=True, overrides=WITHOUT_ZSNR),
    # CogVideoX I2V: the first-frame latent as 16 concat channels.
    "cogvideox_i2v": _family("cogvideox_i2v", "CogVideoX_I2V", {**COGVIDEOX, "in_channels": 32}, 16,
                             "CogVideoXTransformer3DModel", ("blocks",), video=True, overrides=WITHOUT_ZSNR),
}
FAMILIES = tuple(FAMILY_SPECS)
SPECS.update(FAMILY_SPECS)


def missing(arch: str) -> str | None:
    """The ComfyUI config class `arch` needs and this host lacks (None when it has it)."""
    spec = SPECS[arch]
    return spec.requires if spec.config_class is None else None


def init_weights(module: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """Seeded init: matrices/kernels ~ N(0, std), norm scales 1, biases 0 (ComfyUI leaves them empty).

    Floating buffers too (MMDiT's pos_embed is torch.empty until a checkpoint fills it): left alone
    they hold whatever memory the allocator hands back, and sampling turns NaN after other tests. Only
    persistent ones, though: a checkpoint never fills non-persistent buffers, so the module computes them
    (Cosmos' rotary frequency ranges).
    """
    gen = torch.Generator().manual_seed(seed)
    computed = {f"{owner}.{name}" if owner else name for owner, m in module.named_modules()
                for name in m._non_persistent_buffers_set}
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
        for name, b in module.named_buffers():
            if b.is_floating_point() and name not in computed:
                b.copy_(torch.randn(b.shape, generator=gen) * std)
    return module


def host_config(config_class: type, unet_config: dict) -> dict:
    """`unet_config` with the fields this ComfyUI's DiT parameter class also requires (GuideKit's compat module)."""
    from guidekit.nodes.compat import complete_dit_config
    params = {"flux": "comfy.ldm.flux.model.FluxParams", "flux2": "comfy.ldm.flux.model.FluxParams",
              "chroma": "comfy.ldm.chroma.model.ChromaParams",
              "chroma_radiance": "comfy.ldm.chroma_radiance.model.ChromaRadianceParams",
              "hunyuan_video": "comfy.ldm.hunyuan_video.model.HunyuanVideoParams"}
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
    if spec.config_class is None:
        raise LookupError(f"this ComfyUI has no comfy.supported_models.{spec.requires} ({arch})")
    return seeded_patcher(spec.config_class, spec.unet_config, seed, std)


def latent_shape(arch: str, batch: int = 1, height: int = 16, width: int = 16,
                 frames: int | None = None) -> tuple[int, ...]:
    """The latent KSampler samples for `arch`: (B, C, H, W), or (B, C, T, H, W) for 5-D latent formats
    (video families, T = `frames` or the spec's default >= 2; 3-D-format image models with T = 1)."""
    spec = SPECS[arch]
    if spec.frames is None:
        return (batch, spec.latent_channels, height, width)
    return (batch, spec.latent_channels, frames or spec.frames, height, width)


def _clip_vision_output(**states):
    """A CLIP-vision output as ComfyUI's CLIPVisionEncode returns it (only the states a model reads)."""
    import comfy.clip_vision
    out = comfy.clip_vision.Output()
    for key, value in states.items():
        out[key] = value
    return out


def _family_conds(arch: str, gen: torch.Generator, batch: int, tokens: int, shape: tuple[int, ...]) -> dict:
    """The keys (beyond the text context) that `arch`'s model_base.extra_conds reads, seeded."""
    def rand(*size):
        return torch.randn(*size, generator=gen)
    spec = SPECS[arch]
    # ComfyUI's text encoders always set pooled_output (None where the model has no pooled input), and several
    # model_bases (Flux, HunyuanVideo, HiDream) read it as kwargs["pooled_output"].
    extra = {"pooled_output": rand(batch, spec.pooled_dim) if spec.pooled_dim is not None else None}
    if arch == "wan21_i2v":           # WanImageToVideo: first frame encoded, mask 0 where the frame is given
        image = torch.zeros(shape[:1] + (16,) + shape[2:])
        image[:, :, :1] = rand(batch, 16, 1, *shape[3:])
        mask = torch.ones(batch, 1, *shape[2:])
        mask[:, :, :1] = 0.0
        extra.update(concat_latent_image=image, concat_mask=mask,
                     clip_vision_output=_clip_vision_output(penultimate_hidden_states=rand(batch, 4, CLIP_VISION_WAN)))
    elif arch in ("hunyuan_video15", "hunyuan_image21"):   # ByT5 glyph tokens from the text encoder
        extra["conditioning_byt5small"] = rand(batch, 4, BYT5)
    elif arch == "hidream":           # Llama-3 hidden states of every layer, one picked per block
        extra["conditioning_llama3"] = rand(batch, LLAMA_LAYERS_HIDREAM, tokens, LLAMA_HIDREAM)
    elif arch == "cogvideox_i2v":     # CogVideoXImageToVideo: the first frame's latent, zeros after it
        image = torch.zeros(shape[:1] + (16,) + shape[2:])
        image[:, :, :1] = rand(batch, 16, 1, *shape[3:])
        extra["concat_latent_image"] = image
    elif arch == "anima":             # AnimaTEModel: the T5 ids (and weights) the LLM adapter embeds
        extra["t5xxl_ids"] = torch.randint(0, ANIMA_T5_VOCAB, (tokens,), generator=gen, dtype=torch.int)
        extra["t5xxl_weights"] = torch.ones(tokens)
    elif arch == "pid":               # PiDConditioning: the latent to decode and its degradation
        extra["lq_latent"] = rand(batch, PID_LQ, shape[-2] // PID_LQ_DOWN, shape[-1] // PID_LQ_DOWN)
        extra["degrade_sigma"] = torch.tensor([0.0])
    elif arch in ("mochi", "ltxv", "omnigen2", "boogu"):   # their forwards require the text attention mask (num_tokens)
        extra["attention_mask"] = torch.ones(batch, tokens, dtype=torch.long)   # as the T5 encoders give it
    return extra


def conditioning(arch: str, batch: int = 1, tokens: int = 8, seed: int = 0, height: int = 16, width: int = 16,
                 frames: int | None = None) -> list:
    """A ComfyUI CONDITIONING list with seeded embeddings of the width `arch` expects (and, for the DiT
    families, every other key its model_base.extra_conds reads; `height`/`width`/`frames` size image inputs)."""
    spec = SPECS[arch]
    gen = torch.Generator().manual_seed(seed)
    if arch in FAMILY_SPECS:
        context = torch.randn(batch, tokens, spec.context_dim, generator=gen)
        return [[context, _family_conds(arch, gen, batch, tokens, latent_shape(arch, batch, height, width, frames))]]
    extra = {}
    if spec.pooled_dim is not None:
        extra["pooled_output"] = torch.randn(batch, spec.pooled_dim, generator=gen)
    if arch == "flux":
        extra["guidance"] = 3.5
    return [[torch.randn(batch, tokens, spec.context_dim, generator=gen), extra]]


def sample(model, arch: str, seed: int = 0, steps: int = 4, cfg: float = 4.0, batch: int = 1,
           height: int = 16, width: int = 16, sampler: str = "euler", scheduler: str = "normal",
           frames: int | None = None, cond_seeds: tuple[int, int] = (1, 2), tokens: int = 8) -> torch.Tensor:
    """Sample a latent with comfy.sample.sample, exactly as KSampler does (positive and negative
    conditioning of `tokens` text tokens from `cond_seeds`)."""
    latent = torch.zeros(latent_shape(arch, batch, height, width, frames))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    positive = conditioning(arch, batch, tokens, seed=cond_seeds[0], height=height, width=width, frames=frames)
    negative = conditioning(arch, batch, tokens, seed=cond_seeds[1], height=height, width=width, frames=frames)
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


# Loadable DiT files for the Wan and Qwen-Image workflows: state dicts that ComfyUI's own loaders
# (UNETLoader, VAELoader) detect. Detection fixes what the file cannot say, so these are thin only where
# the detector reads the width from the weights: Wan's head count is dim // 128 (dim 128: one head) and
# its text width is 4096; Qwen-Image is always 24 heads of 128 over a 3584-wide text, so it is one block
# of the real width (380 M parameters, stored in float8 e4m3 like the fp8 file users run).

WAN_LOADABLE = {**WAN, "dim": 128, "num_heads": 1, "ffn_dim": 256, "text_dim": 4096}
QWEN_IMAGE_LOADABLE = {"image_model": "qwen_image", "in_channels": 64, "num_layers": 1}
WAN_VAE_DIM = 8                       # the real Wan 2.1 VAE is 96 wide; VAELoader reads the width
LOADABLE_FILES = {                    # file under the models folder -> what writes it
    "diffusion_models/guidekit-thin-wan21-t2v.safetensors": ("WAN21_T2V", WAN_LOADABLE, torch.float16),
    "diffusion_models/guidekit-thin-qwen-image.safetensors": ("QwenImage", QWEN_IMAGE_LOADABLE, torch.float8_e4m3fn),
}
WAN_VAE_FILE = "vae/guidekit-thin-wan21-vae.safetensors"


def write_diffusion_model(path: Path, class_name: str, unet_config: dict, dtype: torch.dtype,
                          seed: int = 0) -> Path:
    """A seeded diffusion model saved as its bare state dict, the way UNETLoader reads one."""
    patcher = seeded_patcher(getattr(comfy.supported_models, class_name), {**unet_config, **F32}, seed)
    state = {k: v.to(dtype) for k, v in patcher.model.diffusion_model.state_dict().items()}
    return _save(path, state, {"guidekit": f"thin {class_name}, seed {seed}, tests/thin_models.py"})


def write_wan_vae(path: Path, seed: int = 0) -> Path:
    """A seeded Wan 2.1 VAE (the Qwen-Image VAE too) at width WAN_VAE_DIM, as VAELoader reads one."""
    import comfy.ldm.wan.vae as wan_vae
    vae = wan_vae.WanVAE(dim=WAN_VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], dropout=0.0)
    return _save(path, init_weights(vae, seed, std=0.05).half().state_dict(),
                 {"guidekit": f"thin Wan 2.1 VAE, seed {seed}, tests/thin_models.py"})


def write_loadable_files(models: Path) -> None:
    """The Wan / Qwen-Image workflow files under a models folder (skipped when present)."""
    for name, (class_name, config, dtype) in LOADABLE_FILES.items():
        if not (models / name).exists() and getattr(comfy.supported_models, class_name, None) is not None:
            write_diffusion_model(models / name, class_name, config, dtype)
    if not (models / WAN_VAE_FILE).exists():
        write_wan_vae(models / WAN_VAE_FILE)


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
    """Every test asset under a models folder besides the checkpoint (each skipped when present)."""
    if not (models / "open_clip" / TINY_CLIP_FILE).exists():
        write_tiny_open_clip(models / "open_clip" / TINY_CLIP_FILE)
    if not (models / "guidekit_networks" / SEGMENTATION_FILE).exists():
        write_segmentation_network(models / "guidekit_networks" / SEGMENTATION_FILE)
    if not (models / "vae_approx" / "taesd_decoder.safetensors").exists():
        write_taesd(models / "vae_approx")
    if not (models / "guidekit_refiners" / REFINER_FILE).exists():
        write_refiner(models / "guidekit_refiners" / REFINER_FILE)
    write_loadable_files(models)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("checkpoint", "guidance-files"):
        sys.exit("usage: thin_models.py checkpoint OUT.safetensors | thin_models.py guidance-files MODELS_DIR")
    if sys.argv[1] == "checkpoint":
        print(write_checkpoint(Path(sys.argv[2])))
    else:
        write_guidance_files(Path(sys.argv[2]))
