"""Flow refiner nodes: load a refiner, apply it to a LATENT or an IMAGE after sampling, train one in a graph.

The refiner (postprocess/, Zhao & Schwing 2025) is a rectified flow from generated samples to their
nearest real neighbours; applying it integrates dx/dt = v(x, t) from t = 0 to `strength`. Files live in
models/guidekit_refiners (safetensors; the pack's MNIST refiners in benchmarks/weights/refiners are
listed there too) and say what they were trained for: space, channels, resolution, latent format.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..postprocess import data, features, neighbours, ode
from ..postprocess.refiner import RefinerFile, load_refiner, save_refiner
from ..postprocess.train import TrainSettings, new_refiner, tensor_sha256, train_refiner
from . import files
from .base import GuideKitNode
from .demo_mnist import WEIGHTS_DIR
from .loss_networks import model_files

CATEGORY = "GuideKit/postprocess"
FOLDER = "guidekit_refiners"
RefinerType = io.Custom("GUIDEKIT_REFINER")
FEATURE_SPACES = ("samples", "open_clip mean-patch", "open_clip pooled")
log = logging.getLogger("guidekit")


def register_refiner_folder() -> None:
    """models/guidekit_refiners (+ the pack's demo refiners), safetensors only."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
    demo = WEIGHTS_DIR / "refiners"
    if demo.is_dir():
        folder_paths.add_model_folder_path(FOLDER, str(demo))
    folder_paths.folder_names_and_paths[FOLDER][1].add(".safetensors")


def load_refiner_file(name: str, node: str = "GuideKit Flow Refiner Loader") -> RefinerFile:
    path = files.model_file(FOLDER, name, node, "refiner_name")
    try:
        with torch.inference_mode(False):
            return load_refiner(path)
    except ValueError as e:
        raise ValueError(f"{node}: input 'refiner_name' = {name!r}: {e}") from e
    except Exception as e:                      # the deserializer's own errors: empty, truncated, not safetensors
        raise files.unreadable(node, "refiner_name", name, e) from e


def solver_inputs() -> list:
    return [io.Combo.Input("solver", options=list(ode.SOLVERS), default="euler",
                           tooltip="ODE solver. euler: 1 refiner pass per step; heun: 2 (more accurate); dopri5: "
                                   "adaptive (the paper's choice), passes vary, 'steps' sets the first step."),
            io.Int.Input("steps", default=8, min=1, max=200,
                         tooltip="Solver steps from t = 0 to 'strength'. 8 euler steps cost about 8 passes of the "
                                 "small refiner network: about 10 % of a 20-step CFG run on the MNIST demo."),
            io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01,
                           tooltip="How far along the flow to go: 1 = all the way to the real-data neighbourhood "
                                   "(the paper), smaller = a partial correction, 0 = unchanged.")]


def run_refiner(rf: RefinerFile, x: torch.Tensor, solver: str, steps: int, strength: float) -> torch.Tensor:
    """Integrate the refiner's flow on x (N, ...) on ComfyUI's device, in float32."""
    device = comfy.model_management.get_torch_device()
    with torch.inference_mode(False), torch.no_grad():
        rf.refiner.to(device)
        out = ode.refine(rf.refiner, x.to(device, torch.float32).clone(), strength, steps, solver)
    return out.to(comfy.model_management.intermediate_device())


def check_shape(rf: RefinerFile, x: torch.Tensor, node: str, input_name: str) -> None:
    expect = rf.sample_shape
    if len(expect) != x.dim() - 1 or expect[0] != x.shape[1]:
        what = {"latent": f"{expect[0]}-channel latents", "pixel": "RGB images"}.get(rf.space, f"samples {expect}")
        fmt = f" ({rf.latent_format})" if rf.latent_format else ""
        raise ValueError(f"{node}: the refiner was trained on {what}{fmt} shaped {tuple(expect)}, input '{input_name}' "
                         f"is shaped {tuple(x.shape[1:])}; use a refiner trained for this model's latent format "
                         "(train one with GuideKit Train Flow Refiner or `python -m guidekit.cli.train_refiner`)")
    if tuple(x.shape[2:]) != tuple(expect[1:]):
        log.info("%s: refining %s at %s, the refiner was trained at %s", node, input_name, tuple(x.shape[2:]),
                 tuple(expect[1:]))


class FlowRefinerLoaderGK(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitFlowRefinerLoader", display_name="GuideKit Flow Refiner Loader", category=CATEGORY,
            description="Loads a flow refiner (Zhao & Schwing 2025) from models/guidekit_refiners: a small network "
                        "trained to carry generated samples to their nearest real neighbours. Its file records the "
                        "space (latent / pixel), channels, resolution and latent format it was trained for.",
            inputs=[io.Combo.Input("refiner_name", options=model_files(FOLDER) or [f"(put files in models/{FOLDER})"],
                                   tooltip=f"A refiner (.safetensors) in ComfyUI/models/{FOLDER}.")],
            outputs=[RefinerType.Output(display_name="refiner", tooltip="The refiner and what it was trained for.")],
        )

    @classmethod
    def execute(cls, refiner_name) -> io.NodeOutput:
        return io.NodeOutput(load_refiner_file(refiner_name))


class FlowRefineLatentGK(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitFlowRefineLatent", display_name="GuideKit Flow Refine Latent", category=CATEGORY,
            description="Postprocesses sampled latents with a flow refiner trained in this model's latent space: "
                        "integrates its ODE for 'steps' steps. Put it between KSampler and VAE Decode.",
            inputs=[RefinerType.Input("refiner",
                                      tooltip="A latent-space refiner trained for this model (Flow Refiner Loader)."),
                    io.Latent.Input("samples", tooltip="Latents from a sampler."),
                    *solver_inputs()],
            outputs=[io.Latent.Output(tooltip="The refined latents (other latent fields kept).")],
        )

    @classmethod
    def execute(cls, refiner, samples, solver, steps, strength) -> io.NodeOutput:
        node = "GuideKit Flow Refine Latent"
        if refiner.space != "latent":
            raise ValueError(f"{node}: input 'refiner' was trained on {refiner.space} samples, not latents; use "
                             "GuideKit Flow Refine Image after VAE Decode")
        x = samples["samples"]
        check_shape(refiner, x, node, "samples")
        out = dict(samples)
        out["samples"] = run_refiner(refiner, x, solver, steps, strength)
        return io.NodeOutput(out)


class FlowRefineImageGK(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitFlowRefineImage", display_name="GuideKit Flow Refine Image", category=CATEGORY,
            description="Postprocesses images with a flow refiner trained in pixel space: integrates its ODE for "
                        "'steps' steps. Put it after VAE Decode.",
            inputs=[RefinerType.Input("refiner", tooltip="A pixel-space refiner (Flow Refiner Loader)."),
                    io.Image.Input("image", tooltip="Decoded images (an alpha channel is dropped)."), *solver_inputs()],
            outputs=[io.Image.Output(tooltip="The refined images, clamped to [0, 1].")],
        )

    @classmethod
    def execute(cls, refiner, image, solver, steps, strength) -> io.NodeOutput:
        node = "GuideKit Flow Refine Image"
        if refiner.space != "pixel":
            raise ValueError(f"{node}: input 'refiner' was trained on {refiner.space} samples, not images; use "
                             "GuideKit Flow Refine Latent before VAE Decode")
        x = image[..., :3].movedim(-1, 1)
        check_shape(refiner, x, node, "image")
        return io.NodeOutput(run_refiner(refiner, x, solver, steps, strength).clamp(0, 1).movedim(1, -1))


# ------------------------------------------------------------------------------------------------ training

def _real_images(real_images, real_folder: str, size: tuple[int, int], node: str) -> torch.Tensor:
    parts = []
    if real_images is not None:
        parts.append(data.center_crop_resize(real_images[..., :3].movedim(-1, 1).float(), size))
    if real_folder.strip():
        folder = files.input_subfolder(real_folder, node, "real_folder")
        images = files.files_inside(folder, data.IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"{node}: input 'real_folder' = {real_folder!r} holds no images "
                             f"({', '.join(sorted(data.IMAGE_SUFFIXES))})")
        try:
            parts.append(data.load_images(images, size))
        except (OSError, ValueError) as e:
            raise ValueError(f"{node}: input 'real_folder' = {real_folder!r}: an image cannot be read ({e})") from e
    if not parts:
        raise ValueError(f"{node}: no real data; connect 'real_images' or set 'real_folder' (a folder of images, "
                         "relative to ComfyUI's input folder)")
    return torch.cat(parts)


def _search_features(space: str, open_clip, generated_images, real_images, generated, real, node):
    if space == "samples":
        return features.raw_features(generated), features.raw_features(real)
    if open_clip is None:
        raise ValueError(f"{node}: input 'neighbour_space' = {space!r} needs input 'open_clip' "
                         "(GuideKit OpenCLIP Loader)")
    pool = space.split()[-1]
    visual = open_clip.model.visual.to(comfy.model_management.get_torch_device())
    try:
        return tuple(features.open_clip_features(visual, x, open_clip.image_size, open_clip.mean, open_clip.std, pool)
                     for x in (generated_images, real_images))
    except ValueError as e:
        raise ValueError(f"{node}: input 'neighbour_space': {e}") from e


def _output_path(prefix: str) -> Path:
    """The next free <prefix>_NNNNN.safetensors in the first models/guidekit_refiners folder."""
    folder = Path(folder_paths.get_folder_paths(FOLDER)[0])
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(c for c in prefix.strip() if c.isalnum() or c in "-_") or "guidekit_refiner"
    i = 1
    while (folder / f"{stem}_{i:05d}.safetensors").exists():
        i += 1
    return folder / f"{stem}_{i:05d}.safetensors"


class TrainFlowRefinerGK(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitTrainFlowRefiner", display_name="GuideKit Train Flow Refiner", category=CATEGORY,
            description="Trains a flow refiner for small runs inside a graph: each generated sample flows to a random "
                        "one of its k nearest real samples (FAISS). With a VAE it trains in that latent space. "
                        "Saves to models/guidekit_refiners. For large runs use `python -m guidekit.cli.train_refiner`.",
            inputs=[io.Image.Input("generated", optional=True, tooltip="Generated images (decoded samples)."),
                    io.Latent.Input("generated_latent", optional=True,
                                    tooltip="Generated latents, straight from the sampler (instead of 'generated'; "
                                            "needs the VAE for the real images)."),
                    io.Image.Input("real_images", optional=True,
                                   tooltip="Real images (resized to the generated size)."),
                    io.String.Input("real_folder", default="", optional=True,
                                    tooltip="A folder of real images inside ComfyUI/input, named relative to it."),
                    io.Vae.Input("vae", optional=True,
                                 tooltip="Train in this VAE's latent space (the refiner then goes before VAE Decode)."),
                    io.Custom("GUIDEKIT_OPEN_CLIP").Input("open_clip", optional=True,
                                                         tooltip="Encoder for the open_clip neighbour spaces."),
                    io.Combo.Input("neighbour_space", options=list(FEATURE_SPACES), default="samples",
                                   tooltip="Where neighbours are searched: the training samples themselves (pixels "
                                           "or latents), or open_clip image features (mean of patch tokens: the "
                                           "paper's best space; pooled embedding)."),
                    io.Int.Input("k", default=20, min=1, max=1000, tooltip="Neighbours per sample (paper: 20, 40)."),
                    io.Int.Input("iterations", default=2000, min=1, max=1_000_000,
                                 tooltip="Training steps (AdamW, EMA 0.999)."),
                    io.Int.Input("batch_size", default=64, min=1, max=8192,
                                 tooltip="(generated, neighbour) pairs per step."),
                    io.Float.Input("learning_rate", default=3e-4, min=1e-6, max=1.0, step=1e-5,
                                   tooltip="AdamW learning rate; data are standardised, "
                                           "so one value fits pixels and latents."),
                    io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                                 tooltip="Seeds the pairing, times and batches: same inputs, same refiner."),
                    io.String.Input("filename_prefix", default="guidekit_refiner",
                                    tooltip="Saved as models/guidekit_refiners/<prefix>_NNNNN.safetensors.")],
            outputs=[RefinerType.Output(display_name="refiner",
                                        tooltip="The trained refiner (EMA weights), also saved.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, k, iterations, batch_size, learning_rate, seed, filename_prefix, generated=None,
                generated_latent=None, real_images=None, real_folder="", vae=None, open_clip=None,
                neighbour_space="samples") -> io.NodeOutput:
        node = "GuideKit Train Flow Refiner"
        if (generated is None) == (generated_latent is None):
            raise ValueError(f"{node}: connect exactly one of 'generated' (images) and 'generated_latent'")
        if generated_latent is not None and vae is None:
            raise ValueError(f"{node}: input 'generated_latent' needs input 'vae' to encode the real images")
        with torch.inference_mode(False), torch.no_grad():       # data: VAE and encoder weights are inference tensors
            gen_images = generated[..., :3].movedim(-1, 1).float().clone() if generated is not None else None
            if gen_images is None and neighbour_space != "samples":
                gen_images = vae.decode(generated_latent["samples"]).movedim(-1, 1).float().clone()
            size = tuple((gen_images if gen_images is not None else vae.decode(generated_latent["samples"][:1])
                          .movedim(-1, 1)).shape[-2:])
            real_imgs = _real_images(real_images, real_folder, size, node).clone()
            if vae is not None:
                gen = (generated_latent["samples"] if generated_latent is not None
                       else vae.encode(gen_images.movedim(1, -1))).float().clone()
                real = vae.encode(real_imgs.movedim(1, -1)).float().clone()
                space = "latent"
            else:
                gen, real, space = gen_images, real_imgs, "pixel"
            if k > real.shape[0]:
                raise ValueError(f"{node}: input 'k' = {k} is more than the {real.shape[0]} real samples")
            q, db = _search_features(neighbour_space, open_clip, gen_images, real_imgs, gen, real, node)
            nbrs = neighbours.top_k(q, db, k)
        with torch.inference_mode(False):
            refiner = new_refiner(real)
            bar = comfy.utils.ProgressBar(iterations)

            def on_step(step: int, loss: float) -> None:
                comfy.model_management.throw_exception_if_processing_interrupted()
                bar.update_absolute(step, iterations)

            settings = TrainSettings(iterations=iterations, batch_size=batch_size, lr=learning_rate, seed=seed,
                                     checkpoint_every=0)
            result = train_refiner(refiner, gen, real, nbrs, settings, device=comfy.model_management.get_torch_device(),
                                   on_step=on_step)
            path = save_refiner(_output_path(filename_prefix), result.refiner, space, tuple(gen.shape[1:]),
                                neighbour_space=neighbour_space, k=k, iterations=iterations, seed=seed,
                                batch_size=batch_size, lr=learning_rate, train_seconds=round(result.seconds, 1),
                                command=f"{node} (ComfyUI)", final_loss=result.losses[-1],
                                data_sha256={"generated": tensor_sha256(gen), "real": tensor_sha256(real)})
            log.info("%s: trained %d iterations in %.1f s (loss %.4g → %.4g); saved %s", node, iterations,
                     result.seconds, result.losses[0], result.losses[-1], path)
            loaded = load_refiner(path)
        return io.NodeOutput(loaded)
