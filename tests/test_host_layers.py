"""Tier 2: the UNet self-attention keys we list are exactly the keys ComfyUI looks attn1 patches up with."""
import pytest
import torch

pytestmark = pytest.mark.host


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_listed_keys_are_the_keys_comfyui_calls(thin, arch):
    from comfy.ldm.modules.attention import optimized_attention

    from guidekit.nodes.layers import unet_self_attention as self_attention_keys

    model = thin.build(arch).clone()
    keys = self_attention_keys(model.model.diffusion_model)
    seen = set()

    def record(q, k, v, extra_options):
        seen.add((*extra_options["block"], extra_options["block_index"]))
        return optimized_attention(q, k, v, extra_options["n_heads"])

    for place, block_id, index in keys:
        model.set_model_attn1_replace(record, place, block_id, index)
    plain = thin.sample(thin.build(arch), arch, steps=1)
    patched = thin.sample(model, arch, steps=1)
    assert seen == set(keys) and len(keys) == len(seen)
    torch.testing.assert_close(patched, plain)   # the recording patch computes the same attention


def test_sdxl_has_no_attention_in_its_first_level(thin):
    from guidekit.nodes.layers import unet_self_attention as self_attention_keys
    keys = self_attention_keys(thin.build("sdxl").model.diffusion_model)
    assert ("middle", 0, 0) in keys and ("middle", 0, 1) in keys
    assert all(not (place == "input" and block_id in (0, 1, 2)) for place, block_id, _ in keys)
