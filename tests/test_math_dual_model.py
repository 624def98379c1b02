"""Tier 1: Autoguidance, SIMS, ICG and TSG math, pure torch (no ComfyUI)."""
import pytest
import torch

from guidekit.guidance.autoguidance import autoguidance, autoguidance_term
from guidekit.guidance.combine import cfg, extrapolate
from guidekit.guidance.icg import derangement, gaussian_condition, random_rows, shuffled_tokens
from guidekit.guidance.sims import denoising_loss, sims, sims_as_autoguidance
from guidekit.guidance.tsg import perturbed_time_embedding

from guidance_helpers import rand


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_autoguidance_is_edm2s_lerp_and_cfg_is_its_special_case():
    main, weak = rand(2, 4, 8, 8, seed=1), rand(2, 4, 8, 8, seed=2)
    torch.testing.assert_close(autoguidance(main, weak, 2.3), torch.lerp(weak, main, 2.3))
    torch.testing.assert_close(autoguidance(main, weak, 1.0), main)
    torch.testing.assert_close(autoguidance(main, weak, 3.0), cfg(main, weak, 3.0))   # weak = uncond model
    # as a term on top of another guided result (CFG off: base = D_main) it is the same number
    torch.testing.assert_close(extrapolate(main, [(autoguidance_term(2.3), main, weak)]), autoguidance(main, weak, 2.3))


def test_sims_is_autoguidance_with_w_one_plus_omega():
    base, self_trained = rand(3, 5, seed=3), rand(3, 5, seed=4)
    torch.testing.assert_close(sims(base, self_trained, 0.0), base)
    torch.testing.assert_close(sims(base, self_trained, 1.5),
                               autoguidance(base, self_trained, sims_as_autoguidance(1.5)))
    torch.testing.assert_close(sims(base, self_trained, 1.5), 2.5 * base - 1.5 * self_trained)


def test_gaussian_condition_matches_each_rows_scale():
    emb = torch.cat([rand(1, 77, 64, seed=5) * 3 + 1, rand(1, 77, 64, seed=6) * 0.1 - 2])
    out = gaussian_condition(emb, gen())
    assert out.shape == emb.shape
    for row in range(2):
        assert abs(out[row].mean() - emb[row].mean()) < 0.05 * emb[row].std() + 1e-3
        assert abs(out[row].std() / emb[row].std() - 1) < 0.05
    assert (out - emb).abs().mean() > 0.5 * emb.std(dim=(1, 2)).min()      # independent of the embedding
    torch.testing.assert_close(gaussian_condition(emb, gen(1)), gaussian_condition(emb, gen(1)))


def test_shuffled_tokens_permutes_each_row():
    emb = rand(2, 10, 4, seed=7)
    out = shuffled_tokens(emb, gen())
    for row in range(2):
        assert sorted(map(tuple, out[row].tolist())) == sorted(map(tuple, emb[row].tolist()))
    assert not torch.equal(out, emb)


@pytest.mark.parametrize("count", [2, 3, 7, 16])
def test_derangement_has_no_fixed_point(count):
    for seed in range(20):
        order = derangement(count, gen(seed))
        assert sorted(order.tolist()) == list(range(count)) and (order != torch.arange(count)).all()
    with pytest.raises(ValueError):
        derangement(1, gen())


def test_random_rows_cover_the_pool():
    picks = random_rows(torch.zeros(10, 1, 11), 1000, gen())
    assert picks.min() == 0 and picks.max() == 9 and len(picks.unique()) == 10


def test_tsg_perturbation_is_s_t_alpha_n():
    t_emb, t = rand(4, 32, seed=8), torch.tensor([0.0, 0.25, 0.5, 1.0])
    noise = torch.randn(t_emb.shape, generator=gen(3))
    out = perturbed_time_embedding(t_emb, t, 0.8, 2.0, gen(3))
    torch.testing.assert_close(out, t_emb + 0.8 * t.pow(2.0)[:, None] * noise)
    torch.testing.assert_close(perturbed_time_embedding(t_emb, t, 0.0, 2.0, gen(3)), t_emb)
    torch.testing.assert_close(out[0], t_emb[0])                   # t = 0: no noise


def test_denoising_loss_is_the_eps_loss_for_eps_models():
    x0, eps, sigma = rand(4, 3, 8, 8, seed=9), rand(4, 3, 8, 8, seed=10), torch.tensor([0.1, 1.0, 5.0, 14.0])
    x = x0 + sigma.view(-1, 1, 1, 1) * eps
    eps_hat = eps + 0.1 * rand(4, 3, 8, 8, seed=11)
    denoised = x - sigma.view(-1, 1, 1, 1) * eps_hat
    torch.testing.assert_close(denoising_loss(denoised, x0, sigma), ((eps_hat - eps) ** 2).mean())
