"""Tier 2: the trained evidence models through ComfyUI's own sampling, the demo nodes, provenance."""
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "benchmarks" / "weights"


@pytest.fixture(scope="module")
def ev(comfy):
    from evidence import comfy_models, datasets, fractal, metrics, mnist_data, networks
    return type("Evidence", (), dict(comfy_models=comfy_models, datasets=datasets, fractal=fractal,
                                     metrics=metrics, mnist_data=mnist_data, networks=networks))


@pytest.fixture(scope="module")
def mnist(ev):
    return ev.datasets.MNISTSetting()


@pytest.fixture(scope="module")
def toy(ev):
    """The earlier class-conditional toy model (A, B, null token): the flow refiner's and ICG's 2D model."""
    return ev.datasets.ToySetting()


@pytest.fixture(scope="module")
def toy_ref(ev):
    """The toy example's class-A model under the toy example's own sampling protocol (quality.py's toy-ref)."""
    return ev.datasets.SETTINGS["toy-ref"]()


def test_mnist_split_is_fixed_disjoint_and_balanced(ev):
    a, b = ev.mnist_data.load_split(), ev.mnist_data.load_split()
    assert len(a.train_labels) == 8000 and len(a.test_labels) == 2000
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.train_labels, b.train_labels)
    counts = torch.bincount(a.test_labels, minlength=10)
    assert counts.min() > 150 and counts.sum() == 2000
    unit = ev.mnist_data.to_unit(a.train_images[:4])
    assert unit.shape == (4, 1, 16, 16) and 0 <= unit.min() and unit.max() <= 1
    assert torch.allclose(ev.mnist_data.from_latent(ev.mnist_data.to_latent(unit)), unit, atol=1e-6)


@pytest.mark.parametrize("name", sorted(p.name for p in WEIGHTS.glob("*.safetensors")))
def test_committed_weights_record_how_they_were_trained(ev, name):
    from guidekit.nodes.demo_mnist import read_metadata
    meta = read_metadata(WEIGHTS / name)
    assert meta["guidekit.command"].startswith("python3 scripts/host.py run-python benchmarks/train_")
    if name.startswith("mnist"):
        assert meta["guidekit.data_sha256"] == ev.mnist_data.load_split().sha256
    else:
        import train_toy
        assert meta["guidekit.data_sha256"] == train_toy.data_hash()
    assert float(meta["guidekit.train_seconds"]) < 30 * 60


def test_demo_model_draws_the_requested_digits(mnist):
    """The shipped MNIST model, sampled as KSampler does (CFG 3, 20 euler steps): the evaluation
    classifier reads the requested digit in most samples — the trained weights work through ComfyUI."""
    samples = mnist.sample(mnist.model, 3.0, seed=11, n=60, steps=20)
    scores = mnist.score(samples, seed=11)
    assert samples.shape == (60, 1, 16, 16)
    assert scores["accuracy"] >= 0.9, scores


def test_native_resolution_digits_score_like_the_16px_ones(ev):
    """Issue 22: real 28×28 digits padded to 32×32 and read back by `to_eval` are the 16×16 digits the
    evaluation classifier was trained on (same resize; only the crop differs, so kernel rounding only)."""
    digits = ev.mnist_data.load_split().test_images[:8]
    native = ev.mnist_data.to_unit(digits, ev.mnist_data.NATIVE)
    assert native.shape == (8, 1, 32, 32)
    assert native[..., :2, :].abs().max() == 0 and native[..., :, -2:].abs().max() == 0      # background border
    assert torch.allclose(ev.mnist_data.to_eval(native), ev.mnist_data.to_unit(digits), atol=1e-6)
    with pytest.raises(ValueError, match="expected 16² or 32²"):
        ev.mnist_data.to_eval(torch.zeros(1, 1, 24, 24))


def test_native_model_attends_on_16_and_8_grids_and_draws_digits(ev):
    """The native model (mnist-main-28) loads through the demo loader from its own metadata; its self-attention
    runs on 16×16 and 8×8 token grids (where SEG/SAG have a grid to act on) and CFG 3 draws the asked digits."""
    setting = ev.datasets.SETTINGS["mnist-28"]()
    tokens = set()

    def attn1(q, k, v, extra_options):
        tokens.add(q.shape[1])
        return q, k, v
    probe = setting.model.clone()
    probe.set_model_attn1_patch(attn1)
    samples = setting.sample(probe, 3.0, seed=11, n=60, steps=20)
    assert tokens == {16 * 16, 8 * 8}, tokens
    assert samples.shape == (60, 1, 16, 16)
    assert setting.score(samples, seed=11)["accuracy"] >= 0.9


def test_cfg_beats_unguided_on_mnist_accuracy(mnist):
    unguided = mnist.score(mnist.sample(mnist.model, 1.0, seed=3, n=100, steps=20), seed=3)
    guided = mnist.score(mnist.sample(mnist.model, 3.0, seed=3, n=100, steps=20), seed=3)
    assert guided["accuracy"] > unguided["accuracy"] + 0.05, (unguided, guided)


def test_cfg_raises_the_toy_log_likelihood(toy):
    """2D fractal class A: CFG removes the unguided model's far outliers (mean log-likelihood up) and
    pushes samples away from class B, toward A's outer branches (as in Karras et al. 2024, Fig. 1)."""
    plain = toy.sample(toy.model, 1.0, seed=0, n=1000, steps=32)
    guided = toy.sample(toy.model, 2.0, seed=0, n=1000, steps=32)
    ll_plain, ll_guided = toy.score(plain, 0)["log-likelihood"], toy.score(guided, 0)["log-likelihood"]
    assert ll_guided > ll_plain + 1.0, (ll_plain, ll_guided)
    towards_a = torch.tensor([1.0, 1.0]) / 2 ** 0.5          # class A grows along +45°, B along −135°
    assert (guided @ towards_a).mean() > (plain @ towards_a).mean() + 0.05


@pytest.mark.parametrize("which, bound", [("earlier", 0.35), ("toy example", 0.2)])
def test_toy_denoiser_matches_the_exact_denoiser(ev, toy, toy_ref, which, bound):
    """Inside ComfyUI's EDM wrapper the trained MLP approximates E[x_0|x_σ] of the true mixture (the toy
    example's class-A-only model much more closely than the earlier conditional one)."""
    model = (toy if which == "earlier" else toy_ref).model
    gt = ev.fractal.mixture("A")
    gen = torch.Generator().manual_seed(4)
    for sigma in (0.05, 0.2, 1.0):
        x = gt.sample(512, sigma, generator=gen)
        ctx = ev.networks.toy_context(torch.zeros(512, dtype=torch.int64))
        d = model.model.apply_model(x.view(-1, 2, 1, 1), torch.full((512,), sigma), c_crossattn=ctx).view(-1, 2)
        err = (d - gt.denoise(x, sigma)).norm(dim=1).mean()
        scale = (x - gt.denoise(x, sigma)).norm(dim=1).mean()
        assert err < bound * scale, (sigma, float(err), float(scale))


def test_autoguidance_beats_unguided_under_the_toy_example_protocol(toy_ref):
    """Issue 22: x_init = exact class-A samples + 5·noise, Heun 32 (σ 5 → 0.002). The pack's Autoguidance
    node with the toy example's guide (narrower, 512 iterations) pulls samples into the class outline."""
    from evidence.methods import WEAK, autoguided, trained
    plain = toy_ref.score(toy_ref.sample(toy_ref.model, 1.0, seed=0, n=2000, steps=32), 0)
    guided_model = autoguided(toy_ref.model, trained(WEAK["toy-ref"]), 3.0)
    guided = toy_ref.score(toy_ref.sample(guided_model, 1.0, seed=0, n=2000, steps=32), 0)
    assert plain["clamped log p"] > 0.3 and plain["inside"] > 0.85, plain
    assert guided["clamped log p"] > plain["clamped log p"] + 0.15, (plain, guided)
    assert guided["inside"] > plain["inside"] + 0.01, (plain, guided)


def test_attention_nodes_apply_to_the_demo_model(mnist, comfy):
    """PAG, SEG and SAG find the demo UNet's layers and change its samples (hooks reach it)."""
    from attention_nodes import pag, sag, seg
    plain = mnist.sample(mnist.model, 1.0, seed=0, n=4, steps=4)
    for patch in (pag, seg, sag):
        guided = mnist.sample(patch(mnist.model), 1.0, seed=0, n=4, steps=4)
        assert torch.isfinite(guided).all() and not torch.allclose(plain, guided), patch.__name__


def test_demo_nodes_digits_and_errors(comfy):
    from guidekit.nodes import demo_mnist
    cond = demo_mnist.MNISTDigits.execute("0, 3 7").result[0]
    ctx = cond[0][0]
    assert ctx.shape == (3, 1, 11) and ctx.argmax(-1).flatten().tolist() == [0, 3, 7]
    assert demo_mnist.MNISTDigits.execute("none").result[0][0][0].argmax(-1).item() == demo_mnist.NULL
    with pytest.raises(ValueError, match="GuideKit MNIST Digits: input 'digits' = 'seven'.*'0123456789'"):
        demo_mnist.MNISTDigits.execute("seven")
    with pytest.raises(ValueError, match="GuideKit MNIST Demo Loader: input 'weights' = 'nope.safetensors' is not one "
                                         "of its options"):
        demo_mnist.MNISTDemoLoader.execute("nope.safetensors")
    model, vae = demo_mnist.MNISTDemoLoader.execute("mnist-main.safetensors").result
    assert model.model.latent_format.latent_channels == 3 and vae.latent_channels == 3
    assert demo_mnist.weight_files()[0] == "mnist-main-28.safetensors"    # the default option comes first
    assert not any(n.startswith("mnist-classifier") for n in demo_mnist.weight_files())
    info = json.dumps(demo_mnist.MNIST_UNET)
    assert '"context_dim": 11' in info
