"""Tier 1: the flow refiner's math (postprocess/): flow-matching training, ODE solvers, FAISS, files, resume."""
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from guidekit.postprocess import data, neighbours, ode
from guidekit.postprocess.refiner import Refiner, default_architecture, load_refiner, save_refiner
from guidekit.postprocess.train import (
    TrainSettings,
    flow_matching_loss,
    new_refiner,
    pool_equal,
    tensor_sha256,
    train_refiner,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def blobs(n=512, seed=0):
    """Generated: a wide blob; real: two tight clusters (the refiner must move points onto them)."""
    g = gen(seed)
    real = torch.cat([torch.randn(n, 2, generator=g) * 0.05 + torch.tensor([1.0, 0.0]),
                      torch.randn(n, 2, generator=g) * 0.05 - torch.tensor([1.0, 0.0])])
    return torch.randn(n, 2, generator=g) * 0.6, real


def small_settings(**kw):
    return TrainSettings(**({"iterations": 150, "batch_size": 128, "lr": 2e-3, "checkpoint_every": 0} | kw))


def test_flow_matching_loss_is_zero_for_the_straight_line_velocity():
    x_g, x_r, t = torch.randn(4, 3), torch.randn(4, 3), torch.rand(4)
    assert flow_matching_loss(lambda x, tt: x_r - x_g, x_g, x_r, t).item() == pytest.approx(0.0, abs=1e-12)
    assert flow_matching_loss(lambda x, tt: torch.zeros_like(x), x_g, x_r, t).item() == \
        pytest.approx((x_r - x_g).pow(2).mean().item(), rel=1e-6)


def test_training_lowers_the_flow_matching_loss_and_moves_samples_onto_the_data():
    generated, real = blobs()
    nbrs = neighbours.top_k(generated, real, 10)
    torch.manual_seed(0)                                              # the initial weights
    result = train_refiner(new_refiner(real), generated, real, nbrs, small_settings(iterations=300))
    assert result.losses[-1] < 0.5 * result.losses[0], result.losses
    before = torch.cdist(generated, real).min(1).values.mean()
    after = torch.cdist(ode.refine(result.refiner, generated, 1.0, 8, "heun"), real).min(1).values.mean()
    assert after < 0.3 * before, (before, after)


def test_a_sample_equal_to_a_real_point_is_left_almost_unchanged():
    _, real = blobs(64)
    g = gen(3)
    generated = torch.cat([real, real + torch.randn(real.shape, generator=g) * 0.3])
    nbrs = neighbours.top_k(generated, real, 1)                      # real points are their own neighbour
    assert torch.equal(nbrs[:real.shape[0], 0], torch.arange(real.shape[0]))
    torch.manual_seed(0)
    result = train_refiner(new_refiner(real), generated, real, nbrs, small_settings(iterations=400))
    moved_real = (ode.refine(result.refiner, real, 1.0, 8) - real).norm(dim=1).mean()
    moved_noisy = (ode.refine(result.refiner, generated[real.shape[0]:], 1.0, 8)
                   - generated[real.shape[0]:]).norm(dim=1).mean()
    assert moved_real < 0.25 * moved_noisy, (moved_real, moved_noisy)


@pytest.mark.parametrize("solver", ode.SOLVERS)
def test_zero_velocity_is_the_identity(solver):
    x = torch.randn(3, 4, 5, 6)
    assert torch.equal(ode.integrate(lambda x, t: torch.zeros_like(x), x, 1.0, 7, solver), x)


def test_an_untrained_refiner_is_the_identity():
    for shape in [(2,), (3, 12, 10)]:
        x = torch.randn(4, *shape)
        refiner = Refiner(default_architecture(shape), mean=0.3, std=2.0)
        assert torch.equal(ode.refine(refiner, x, 1.0, 4, "heun"), x)


@pytest.mark.parametrize("solver,steps,tol,order", [("euler", 100, 1e-2, 1), ("heun", 20, 3e-3, 2),
                                                     ("dopri5", 4, 1e-6, None)])
def test_solvers_integrate_a_known_ode(solver, steps, tol, order):
    """dx/dt = −x·(1 + t): x(1) = x(0)·exp(−1.5); fixed-step errors shrink at the solver's order."""
    x = torch.randn(6, 2, dtype=torch.float64, generator=gen(4))
    exact = x * math.exp(-1.5)

    def error(n):
        out = ode.integrate(lambda x, t: -x * (1 + t), x, 1.0, n, solver, rtol=1e-7, atol=1e-9)
        return ((out - exact).abs() / exact.abs()).max().item()
    assert error(steps) < tol
    if order:
        assert error(2 * steps) == pytest.approx(error(steps) / 2 ** order, rel=0.1)


def test_strength_stops_part_of_the_way():
    x = torch.randn(5, 2, dtype=torch.float64)
    out = ode.integrate(lambda x, t: torch.ones_like(x), x, 0.25, 3, "euler")
    assert torch.allclose(out, x + 0.25)
    assert torch.equal(ode.integrate(lambda x, t: torch.ones_like(x), x, 0.0, 3, "euler"), x)


def test_bad_solver_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        ode.integrate(lambda x, t: x, torch.zeros(1), 1.0, 4, "rk4")
    with pytest.raises(ValueError, match="steps must be"):
        ode.integrate(lambda x, t: x, torch.zeros(1), 1.0, 0)


def test_faiss_top_k_equals_brute_force_search():
    g = gen(1)
    queries, database = torch.randn(300, 8, generator=g), torch.randn(1000, 8, generator=g)
    got = neighbours.top_k(queries, database, 5, chunk=64)
    want = torch.cdist(queries, database).topk(5, largest=False).indices
    assert got.shape == (300, 5) and got.dtype == torch.int64
    assert torch.equal(got, want)
    images = torch.randn(20, 3, 4, 4, generator=g)
    assert torch.equal(neighbours.top_k(images, images, 1)[:, 0], torch.arange(20))   # flattened, self is nearest


def test_neighbour_search_rejects_bad_k_and_mismatched_spaces():
    with pytest.raises(ValueError, match="k = 11"):
        neighbours.top_k(torch.randn(3, 2), torch.randn(10, 2), 11)
    with pytest.raises(ValueError, match="one space"):
        neighbours.top_k(torch.randn(3, 2), torch.randn(10, 3), 1)


def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    generated, real = blobs(128)
    nbrs = neighbours.top_k(generated, real, 5)
    settings = small_settings(iterations=20, batch_size=32)

    def run(settings, checkpoint=None):
        torch.manual_seed(0)                                          # the initial weights
        return train_refiner(new_refiner(real), generated, real, nbrs, settings, checkpoint)

    a, b = run(settings), run(settings)
    for pa, pb in zip(a.refiner.parameters(), b.refiner.parameters()):
        assert torch.equal(pa, pb)
    ckpt = tmp_path / "state.ckpt"
    first = run(small_settings(iterations=10, batch_size=32, checkpoint_every=5), ckpt)
    assert ckpt.is_file() and first.iterations == 10
    resumed = run(settings, ckpt)
    assert resumed.iterations == 20
    for pa, pr in zip(a.refiner.parameters(), resumed.refiner.parameters()):
        assert torch.allclose(pa, pr, atol=1e-6), (pa - pr).abs().max()


def test_save_load_round_trip_keeps_outputs_and_metadata(tmp_path):
    images = torch.rand(16, 3, 12, 12)
    refiner = new_refiner(images)
    with torch.no_grad():
        for p in refiner.parameters():
            p.add_(torch.randn(p.shape, generator=gen(2)) * 0.01)
    path = save_refiner(tmp_path / "r.safetensors", refiner, "pixel", (3, 12, 12), k=20,
                        data_sha256={"real": tensor_sha256(images)})
    loaded = load_refiner(path)
    assert loaded.space == "pixel" and loaded.sample_shape == (3, 12, 12) and loaded.channels == 3
    assert loaded.metadata["guidekit.k"] == "20"
    assert json.loads(loaded.metadata["guidekit.data_sha256"])["real"] == tensor_sha256(images)
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(loaded.refiner(x, 0.4), refiner.eval()(x, 0.4), atol=1e-6)
    assert loaded.refiner.data_std.item() == pytest.approx(images.std().item(), rel=1e-5)


def test_mismatched_weights_and_foreign_files_are_rejected(tmp_path):
    refiner = Refiner(default_architecture((3, 16, 16)))
    path = save_refiner(tmp_path / "r.safetensors", refiner, "latent", (3, 16, 16))
    meta = dict(load_refiner(path).metadata)
    state = {k: v.contiguous() for k, v in refiner.state_dict().items()}
    meta["guidekit.architecture"] = json.dumps({**json.loads(meta["guidekit.architecture"]), "width": 64})
    save_file(state, str(tmp_path / "wide.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="shape"):
        load_refiner(tmp_path / "wide.safetensors")
    state.pop(next(iter(state)))
    save_file(state, str(tmp_path / "short.safetensors"), metadata=load_refiner(path).metadata)
    with pytest.raises(ValueError, match="missing"):
        load_refiner(tmp_path / "short.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a GuideKit flow refiner"):
        load_refiner(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="space must be"):
        save_refiner(tmp_path / "x.safetensors", refiner, "voxels", (3, 16, 16))


def test_unet_refiner_takes_any_size_and_batch():
    refiner = Refiner(default_architecture((4, 64, 64)))
    with torch.no_grad():
        for p in refiner.net.out.parameters():
            p.normal_(0, 0.01, generator=gen())
        out = refiner(torch.randn(3, 4, 37, 50), torch.rand(3))
    assert out.shape == (3, 4, 37, 50) and torch.isfinite(out).all()
    assert default_architecture((2,))["arch"] == "mlp" and default_architecture((16, 128, 128))["mults"] == [1, 2, 2, 4]
    with pytest.raises(ValueError, match="shaped"):
        default_architecture((3, 4))


def test_one_for_all_pools_an_equal_number_from_each_scale():
    sets = [torch.full((n, 2), float(i)) for i, n in enumerate((10, 30, 7))]
    pooled = pool_equal(sets)
    assert pooled.shape == (21, 2)
    assert [(pooled[:, 0] == i).sum().item() for i in range(3)] == [7, 7, 7]


def test_data_loading_from_folders_and_tensor_files(tmp_path):
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(folder / "a.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(folder / "b.png")
    x = data.load_image_folder(folder, (10, 10))
    assert x.shape == (2, 3, 10, 10) and x[0, 0].min() > 0.99 and x[1, 2].min() > 0.99
    latents = torch.randn(5, 4, 8, 8)
    save_file({"latent_tensor": latents, "latent_format_version_0": torch.tensor([])}, str(tmp_path / "s.latent"))
    loaded, images = data.load_samples(tmp_path / "s.latent")
    assert torch.equal(loaded, latents) and not images
    with pytest.raises(ValueError, match="no images"):
        data.load_image_folder(tmp_path, (4, 4))


def test_command_line_trains_and_records_provenance(tmp_path):
    from guidekit.cli import train_refiner as cli
    generated, real = blobs(64)
    for name, x in (("g1", generated), ("g2", generated + 0.1), ("real", real)):
        save_file({"samples": x}, str(tmp_path / f"{name}.safetensors"))
    out = tmp_path / "refiners" / "toy.safetensors"
    args = ["--generated", str(tmp_path / "g1.safetensors"), str(tmp_path / "g2.safetensors"),
            "--real", str(tmp_path / "real.safetensors"), "--out", str(out), "--k", "4", "--iterations", "30",
            "--batch-size", "16", "--seed", "3", "--quiet"]
    assert cli.main(args) == 0
    loaded = load_refiner(out)
    meta = loaded.metadata
    assert loaded.space == "vector" and loaded.sample_shape == (2,)
    assert meta["guidekit.k"] == "4" and meta["guidekit.sets"] == "2" and meta["guidekit.iterations"] == "30"
    assert "--iterations 30" in meta["guidekit.command"]
    assert len(json.loads(meta["guidekit.data_sha256"])["generated"]) == 2
    assert (tmp_path / "refiners" / "toy.safetensors.ckpt").is_file()
    with pytest.raises(SystemExit):
        cli.main(args[:-1] + ["--out", str(tmp_path / "x.pt")])
