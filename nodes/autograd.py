"""Backpropagating through ComfyUI's models: weights made under its inference mode, and activations some
models update in place (Flux-family blocks add into `img` after saving it for backward)."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def _copy_if_differentiable(saved: torch.Tensor) -> torch.Tensor:
    """Keep a copy of activations saved for backward; weights and other constants stay shared."""
    return saved.clone() if saved.requires_grad else saved


class InPlaceSafe:
    """Runs forward + backward steps; switches to saving copies once a model is found to need it."""

    def __init__(self, who: str):
        self.who, self.copies = who, False

    def saving(self):
        """The context a step's forward pass runs in (copies saved activations once needed)."""
        if not self.copies:
            return contextlib.nullcontext()
        return torch.autograd.graph.saved_tensors_hooks(_copy_if_differentiable, lambda saved: saved)

    def run(self, step: Callable[[], T]) -> T:
        """`step()` (which enters `self.saving()` around its forward pass), rerun once with copies if needed."""
        try:
            return step()
        except RuntimeError as e:
            if "modified by an inplace operation" not in str(e) or self.copies:
                raise
            logging.info("%s: the model updates activations in place; keeping copies for the gradient", self.who)
            self.copies = True
            return step()


def autograd_ready(module: torch.nn.Module) -> torch.nn.Module:
    """Replace inference tensors among the module's parameters and buffers by ordinary copies, in place.

    Same values, one tensor at a time; needed because autograd cannot save tensors created in inference
    mode (ComfyUI loads models inside it). Called on the models loss guidance differentiates through.
    """
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None and p.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
            for name, b in list(sub._buffers.items()):
                if b is not None and b.is_inference():
                    sub._buffers[name] = b.clone()
    return module
