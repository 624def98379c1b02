"""Compare node: one seed through several guidance methods inside the graph, as a labelled grid.

The in-graph twin of `python -m guidekit.cli.compare`: the same method table (the node classes' COMPARE
entries, nodes/catalog.py), each GuideKit node at its default settings applied to a clone of the model,
sampled as KSampler samples, decoded, labelled with its seconds per step.
"""
from __future__ import annotations

import json
import time

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image

from ..postprocess.grid import add_ratios, labelled_grid, method_label
from .base import GuideKitNode

NODE = "GuideKit Compare"


def method_table() -> dict[str, dict]:
    from .catalog import compare_methods  # the catalog lists this node too: import when called
    return compare_methods()


def parse_methods(text: str) -> list[str]:
    chosen = [m.strip().lower() for m in text.replace(";", ",").split(",") if m.strip()]
    unknown = [m for m in chosen if m not in method_table()]
    if not chosen or unknown:
        raise ValueError(f"{NODE}: input 'methods' names {unknown or 'nothing'}; write a comma list of "
                         f"{', '.join(method_table())}")
    return chosen


def guided_model(model, method: str):
    """The model through the method's own node at its defaults (and the method's overrides)."""
    from .catalog import by_id
    spec = method_table()[method]
    if spec["node"] is None:
        return model
    return by_id()[spec["node"]].run(model=model, **spec["inputs"])[0]


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))


class CompareGK(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitCompare", display_name=NODE, category="GuideKit",
            description="Samples one seed with each chosen guidance method (each GuideKit node at its defaults) and "
                        "returns a labelled grid with every method's seconds per step, to choose a method.",
            inputs=[
                io.Model.Input("model", tooltip="The model; each method patches its own copy."),
                io.Conditioning.Input("positive", tooltip="The prompt."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (CFG's unconditional pass)."),
                io.Latent.Input("latent_image", tooltip="The starting latent, e.g. Empty Latent Image (batch 1)."),
                io.Vae.Input("vae", tooltip="Decodes each method's result for the grid."),
                io.String.Input("methods", default="cfg,pag,seg,sag",
                                tooltip=f"Comma list of methods: {', '.join(method_table())} "
                                        "('pag-only' = PAG at cfg 1)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="One seed for every method."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps of every method."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale (SD1.5 5-7, SDXL 5-7, Flux dev 1 with its guidance node)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="The sampler of every method."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="The scheduler of every method."),
            ],
            outputs=[io.Image.Output("grid", display_name="grid",
                                     tooltip="One row: each method's image under its name and s/step."),
                     io.Image.Output("images", display_name="images",
                                     tooltip="The methods' images as a batch, in the order given."),
                     io.String.Output("report", display_name="report",
                                      tooltip="JSON: method, seconds, seconds per step, ratio to CFG.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, vae, methods, seed, steps, cfg, sampler_name,
                scheduler) -> io.NodeOutput:
        chosen = parse_methods(methods)
        latent = latent_image["samples"]
        if latent.shape[0] != 1:
            raise ValueError(f"{NODE}: input 'latent_image' has batch {latent.shape[0]}; give one latent (batch 1)")
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed)
        bar = comfy.utils.ProgressBar(steps * len(chosen))

        def step_done(*_):
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update(1)

        comfy.sample.sample(guided_model(model, chosen[0]), noise, 1, cfg, sampler_name, scheduler, positive,
                            negative, latent, seed=seed, disable_pbar=True)   # untimed: loads the model
        rows, images = [], []
        for method in chosen:
            guided = guided_model(model, method)
            method_cfg = method_table()[method]["cfg"] if method_table()[method]["cfg"] is not None else cfg
            t0 = time.perf_counter()
            samples = comfy.sample.sample(guided, noise, steps, method_cfg, sampler_name, scheduler, positive,
                                          negative, latent, seed=seed, callback=step_done, disable_pbar=True)
            seconds = time.perf_counter() - t0
            image = vae.decode(samples)
            images.append(image.reshape(-1, *image.shape[-3:])[:1])
            rows.append({"method": method, "cfg": method_cfg, "seconds": seconds, "seconds_per_step": seconds / steps})
        add_ratios(rows)
        grid = labelled_grid([(method_label(r["method"], r["seconds_per_step"], r["vs_cfg"]), to_pil(im[0]))
                              for r, im in zip(rows, images)])
        grid_tensor = torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255.0)[None]
        return io.NodeOutput(grid_tensor, torch.cat(images), json.dumps(rows))   # one latent: equal sizes
