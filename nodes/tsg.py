"""TSG node: the negative is the model with a noised time embedding (Sadat et al. 2025); for unconditional models."""
from __future__ import annotations

import comfy.patcher_extension
import torch
from comfy_api.latest import io

from ..guidance.tsg import perturbed_time_embedding
from . import registrar
from .base import GuideKitNode
from .common import range_inputs, sigma_override_inputs
from .layers import FAMILIES, family_of

NODE = "GuideKit TSG"
CATEGORY = "GuideKit/condition"
MARK = "guidekit_tsg"


NO_TIME_EMBEDDING = {   # family id → why no one module's output is its t_emb (TSG refuses the model)
    "flux": "Chroma and Chroma Radiance have no time embedding: their approximator network maps the timestep "
            "straight to every modulation vector",
    "ltxv": "this LTX model embeds time twice, for its blocks (adaln_single) and for their cross-attention "
            "modulation (prompt_adaln_single)",
    "cosmos_predict2": "its blocks' modulation reads two time tensors, the RMS-normed sinusoidal encoding and an "
                       "adaLN-LoRA MLP of it",
}


def time_embedder(model, node: str = NODE) -> str:
    """The path (under the diffusion model) of the module whose output is t_emb, or a clear error."""
    dm = model.get_model_object("diffusion_model")
    family = family_of(dm)
    path = family.time_embedder if family is not None else ""
    path = path(dm) if callable(path) else path
    try:
        module = dm.get_submodule(path) if path else None
    except AttributeError:
        module = None
    if isinstance(module, torch.nn.Module):
        return path
    reachable = ", ".join(f.name for f in FAMILIES if f.time_embedder)
    without = ", ".join(f.name for f in FAMILIES if not f.time_embedder)
    why = f" ({NO_TIME_EMBEDDING.get(family.id, 'no one module outputs its t_emb')})" if family is not None else ""
    raise ValueError(f"{node}: input 'model' is a {type(dm).__name__}, whose time embedding GuideKit cannot "
                     f"reach{why}; TSG supports {reachable} (Chroma and Chroma Radiance excepted), not {without}")


class TimeEmbeddingNoise:
    """An APPLY_MODEL wrapper: adds s·t^α·n to t_emb on the rows the TSG pass owns, nothing else."""

    def __init__(self, embedder: str, scale: float, alpha: float, seed: int):
        self.embedder, self.scale, self.alpha, self.seed = embedder, scale, alpha, seed

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                 **kwargs):
        call = (x, t, c_concat, c_crossattn, control, transformer_options)
        labels = transformer_options.get("cond_or_uncond") or []
        if transformer_options.get(MARK) is not self or 1 not in labels:
            return executor(*call, **kwargs)
        per_chunk = x.shape[0] // len(labels)
        rows = torch.cat([torch.arange(j * per_chunk, (j + 1) * per_chunk) for j, c in enumerate(labels) if c == 1])
        base = executor.class_obj
        ms = base.model_sampling
        t_unit = ms.timestep(t).float() / float(ms.timestep(ms.sigma_max))
        gen = registrar.step_generator(self.seed, t)

        def hook(module, inputs, out):
            mine = rows.to(out.device)
            # per-token timesteps (LTX-Video, Wan 2.2 under a denoise mask) come flattened, b·n rows: one noise
            # vector per sample, shared by its tokens (as where one t_emb is broadcast over them)
            per_sample = out.reshape(x.shape[0], -1, *out.shape[1:]).clone()
            noise = perturbed_time_embedding(torch.zeros_like(per_sample[mine][:, :1]), t_unit.to(out.device)[mine],
                                             self.scale, self.alpha, gen)
            per_sample[mine] += noise
            return per_sample.reshape(out.shape)

        handle = base.diffusion_model.get_submodule(self.embedder).register_forward_hook(hook)
        try:
            return executor(*call, **kwargs)
        finally:
            handle.remove()


class NoisedTime(registrar.Negative):
    """TSG's negative: the positive, with the time embedding noised on its rows by an APPLY_MODEL wrapper."""

    def __init__(self, noise: TimeEmbeddingNoise):
        self.noise = noise

    def setup(self, m) -> None:
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, MARK, self.noise)

    def batch(self, args: dict, row: int) -> tuple[list, dict]:
        options = dict(args["model_options"])
        options["transformer_options"] = {**options.get("transformer_options", {}), MARK: self.noise}
        return args["conds"][0], options


class TimestepGuidanceGK(GuideKitNode):
    COST = {"extra_passes": 0, "what": "the unconditional pass runs with a noised time embedding"}
    COMPARE = {"tsg": {}}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitTSG", display_name=NODE, category=CATEGORY,
            description="Time-step Guidance (Sadat et al. 2025): the sampler's unconditional pass runs on the positive "
                        "with its time embedding noised, t_emb + s·t^α·n; guidance weight = the sampler's cfg. For "
                        "unconditional models (and conditional ones without a usable negative).",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to guide (a patched copy is returned; this one is unchanged)."),
                io.Float.Input("noise_scale", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="s in t_emb + s·t^α·n (absolute, in the embedding's units)."),
                io.Float.Input("alpha", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="α: how the noise fades with time t ∈ [0, 1] (1 = pure noise)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the embedding noise n (drawn anew at every step)."),
                *range_inputs(),
                *sigma_override_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model.")],
        )

    @classmethod
    def execute(cls, model, noise_scale, alpha, seed, start_percent, end_percent, sigma_start=-1.0,
                sigma_end=-1.0) -> io.NodeOutput:
        embedder = time_embedder(model)
        active = registrar.sigma_range(model, NODE, start_percent, end_percent, sigma_start, sigma_end)
        m = model.clone()
        registrar.register(m, registrar.Guidance(NODE, NoisedTime(TimeEmbeddingNoise(embedder, noise_scale, alpha,
                                                                                      seed)), active, None,
                                                 replace_uncond=True))
        return io.NodeOutput(m)
