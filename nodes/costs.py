"""Extra diffusion-model passes per sampling step that each GuideKit sampling node adds (inside its range).

One pass = one evaluation of the model on the batch, as the conditional or the unconditional pass of CFG.
The frontend badge reads this table (GET /guidekit/costs) and a host test counts the model's rows per step
to hold every number here to what the node really runs.
"""
from __future__ import annotations

REPLACE_UNCOND = {"widget": "mode", "value": "replace uncond", "extra_passes": 0,
                  "what": "the perturbed pass takes the unconditional pass's place"}

COSTS: dict[str, dict] = {
    "GuideKitPAG": {"extra_passes": 1, "what": "a pass of the positive with identity self-attention",
                    "overrides": [REPLACE_UNCOND]},
    "GuideKitSEG": {"extra_passes": 1, "what": "a pass of the positive with blurred attention queries",
                    "overrides": [REPLACE_UNCOND]},
    "GuideKitSAG": {"extra_passes": 1, "what": "a pass on the blurred, re-noised prediction"},
    "GuideKitAutoguidance": {"extra_passes": 1, "what": "the weak model on the positive"},
    "GuideKitAutoguidanceGuider": {"extra_passes": 1, "what": "the weak model on the positive"},
    "GuideKitICG": {"extra_passes": 0, "what": "the unconditional pass runs on a random condition instead"},
    "GuideKitTSG": {"extra_passes": 0, "what": "the unconditional pass runs with a noised time embedding"},
    "GuideKitDegradedModel": {"extra_passes": 0, "what": "perturbs every pass of this model; adds none"},
    "GuideKitLossGuidance": {"extra_passes": "gradient", "times": "recurrence",
                             "what": "every pass again with gradients, then backward (≈3 passes each)",
                             "overrides": [{"widget": "method", "value": "MPGD", "extra_passes": 0,
                                            "what": "gradient through the decoder and loss only"}]},
}


def extra_passes(node_id: str, widgets: dict) -> int | str | None:
    """The table's entry for a node with these widget values (None: not a sampling-time node)."""
    entry = COSTS.get(node_id)
    if entry is None:
        return None
    for rule in entry.get("overrides", []):
        if widgets.get(rule["widget"]) == rule["value"]:
            return rule["extra_passes"]
    return entry["extra_passes"]
