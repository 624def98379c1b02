"""Spatiotemporal Skip Guidance (Hyung et al., CVPR 2025, arXiv 2411.18664): guide away from a pass that
skips chosen spatiotemporal transformer blocks of a video model (an implicitly weaker model, no training).

Two published forms of the skip: the official code's current STG skips the whole block (its output on the
perturbed rows is its input), the earlier STG-A and ComfyUI's LTXV node skip only the self-attention, whose
output becomes the values (attention map = identity, as PAG). Combination, with the conditional prediction
c and the perturbed one p: out = CFG + s·(c − p); the paper's rescaling (0.7) is optional.
"""
from __future__ import annotations

import torch


def skip_rows(block_out: torch.Tensor, rows_in: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The block's output with `rows` replaced by those rows of its input (`rows_in`): skipped on those rows."""
    # Hyung et al. 2025, STGuidance pipeline_stg_ltx.py forward_with_stg: hidden_states[ptb] = hidden_states_ptb
    out = block_out.clone()
    out[rows] = rows_in.to(out.dtype)
    return out
