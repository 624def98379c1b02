"""ICG node: the negative is the model under a condition independent of the image (Sadat et al. 2025)."""
from __future__ import annotations

import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

from ..guidance.icg import derangement, gaussian_condition, random_rows, shuffled_tokens
from . import registrar
from .base import GuideKitNode
from .common import range_inputs, sigma_override_inputs

NODE = "GuideKit ICG"
CATEGORY = "GuideKit/condition"
MODES = ["gaussian", "shuffled tokens", "other batch row", "pool"]
TOKENS, POOLED = "c_crossattn", "y"


def _rows(tensor: torch.Tensor, count: int) -> torch.Tensor:
    return comfy.utils.repeat_to_batch_size(tensor, count)


class IndependentCondition(registrar.Negative):
    """ICG's negative: ŷ built for each step from the positive conditioning (or the pool) of that step."""

    def __init__(self, mode: str, seed: int, pool: list | None):
        self.mode, self.seed, self.pool = mode, seed, pool
        self._pool_conds: dict | None = None

    def pool_tensors(self, args: dict) -> dict:
        """The pool's token (and pooled) embeddings, all entries stacked as rows."""
        if self._pool_conds is None or self._pool_conds["device"] != args["input"].device:
            x = args["input"]
            conds = comfy.samplers.encode_model_conds(args["model"].extra_conds,
                                                      comfy.sampler_helpers.convert_cond(self.pool), x, x.device,
                                                      "negative")
            out = {"device": x.device}
            for key in (TOKENS, POOLED):
                parts = [c["model_conds"][key].cond for c in conds if key in c["model_conds"]]
                if len(parts) != len(conds):
                    continue
                if len({p.shape[1:] for p in parts}) > 1:
                    raise ValueError(f"{NODE}: the prompts of input 'pool' encode to different lengths "
                                     f"({sorted({p.shape[1] for p in parts})} tokens); keep every pool prompt "
                                     "under 75 tokens so they stack")
                out[key] = torch.cat(parts)
            self._pool_conds = out
        return self._pool_conds

    def batch(self, args: dict, row: int) -> tuple[list, dict]:
        x, gen = args["input"], registrar.step_generator(self.seed, args["sigma"])
        rows = x.shape[0]
        pool = self.pool_tensors(args) if self.mode == "pool" else None
        picks = random_rows(pool[TOKENS], rows, gen) if pool is not None else None
        order = derangement(rows, gen) if self.mode == "other batch row" and rows > 1 else None
        negative = []
        for entry in args["conds"][0]:
            conds = dict(entry["model_conds"])
            if TOKENS not in conds:
                raise ValueError(f"{NODE}: this model's conditioning has no cross-attention tokens "
                                 f"({sorted(conds)}); ICG needs a text- or class-conditional model")
            for key in (TOKENS, POOLED):
                if key not in conds or not hasattr(conds[key], "cond"):
                    continue
                emb = _rows(conds[key].cond, rows)
                if self.mode == "gaussian":
                    new = gaussian_condition(emb, gen)
                elif self.mode == "shuffled tokens":
                    if key == POOLED:
                        continue
                    new = shuffled_tokens(emb, gen)
                elif self.mode == "other batch row":
                    if conds[key].cond.shape[0] < 2:
                        raise ValueError(f"{NODE}: input 'mode' is 'other batch row' but the positive conditioning "
                                         "has one row (one prompt for the whole batch), so every image would get "
                                         "its own condition back; use 'gaussian' or 'pool', "
                                         "or one prompt/class per image")
                    new = emb[order.to(emb.device)]
                else:
                    if key not in pool:
                        continue
                    new = pool[key][picks.to(pool[key].device)].to(emb)
                conds[key] = conds[key]._copy_with(new)
            negative.append({**entry, "model_conds": conds})
        return negative, args["model_options"]


class IndependentConditionGuidanceGK(GuideKitNode):
    COST = {"extra_passes": 0, "what": "the unconditional pass runs on a random condition instead"}
    COMPARE = {"icg": {}}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitICG", display_name=NODE, category=CATEGORY,
            description="Independent Condition Guidance (Sadat et al. 2025): the sampler's unconditional pass runs "
                        "on a condition independent of the image instead, so CFG works on models trained without "
                        "condition dropout. Guidance weight = the sampler's cfg; its negative prompt is unused.",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to guide (a patched copy is returned; this one is unchanged)."),
                io.Combo.Input("mode", options=MODES, default=MODES[0],
                               tooltip="ŷ: 'gaussian' noise at the embedding's mean/std (paper's best), 'shuffled "
                                       "tokens' (token order permuted), 'other batch row' (each image takes "
                                       "another image's prompt/class), 'pool' (a random row of 'pool' each step)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the random condition (drawn anew at every step)."),
                *range_inputs(),
                io.Conditioning.Input("pool", optional=True,
                                      tooltip="Conditions to draw ŷ from in 'pool' mode: random prompts (combine "
                                              "several), or all classes."),
                *sigma_override_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model.")],
        )

    @classmethod
    def execute(cls, model, mode, seed, start_percent, end_percent, pool=None, sigma_start=-1.0,
                sigma_end=-1.0) -> io.NodeOutput:
        if mode == "pool" and not pool:
            raise ValueError(f"{NODE}: input 'mode' is 'pool' but input 'pool' is not connected; connect a "
                             "conditioning holding the prompts (or classes) to draw from")
        active = registrar.sigma_range(model, NODE, start_percent, end_percent, sigma_start, sigma_end)
        m = model.clone()
        registrar.register(m, registrar.Guidance(NODE, IndependentCondition(mode, seed, pool), active, None,
                                                 replace_uncond=True))
        return io.NodeOutput(m)
