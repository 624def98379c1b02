"""Tier 2: the MNIST DiT (ComfyUI's Qwen-Image transformer) — loads from its metadata, is the qwen_image family
with 8 blocks on a 16×16 token grid, draws the asked digits through ComfyUI's sampling, refuses bad files."""
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "benchmarks" / "weights"
NAME = "mnist-dit-28.safetensors"


@pytest.fixture(scope="module")
def setting(comfy):
    from evidence import datasets
    return datasets.SETTINGS["mnist-dit"]()


def test_dit_loads_through_the_demo_loader_as_qwen_image_with_8_blocks(comfy):
    from guidekit.nodes import demo_mnist, demo_mnist_dit, layers, model_info
    from guidekit.nodes.attention_hooks import image_grid
    assert NAME in demo_mnist.weight_files() and demo_mnist.weight_files()[0] == demo_mnist.DEFAULT_WEIGHTS
    model, vae = demo_mnist.MNISTDemoLoader.execute(NAME).result
    dm = model.get_model_object("diffusion_model")
    assert isinstance(dm, demo_mnist_dit.MNISTQwenImage) and model.model.latent_format.latent_channels == 3
    assert vae.latent_channels == 3
    assert model.model.model_sampling.sigma_max.item() == 1.0          # rectified flow: σ = timestep in [0, 1]
    arch = layers.architecture(model, "test")
    assert arch.family == "qwen_image" and arch.layers == tuple(("double", i) for i in range(8))
    assert arch.default_layers == "double.5"            # PAG: the block at 5/8 of the depth (measured)
    assert arch.default_block == arch.default_sag_layer == "double.4"   # SEG, SAG, Degraded Model: the middle block
    assert image_grid(arch, torch.Size((1, 3, 32, 32))) == (1, 16, 16)
    assert model_info.describe("guidekit_mnist", NAME).family == "qwen_image"   # the layer picker reads the same
    meta = demo_mnist.read_metadata(WEIGHTS / NAME)
    assert meta["guidekit.kind"] == demo_mnist_dit.KIND and json.loads(meta["guidekit.dit_config"])["num_layers"] == 8


def test_dit_attends_over_256_image_tokens_and_one_class_token(setting):
    """Every block's joint attention holds 16×16 image tokens (patch 2 of 32×32) after the one digit token."""
    seen = []
    dm = setting.model.get_model_object("diffusion_model")
    hooks = [block.attn.register_forward_hook(lambda mod, args, kwargs, out: seen.append(
        (out[0].shape[1], out[1].shape[1])), with_kwargs=True) for block in dm.transformer_blocks]
    try:
        setting.sample(setting.model, 1.0, seed=0, n=2, steps=1)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and set(seen) == {(16 * 16, 1)} and len(seen) == 8


def test_dit_draws_the_requested_digits(setting):
    """CFG 2, 10 euler steps, 3 samples of each digit: the evaluation classifier reads the asked digit in most
    samples and in most of each digit's three (measured: 27 of 30, every digit at least 2 of 3)."""
    samples = setting.sample(setting.model, 2.0, seed=11, n=30, steps=10)
    assert samples.shape == (30, 1, 16, 16)
    with torch.no_grad():
        read = setting.classifier.head(setting.classifier.features(samples)).argmax(1)
    right = read == torch.tensor(setting.labels(30))
    assert right.float().mean() >= 0.8, read.tolist()
    assert sum(right[d::10].sum().item() >= 2 for d in range(10)) >= 8, read.tolist()


def test_pag_on_one_dit_block_changes_the_samples(setting):
    from guidekit.nodes.pag import PerturbedAttentionGuidanceGK
    plain = setting.sample(setting.model, 1.0, seed=5, n=4, steps=4)
    guided = setting.sample(PerturbedAttentionGuidanceGK.run(model=setting.model, scale=3.0, layers="double.0")[0],
                            1.0, seed=5, n=4, steps=4)
    assert torch.isfinite(guided).all() and (guided - plain).abs().max() > 1e-3


def test_defaults_perturb_the_measured_layers(setting):
    """'default' on the 8-block DiT: PAG perturbs the block at 5/8 of the depth (double.5), SEG the middle block
    (double.4); the two perturb differently."""
    from guidekit.nodes.pag import PerturbedAttentionGuidanceGK
    from guidekit.nodes.seg import SmoothedEnergyGuidanceGK

    def sample(node, layers):
        return setting.sample(node.run(model=setting.model, scale=1.0, layers=layers)[0], 1.0, seed=7, n=2, steps=3)
    pag_default = sample(PerturbedAttentionGuidanceGK, "default")
    torch.testing.assert_close(pag_default, sample(PerturbedAttentionGuidanceGK, "double.5"), rtol=0, atol=1e-6)
    assert (pag_default - sample(PerturbedAttentionGuidanceGK, "double.4")).abs().max() > 1e-3
    seg_default = sample(SmoothedEnergyGuidanceGK, "default")
    torch.testing.assert_close(seg_default, sample(SmoothedEnergyGuidanceGK, "double.4"), rtol=0, atol=1e-6)


def _write(path: Path, kind: str, config, state: dict) -> Path:
    from safetensors.torch import save_file
    meta = {"guidekit.kind": kind, "guidekit.dit_config": config if isinstance(config, str) else json.dumps(config)}
    save_file(state, str(path), metadata=meta)
    return path


def test_bad_dit_metadata_gives_clear_errors(comfy, tmp_path):
    from guidekit.nodes import demo_mnist, demo_mnist_dit
    state = {"img_in.weight": torch.zeros(128, 12)}
    with pytest.raises(ValueError, match=r"'bad.safetensors' is not a GuideKit MNIST UNet or DiT \(metadata kind "
                                         r"'guidekit-mnist-ditt'"):
        demo_mnist.load_patcher(_write(tmp_path / "bad.safetensors", "guidekit-mnist-ditt", {}, state))
    with pytest.raises(ValueError, match=r"'config.safetensors': its 'guidekit.dit_config' metadata does not build "
                                         r"the MNIST DiT"):
        demo_mnist.load_patcher(_write(tmp_path / "config.safetensors", demo_mnist_dit.KIND, "[8]", state))
    with pytest.raises(ValueError, match=r"'config2.safetensors': its 'guidekit.dit_config' metadata does not build"):
        demo_mnist.load_patcher(_write(tmp_path / "config2.safetensors", demo_mnist_dit.KIND, {"depth": 8}, state))
    with pytest.raises(ValueError, match=r"'weights.safetensors': weights do not fit the DiT config \(missing"):
        demo_mnist.load_patcher(_write(tmp_path / "weights.safetensors", demo_mnist_dit.KIND, {"num_layers": 2},
                                       state))


def test_dit_training_writes_a_file_the_loader_accepts(comfy, tmp_path):
    """train_mnist.py dit-28 for 2 iterations: provenance metadata, and the demo loader builds it from that."""
    import train_mnist

    from guidekit.nodes import demo_mnist
    path = train_mnist.train_flow("dit-28", 2, tmp_path / "dit.safetensors", quiet=True)
    meta = demo_mnist.read_metadata(path)
    assert meta["guidekit.iterations"] == "2" and meta["guidekit.kind"] == "guidekit-mnist-dit"
    assert json.loads(meta["guidekit.dit_config"])["num_layers"] == 8
    model = demo_mnist.load_patcher(path)
    x = torch.randn(2, 3, 32, 32)
    out = model.model.apply_model(x, torch.full((2,), 0.5), c_crossattn=demo_mnist.digit_context([3, 10]))
    assert out.shape == x.shape and torch.isfinite(out).all()
