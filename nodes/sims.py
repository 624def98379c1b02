"""SIMS training node: fine-tune a LoRA of the model on the model's own samples (Alemohammad et al. 2024).

The result is the negative model of SIMS guidance, D_base + ω·(D_base − D_sims): connect it to GuideKit
Autoguidance as the weak model with w = 1 + ω. The LoRA uses ComfyUI's own weight adapters (the ones its
Train LoRA node uses), so ComfyUI's Save LoRA node can write it; the loop trains each image with its own
conditioning row (ComfyUI's Train LoRA shares one caption per batch).
"""
from __future__ import annotations

import comfy.model_management
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import torch
from comfy.weight_adapter import LoRAAdapter
from comfy_api.latest import io

from ..guidance.sims import denoising_loss
from . import compat
from .autograd import InPlaceSafe, autograd_ready
from .base import GuideKitNode

NODE = "GuideKit SIMS LoRA"
CATEGORY = "GuideKit/dual model"


def add_lora(patcher, rank: int, seed: int) -> dict[str, torch.nn.Parameter]:
    """Trainable LoRA adapters on every matrix/conv weight of `patcher` (a clone); returns their parameters."""
    params = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in patcher.model.named_modules():
            weight = getattr(module, "weight", None)
            if hasattr(module, "weight_function") and weight is not None and weight.ndim >= 2:
                adapter = LoRAAdapter.create_train(weight, rank=rank, alpha=float(rank))
                for pname, p in adapter.named_parameters():
                    if p.requires_grad:
                        params[f"{name}.{pname}"] = p
                patcher.add_weight_wrapper(f"{name}.weight", adapter)
            elif hasattr(module, "weight_function") and weight is not None:
                patcher.add_weight_wrapper(f"{name}.weight", fresh_copy)
            if hasattr(module, "bias_function") and getattr(module, "bias", None) is not None:
                patcher.add_weight_wrapper(f"{name}.bias", fresh_copy)
    return params


def fresh_copy(weight: torch.Tensor) -> torch.Tensor:
    """Weights loaded inside ComfyUI's inference mode cannot be saved for backward (norm layers save their
    scale): hand the layers a normal copy. Values are unchanged, so sampling is unaffected."""
    return weight.clone()


def model_conds(base_model, positive: list, latents: torch.Tensor) -> list[dict]:
    """The positive conditioning as the model's own keyword inputs (what calc_cond_batch would give it)."""
    conds = comfy.sampler_helpers.convert_cond(positive)
    return comfy.samplers.encode_model_conds(base_model.extra_conds, conds, latents, latents.device, "positive")


def batch_inputs(conds: list[dict], picks: torch.Tensor, total: int, device) -> dict:
    """Keyword inputs for the rows `picks` of a dataset of `total` images (rows repeat as in sampling)."""
    if len(conds) != 1:
        raise ValueError(f"{NODE}: input 'positive' has {len(conds)} entries; give one conditioning whose rows "
                         "match the latents (e.g. the one that generated them)")
    out = {}
    for key, value in conds[0]["model_conds"].items():
        rows = comfy.utils.repeat_to_batch_size(value.cond, total)[picks]
        out[key] = value._copy_with(rows).process_cond(batch_size=len(picks), device=device).cond
    return out


def train_lora(model, latents: torch.Tensor, positive: list, steps: int, batch_size: int, learning_rate: float,
               rank: int, seed: int, progress=None):
    """A clone of `model` carrying a LoRA fine-tuned on (latents, positive); returns (clone, parameters, losses)."""
    m = model.clone()
    with compat.gradients():
        params = add_lora(m, rank, seed)
        comfy.model_management.load_models_gpu([m], force_full_load=True)
        autograd_ready(m.model.diffusion_model)    # parameters outside ComfyUI's layers (e.g. Flux RMSNorm scales)
        base = m.model
        device = m.load_device
        data = base.process_latent_in(latents.clone().to(device, torch.float32))
        conds = model_conds(base, positive, data)
        ms = base.model_sampling
        optimizer = torch.optim.AdamW(params.values(), lr=learning_rate)
        gen = torch.Generator().manual_seed(seed)
        losses = []
        backward = InPlaceSafe(NODE)
        for step in range(steps):
            picks = torch.randperm(data.shape[0], generator=gen)[:batch_size]
            clean = data[picks]
            u = torch.rand(len(picks), generator=gen)
            sigma = torch.stack([torch.as_tensor(float(ms.percent_to_sigma(float(v)))) for v in u]).to(device)
            noise = torch.randn(clean.shape, generator=gen).to(device)
            noisy = ms.noise_scaling(sigma, noise, clean)
            inputs = batch_inputs(conds, picks, data.shape[0], device)

            def forward_backward() -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                with backward.saving():
                    loss = denoising_loss(base.apply_model(noisy, sigma, **inputs).float(), clean, sigma)
                loss.backward()
                return loss
            loss = backward.run(forward_backward)
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, steps)
    for p in params.values():
        p.requires_grad_(False)
    return m, params, losses


class SIMSLoRAGK(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitSIMSLoRA", display_name=NODE, category=CATEGORY,
            description="SIMS step 3: fine-tune a LoRA of the model on its own samples (latents from a KSampler run "
                        "of the same model, with the conditioning that made them). Connect the output to GuideKit "
                        "Autoguidance as 'weak_model', w = 1 + ω.",
            inputs=[
                io.Model.Input("model", tooltip="The base model (the one that generated the latents)."),
                io.Latent.Input("latents", tooltip="The synthetic set: the model's own samples."),
                io.Conditioning.Input("positive", tooltip="The conditioning that generated the latents; its rows "
                                                          "repeat over the batch as in sampling."),
                io.Int.Input("steps", default=200, min=1, max=100000,
                             tooltip="Optimizer steps (budget = steps × batch_size images)."),
                io.Int.Input("batch_size", default=32, min=1, max=4096, tooltip="Latents per training step."),
                io.Float.Input("learning_rate", default=1e-3, min=1e-7, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate of the LoRA."),
                io.Int.Input("rank", default=8, min=1, max=256, tooltip="LoRA rank (alpha = rank)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seeds noise, times and batches: same inputs, same LoRA."),
            ],
            outputs=[io.Model.Output(display_name="sims_model", tooltip="The model with the self-trained LoRA."),
                     io.Custom("LORA_MODEL").Output(display_name="lora", tooltip="The LoRA, for ComfyUI's Save LoRA."),
                     io.Float.Output(display_name="final_loss", tooltip="Mean loss of the last 10% of steps.")],
        )

    @classmethod
    def execute(cls, model, latents, positive, steps, batch_size, learning_rate, rank, seed) -> io.NodeOutput:
        samples = latents["samples"]
        if samples.shape[0] < 2:
            raise ValueError(f"{NODE}: input 'latents' holds {samples.shape[0]} image; SIMS fine-tunes on a synthetic "
                             "set, generate a batch of the model's own samples first")
        bar = comfy.utils.ProgressBar(steps)
        m, params, losses = train_lora(model, samples, positive, steps, batch_size, learning_rate, rank, seed,
                                       progress=lambda done, total: bar.update_absolute(done, total))
        tail = losses[-max(1, len(losses) // 10):]
        return io.NodeOutput(m, {k: v.detach().clone() for k, v in params.items()}, sum(tail) / len(tail))
