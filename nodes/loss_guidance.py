"""GuideKit Loss Guidance: FreeDoM / UG / LGD-MC / MPGD / DPS on any sampler, with Shen et al.'s improvements.

The patch wraps the guider's predict_noise (CFG and every other patch included): at each active step it
re-runs that prediction with gradients enabled (outside ComfyUI's inference mode), decodes x0 with the VAE
(or a cheap TAESD decoder), evaluates the loss chain on randomly augmented copies, and hands the sampler
the denoised image that makes its step the method's guided step (guidance/loss_guidance.py).
Gradient 'fast': the same value of x0, but its graph holds the conditional row only (a calc_cond_batch
wrapper runs the other rows of CFG without gradients on the CPU, where a row costs its FLOPs; on accelerators,
where a second row in the same call is nearly free (benchmarks/gpu.py), it keeps the batched call and detaches
the other rows), and x0 is decoded at the smallest latent size that still covers the loss networks' input size.
"""
from __future__ import annotations

import logging
import math

import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension
import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..guidance.augment import POLICIES, augment, mean_over_copies
from ..guidance.loss_guidance import METHODS, STEP_RULES, LossGuidanceConfig, loss_guided_denoise
from ..guidance.loss_methods import LOSS_METHODS
from . import compat
from .autograd import InPlaceSafe, autograd_ready
from .base import GuideKitNode
from .loss_terms import CATEGORY, LossType
from .registrar import sigma_range, step_generator

NODE = "GuideKit Loss Guidance"
WRAPPER_KEY = "guidekit_loss_guidance"
GRADIENTS = ("exact", "fast")


def parse_policy(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.replace(";", ",").split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"{NODE}: input 'augmentations' names {unknown}; use a comma list of {', '.join(POLICIES)}")
    return names


def loss_latent_size(latent_hw: tuple[int, int], ratio: int, sizes: list) -> tuple[int, int] | None:
    """The smallest latent (h, w), same aspect, whose decoded image still covers every loss network's input
    size; None = keep the latent (a loss that uses every pixel, or the image is already that small)."""
    if not sizes or any(size is None for size in sizes):
        return None
    h, w = latent_hw
    factor = max(max(size[0] for size in sizes) / (h * ratio), max(size[1] for size in sizes) / (w * ratio))
    if factor >= 1:
        return None
    return max(1, math.ceil(h * factor)), max(1, math.ceil(w * factor))


def decoder(vae, base_model, node: str, sizes: list | None = None):
    """x0 latent (the model's space) → images (B, 3, H, W) in [0, 1], differentiable (no clamp).

    `sizes` (fast gradient): the loss networks' input sizes; the latent is first shrunk (antialiased) to the
    smallest size whose image covers them, as the networks would shrink the image anyway.
    The VAE is loaded here, before the gradient pass, so loading it cannot offload the diffusion model
    while its graph is alive."""
    comfy.model_management.load_models_gpu([vae.patcher])
    autograd_ready(vae.first_stage_model)
    ratio = int(vae.spacial_compression_decode())           # pixels per latent cell (ComfyUI's VAE, both hosts)

    def decode(latent: torch.Tensor) -> torch.Tensor:
        target = loss_latent_size(tuple(latent.shape[-2:]), ratio, sizes) if sizes and latent.ndim == 4 else None
        if target is not None:
            latent = F.interpolate(latent, size=target, mode="bilinear", align_corners=False, antialias=True)
        z = base_model.process_latent_out(latent).to(vae.device, vae.vae_dtype)
        out = vae.first_stage_model.decode(z).float()
        if out.ndim != 4 or out.shape[1] not in (1, 3):
            raise ValueError(f"{node}: the VAE decodes to {tuple(out.shape)}; loss guidance needs an image VAE")
        images = (out + 1) / 2
        return (images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images).to(latent.device)
    return decode


def loss_of_x0(terms: tuple, decode, copies: int, policy: tuple[str, ...]):
    """x0 latent → weighted sum of the loss terms per image, averaged over augmented copies."""
    spatial_policy = tuple(p for p in policy if p == "color")

    def evaluate(images, rows, gen, spatial):
        chosen = spatial_policy if spatial else policy
        if copies == 0 or not chosen:
            return images, rows
        return augment(images, copies, gen, chosen), rows.repeat(copies)

    def loss_fn(x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        images = decode(x0)
        base_rows = torch.arange(images.shape[0])
        total = torch.zeros(images.shape[0], device=images.device)
        cache: dict = {}
        for term in terms:
            if term.spatial not in cache:
                cache[term.spatial] = evaluate(images, base_rows, gen, term.spatial)
            inputs, rows = cache[term.spatial]
            values = term.fn(inputs, rows).float()
            if values.shape[0] != images.shape[0]:
                values = mean_over_copies(values, values.shape[0] // images.shape[0])
            total = total + term.weight * values
        return total
    return loss_fn


def split_rows(x: torch.Tensor) -> bool:
    """Fast gradient: run the other rows in a call of their own (CPU) or detach them from the batched call."""
    return x.device.type == "cpu"


def next_sigma(sigmas: torch.Tensor | None, sigma: float) -> float:
    """The schedule's next σ below `sigma` (0 after the last step or without a schedule)."""
    if sigmas is None:
        return 0.0
    lower = [float(s) for s in sigmas if float(s) < sigma * (1 - 1e-5)]
    return max(lower) if lower else 0.0


class LossGuidance:
    """The predict_noise wrapper: state for one patched model."""

    def __init__(self, terms, vae, config: LossGuidanceConfig, active, copies: int, policy, recurrence: int,
                 recurrence_range, gradient_vae=None, gradient: str = "exact"):
        self.terms, self.vae, self.gradient_vae = terms, vae, gradient_vae
        self.fast = gradient == "fast"
        self.in_gradient_pass = False    # fast: inside the forward pass whose graph the gradient uses
        self.rows_split = 0              # fast: gradient passes whose other rows were split off or detached
        self.config, self.active, self.copies, self.policy = config, active, copies, policy
        self.recurrence, self.recurrence_range = recurrence, recurrence_range
        self.reported: set = set()
        self.last = None                 # the last step's StepResult (loss, change, skipped), for reports
        self.backward = InPlaceSafe(NODE)

    def report_once(self, key: str, message: str, *args) -> None:
        if key not in self.reported:
            self.reported.add(key)
            logging.warning(message, *args)

    def conditional_row_only(self, executor, model, conds, x_in, timestep, model_options):
        """calc_cond_batch wrapper (fast gradient): in the gradient pass only the first (conditional) row keeps its
        graph; the other rows (uncond, extra conds) run in a no-gradient call (CPU) or are detached (accelerators)."""
        others = any(c is not None for c in conds[1:])
        if not (self.in_gradient_pass and torch.is_grad_enabled() and conds and conds[0] is not None and others):
            return executor(model, conds, x_in, timestep, model_options)
        self.rows_split += 1
        if not split_rows(x_in):
            out = executor(model, conds, x_in, timestep, model_options)
            return [out[0], *(o.detach() for o in out[1:])]
        with torch.no_grad():
            rest = executor(model, [None, *conds[1:]], x_in.detach(), timestep, model_options)
        own = executor(model, [conds[0], *[None] * (len(conds) - 1)], x_in, timestep, model_options)
        return [own[0], *rest[1:]]

    def __call__(self, executor, x, timestep, model_options, seed):
        sigma = timestep.max()
        if not self.active.active(timestep):
            return executor(x, timestep, model_options, seed)
        base = executor.class_obj.inner_model
        ms = base.model_sampling
        flow = isinstance(ms, comfy.model_sampling.CONST)
        s = float(sigma)
        if flow and s >= 0.9999:                                  # pure noise: x0 carries no information yet
            return executor(x, timestep, model_options, seed)
        s_next = next_sigma(model_options.get("transformer_options", {}).get("sample_sigmas"), s)
        # EDM coordinates x = x0 + σ·ε (flow models: x_flow = (1 − t)·x_EDM, σ = t/(1 − t))
        scale = (1 - s) if flow else 1.0
        sigma_edm = s / (1 - s) if flow else s
        next_edm = s_next / (1 - s_next) if flow else s_next
        gen = step_generator(seed or 0, timestep)
        sizes = [term.size for term in self.terms] if self.fast else None
        decode = decoder(self.gradient_vae or self.vae, base, NODE, sizes)
        if self.fast and "sampler_calc_cond_batch_function" in model_options:
            self.report_once("split", "%s: gradient 'fast' cannot split the rows: another patch replaces ComfyUI's "
                             "calc_cond_batch; the gradient goes through every row (as 'exact')", NODE)
        loss = loss_of_x0(self.terms, decode, self.copies, self.policy)
        recurrence = self.recurrence if self.recurrence_range.active(timestep) else 1
        if LOSS_METHODS[self.config.method].through_denoiser:     # MPGD never differentiates through the model
            autograd_ready(base.diffusion_model)

        with compat.gradients():
            t = timestep.clone()

            def denoise(x_edm: torch.Tensor) -> torch.Tensor:
                self.in_gradient_pass = self.fast
                try:
                    with self.backward.saving():
                        return executor(x_edm * scale, t, model_options, seed)
                finally:
                    self.in_gradient_pass = False

            def run():
                return loss_guided_denoise(denoise, lambda x0: loss(x0, gen), x.clone() / scale,
                                           torch.full((x.shape[0],), sigma_edm, dtype=x.dtype, device=x.device),
                                           torch.tensor(next_edm, dtype=x.dtype, device=x.device),
                                           self.config, gen, recurrence)
            try:
                guided, result = self.backward.run(run)
            except RuntimeError as e:
                if "Inference tensors" not in str(e):
                    raise
                raise ValueError(f"{NODE}: a tensor made under torch.inference_mode reached the gradient ({e}). A "
                                 "patch on input 'model' or a loss node builds tensors in inference mode; load it "
                                 "outside inference mode or put GuideKit Loss Guidance before that patch") from e
        self.last = result
        if result.skipped.any():
            self.report_once("nan", "%s: the loss or its gradient was not finite for image(s) %s at σ = %.4g; "
                             "those steps are unguided (reported once)", NODE,
                             result.skipped.nonzero().flatten().tolist(), s)
        return guided.detach().to(x.dtype)


class LossGuidanceGK(GuideKitNode):
    COST = {"extra_passes": "gradient", "times": "recurrence",
            "what": "every pass with gradients, then backward through every row (≈3× a CFG step)",
            "overrides": [{"widget": "method", "value": "MPGD", "extra_passes": 0,
                           "what": "gradient through the decoder and loss only"},
                          {"widget": "gradient", "value": "fast", "extra_passes": "gradient",
                           "what": "backward through the conditional row and a small decode only (≈2× a CFG step)"}]}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitLossGuidance", display_name=NODE, category=CATEGORY,
            description="Training-free guidance by a differentiable loss on the predicted image (FreeDoM, Universal "
                        "Guidance, LGD-MC, MPGD, DPS) with Polyak step size and random augmentation (Shen et al. "
                        "2024). Works with every sampler; exact for euler / ddim.",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to guide (a patched copy is returned; this one is unchanged)."),
                io.Vae.Input("vae", tooltip="Decodes x0 for the loss (use the checkpoint's VAE)."),
                LossType.Input("loss", tooltip="A chain of GuideKit loss nodes."),
                io.Combo.Input("method", options=METHODS, default="FreeDoM",
                               tooltip="FreeDoM: ∇ through the model; UG: forward (+ backward steps); LGD-MC: Monte-"
                                       "Carlo loss; MPGD: ∇ on x0 only (cheapest, no backprop through the model); "
                                       "DPS: ∇ of the residual norm."),
                io.Combo.Input("step_rule", options=STEP_RULES, default="polyak",
                               tooltip="polyak: scale·‖ε‖/‖∇‖² (Shen et al.); rms: FreeDoM's rule "
                                       "scale·rms(ε)·σ·c1/rms(∇); fixed: ρ = scale."),
                io.Float.Input("scale", default=1.0, min=0.0, max=1e6, step=0.001,
                               tooltip="Guidance strength (ρ, ζ or s of the method, through the step rule)."),
                io.Int.Input("augment_copies", default=0, min=0, max=64,
                             tooltip="Random augmentation: average the loss over this many augmented copies "
                                     "(Shen et al. use 20 for CLIP); 0 = off."),
                io.String.Input("augmentations", default="color,translation,resize,cutout",
                                tooltip="Augmentations of the copies. "
                                        "Map losses (segmentation, sketch) get colour only."),
                io.Int.Input("recurrence", default=1, min=1, max=20,
                             tooltip="Time-travel: repeat each step this many times, re-noising in between."),
                io.Float.Input("recurrence_start", default=0.2, min=0.0, max=1.0, step=0.001,
                               tooltip="Recurrence applies from this fraction of the schedule ..."),
                io.Float.Input("recurrence_end", default=0.7, min=0.0, max=1.0, step=0.001,
                               tooltip="... to this one (FreeDoM: 300 ≤ t ≤ 800 of 1000)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Guidance starts at this fraction of the schedule (0 = first step)."),
                io.Float.Input("end_percent", default=0.8, min=0.0, max=1.0, step=0.001,
                               tooltip="Guidance stops after this fraction (FreeDoM/Shen stop at t = 200-100)."),
                io.Int.Input("mc_samples", default=4, min=1, max=64, tooltip="LGD-MC: Monte-Carlo samples n."),
                io.Int.Input("backward_steps", default=0, min=0, max=100, tooltip="UG: gradient steps on x0 (m)."),
                io.Float.Input("backward_lr", default=0.1, min=0.0, max=1e4, step=0.001, tooltip="UG: their step."),
                io.Combo.Input("gradient", options=GRADIENTS, default="exact", optional=True,
                               tooltip="exact: the gradient through every row of CFG and the full-size decode. fast: "
                                       "through the conditional row only (the others run without gradients) and "
                                       "x0 decoded at the loss network's input size; ≈ 2× a CFG step instead of "
                                       "≈ 3× (measured quality cost: help page)."),
                io.Vae.Input("gradient_vae", optional=True,
                             tooltip="A cheaper decoder for the gradient only, e.g. TAESD (VAE Loader 'taesd')."),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model that guides every active step by the loss.")],
        )

    @classmethod
    def execute(cls, model, vae, loss, method, step_rule, scale, augment_copies, augmentations, recurrence,
                recurrence_start, recurrence_end, start_percent, end_percent, mc_samples, backward_steps,
                backward_lr, gradient="exact", gradient_vae=None) -> io.NodeOutput:
        if not loss:
            raise ValueError(f"{NODE}: input 'loss' holds no loss; connect a GuideKit loss node")
        policy = parse_policy(augmentations)
        active = sigma_range(model, NODE, start_percent, end_percent)
        if recurrence_start > recurrence_end:
            raise ValueError(f"{NODE}: input 'recurrence_start' ({recurrence_start}) is after 'recurrence_end' "
                             f"({recurrence_end}); swap them (0 = first step, 1 = last)")
        recurrence_range = sigma_range(model, NODE, recurrence_start, recurrence_end)
        m = model.clone()
        if m.get_wrappers(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, WRAPPER_KEY):
            raise ValueError(f"{NODE}: input 'model' already has loss guidance; chain the loss nodes into one "
                             "'loss' instead of stacking two Loss Guidance nodes")
        config = LossGuidanceConfig(method, step_rule, scale, mc_samples, backward_steps, backward_lr)
        guidance = LossGuidance(tuple(loss), vae, config, active, augment_copies, policy, recurrence,
                                recurrence_range, gradient_vae, gradient)
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, WRAPPER_KEY, guidance)
        if guidance.fast:
            m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY,
                                   guidance.conditional_row_only)
        m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, WRAPPER_KEY,
                                lambda patcher: guidance.reported.clear())     # warnings: once per run
        return io.NodeOutput(m)
