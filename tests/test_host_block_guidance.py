"""Tier 2: TPG and STG, the block-level perturbations, on the UNet and every DiT family GuideKit reaches.

Per family, at the block itself (seen from outside through PyTorch's module hooks, which run around the
wrapped forward): STG 'block' hands its input back on the perturbed pass and computes normally on every
other call; TPG feeds the block its image tokens in another order on the perturbed pass only (the same
tokens, sorted) and leaves the text stream alone. Then the sampled result: both change it, batched = separate,
the input model is unchanged.
"""
import pytest
import torch
from test_host_dit_families import REACHED

from attention_nodes import BRANCH, assert_same_guidance, changed

pytestmark = pytest.mark.host

FAMILIES = ["sd15", "sdxl", "flux", "chroma", "sd3", *REACHED]



def tpg(model, **kw):
    from guidekit.nodes.tpg import TokenPerturbationGuidanceGK
    return TokenPerturbationGuidanceGK.execute(model, scale=kw.pop("scale", 3.0), **{**BRANCH, **kw}).result[0]


def stg(model, **kw):
    from guidekit.nodes.stg import SpatiotemporalSkipGuidanceGK
    return SpatiotemporalSkipGuidanceGK.execute(model, scale=kw.pop("scale", 2.0), skip=kw.pop("skip", "block"),
                                                **{**BRANCH, **kw}).result[0]


def chosen_block(model, node_module, layers="default"):
    """The module of the (first) block a node's default layers name on this model."""
    from guidekit.nodes.block_hooks import layer_modules
    from guidekit.nodes.layers import architecture, parse_layers
    arch = architecture(model, "test")
    text = node_module.default_layers(arch) if layers == "default" else layers
    layer = parse_layers(text, arch, "test")[0]
    return layer_modules(model.get_model_object("diffusion_model"), arch)[layer]


def _copy(a):
    """Snapshots: Flux's blocks add to their input in place, and the next block to this one's output."""
    return a.clone() if isinstance(a, torch.Tensor) else a


class BlockRecorder:
    """Module hooks around a block: its arguments before the wrapped forward runs, and its output."""

    def __init__(self, block):
        self.calls = []
        self.handles = [block.register_forward_pre_hook(self.pre, with_kwargs=True),
                        block.register_forward_hook(self.post, with_kwargs=True)]

    def pre(self, module, args, kwargs):
        self.calls.append({"args": tuple(_copy(a) for a in args), "kwargs": {k: _copy(v) for k, v in kwargs.items()}})

    def post(self, module, args, kwargs, output):
        self.calls[-1]["out"] = type(output)(_copy(o) for o in output) if isinstance(output, tuple) else _copy(output)

    def remove(self):
        for h in self.handles:
            h.remove()


def hidden_streams(call):
    from guidekit.nodes.block_hooks import _streams
    batch = next(a for a in [*call["args"], *call["kwargs"].values()] if isinstance(a, torch.Tensor)).shape[0]
    return [s for _, s in _streams(call["args"], call["kwargs"], batch)]


def outputs(call):
    out = call["out"]
    return list(out) if isinstance(out, (tuple, list)) else [out]


def matching_input(call, out):
    return next(s for s in hidden_streams(call) if s.shape == out.shape)


@pytest.mark.parametrize("arch", FAMILIES)
def test_stg_skips_the_block_on_the_perturbed_pass_only(thin, built, arch):
    """'separate' evaluation: each step runs the CFG call, then the perturbed call (cond only) on its own."""
    import guidekit.nodes.stg as stg_module
    base = built(arch)
    patched = stg(base, layers="default")
    recorder = BlockRecorder(chosen_block(base, stg_module))
    try:
        thin.sample(patched, arch, steps=1, cfg=3.0)
    finally:
        recorder.remove()
    calls = [c for c in recorder.calls if "out" in c]
    assert len(calls) >= 2, f"{arch}: the chosen block ran {len(calls)} times in a step with CFG and STG"
    cfg_call, perturbed = calls[0], calls[-1]
    for out in outputs(perturbed):
        if isinstance(out, torch.Tensor) and any(s.shape == out.shape for s in hidden_streams(perturbed)):
            assert torch.equal(out, matching_input(perturbed, out).to(out.dtype)), f"{arch}: block not skipped"
    moved = [o for o in outputs(cfg_call) if isinstance(o, torch.Tensor)
             and any(s.shape == o.shape for s in hidden_streams(cfg_call))]
    assert moved and any(not torch.equal(o, matching_input(cfg_call, o).to(o.dtype)) for o in moved), \
        f"{arch}: the block must compute normally outside the perturbed pass"


@pytest.mark.parametrize("arch", FAMILIES)
def test_tpg_permutes_the_image_tokens_on_the_perturbed_pass_only(thin, built, arch, monkeypatch):
    """What the wrapped forward passes on is recorded by a stand-in for the block's own forward."""
    import guidekit.nodes.tpg as tpg_module
    base = built(arch)
    patched = tpg(base, layers="default")
    block = chosen_block(base, tpg_module)
    seen, given = [], []
    original = type(block).forward.__get__(block)

    def recording_forward(*args, **kwargs):
        seen.append({"args": tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args),
                     "kwargs": {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}})
        return original(*args, **kwargs)
    monkeypatch.setattr(block, "forward", recording_forward, raising=False)
    recorder = BlockRecorder(block)
    try:
        thin.sample(patched, arch, steps=1, cfg=3.0)
    finally:
        recorder.remove()
        given = recorder.calls
    assert len(seen) == len(given) >= 2
    for index, (before, after) in enumerate(zip(given, seen)):
        pairs = list(zip(hidden_streams(before), hidden_streams(after)))
        differing = [(a, b) for a, b in pairs if not torch.equal(a, b)]
        if index < len(seen) - 1:
            assert not differing, f"{arch}: call {index} (not the perturbed pass) was shuffled"
            continue
        assert len(differing) == 1, f"{arch}: the perturbed pass must shuffle exactly the image stream"
        a, b = (t.reshape(t.shape[0], -1, t.shape[-1]) for t in differing[0])
        torch.testing.assert_close(a.sort(dim=1).values, b.sort(dim=1).values, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["sd15", "flux", "wan21_t2v", "qwen_image", "lumina2", "hunyuan_video", "ltxv"])
def test_tpg_and_stg_guide_and_batched_equals_separate(thin, built, arch):
    base = built(arch)
    before = dict(base.model_options)
    plain = thin.sample(base, arch, steps=3)
    for name, make in (("TPG", tpg), ("STG", stg), ("STG attention", lambda m, **kw: stg(m, skip="attention", **kw))):
        separate = thin.sample(make(base), arch, steps=3)
        assert torch.isfinite(separate).all() and changed(separate, plain, 1e-5), f"{name} changed nothing on {arch}"
        assert_same_guidance(thin.sample(make(base, evaluation="batched"), arch, steps=3), separate, plain)
    assert base.model_options == before


def test_shuffle_is_the_official_permutation():
    """pipeline_sdxl_tpg.py: x[:, randperm(n)], one permutation for every image of the batch."""
    from guidekit.guidance.tpg import shuffle_tokens

    from guidance_helpers import rand
    x = rand(3, 50, 8, seed=0)
    ours = shuffle_tokens(x, torch.Generator().manual_seed(7))
    official = x[:, torch.randperm(50, generator=torch.Generator().manual_seed(7))]
    assert torch.equal(ours, official) and not torch.equal(ours, x)


def test_stg_and_tpg_defaults_follow_the_references(thin, built):
    """TPG on SDXL's real layout (2+2 transformer blocks at 64², 10+10 at 32² on the way down): the official
    d6-d23; STG's official blocks where the model has them, else the middle block."""
    from guidekit.nodes.layers import Architecture, architecture, parse_layers
    from guidekit.nodes.stg import default_layers as stg_default
    from guidekit.nodes.tpg import default_layers as tpg_default
    down = [("input", 4, i) for i in range(2)] + [("input", 5, i) for i in range(2)] + \
           [("input", b, i) for b in (7, 8) for i in range(10)]
    sdxl = Architecture("unet", "UNetModel", tuple(down + [("middle", 0, i) for i in range(10)]), (1, 1, 1),
                        "middle", "middle.0.0")
    assert list(parse_layers(tpg_default(sdxl), sdxl, "t")) == down[6:]
    assert tpg_default(sdxl) == "input.7.2-9, input.8.0-9"
    ltxv = Architecture("ltxv", "LTXVModel", tuple(("block", i) for i in range(28)), (1, 1, 1), "block.14", "block.14")
    assert stg_default(ltxv) == "block.19"
    wan = architecture(built("wan21_t2v"), "test")
    assert stg_default(wan) == wan.default_block == "block.1"       # no official Wan block: the middle one
    assert stg_default(architecture(built("ltxv"), "test")) == "block.1"   # a 2-block LTXV has no block 19


def test_layer_picker_knows_each_nodes_default(thin, built):
    """GET /guidekit/model: 'default' in a TPG / STG / NAG / SEG / Degraded Model widget selects that node's
    default, not PAG's."""
    from guidekit.nodes.layers import architecture, format_layers, parse_layers
    from guidekit.nodes.model_info import describe_module
    from guidekit.nodes.stg import default_layers as stg_default
    from guidekit.nodes.tpg import default_layers as tpg_default
    for arch_name in ("sd15", "flux"):
        model = built(arch_name)
        arch = architecture(model, "t")

        def text(layers):
            return format_layers(parse_layers(layers, arch, "t"))
        described = describe_module(model.get_model_object("diffusion_model"), model.get_model_object("model_sampling"))
        assert described.selection("default", "GuideKitNAG")["selected"] == list(described.layers)
        assert described.selection("default", "GuideKitTPG")["selected_text"] == text(tpg_default(arch))
        assert described.selection("default", "GuideKitSTG")["selected_text"] == text(stg_default(arch))
        assert described.selection("default")["selected_text"] == text(arch.default_layers)
        for node in ("GuideKitSEG", "GuideKitDegradedModel"):
            assert described.selection("default", node)["selected_text"] == text(arch.default_block)
        assert described.to_json()["node_defaults"]["GuideKitTPG"] == tpg_default(arch)
    assert tpg_default(architecture(built("sd15"), "t")) != architecture(built("sd15"), "t").default_layers
