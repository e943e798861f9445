import math

import torch

from vaehelpers.measure import (active_units, aggregate_kl, encode_all, factor_r2, image_diversity, iwae_bound,
                                measure_run, mmd, probe_r2, traverse)
from vaehelpers.model import ConvVAE
from vaehelpers.objective import calibrated_nll
from vaehelpers.train import fit


def test_active_units_count_dimensions_whose_mean_varies():
    torch.manual_seed(0)
    mu = torch.zeros(500, 5)
    mu[:, 0] = torch.randn(500)  # variance 1: active
    mu[:, 1] = 0.05 * torch.randn(500)  # variance 0.0025: inactive
    assert active_units(mu) == 1


def test_encoder_that_ignores_its_input_has_no_active_units():
    model = ConvVAE(latent_dim=6, image_size=32, base_channels=4)
    torch.nn.init.zeros_(model.encoder[-1].weight)  # μ and log σ² are the bias alone, for every image
    mu, _ = encode_all(model, (torch.rand(50, 3, 32, 32) * 255).to(torch.uint8))
    assert active_units(mu) == 0


def test_aggregate_kl_is_zero_for_codes_from_the_prior_and_grows_with_a_shift():
    torch.manual_seed(0)
    z = torch.randn(20000, 4)
    points = torch.full((20000, 4), -20.0)  # σ ≈ 0: every code a point
    assert abs(aggregate_kl(z, points)) < 0.01
    assert aggregate_kl(z + 2, points) > 7  # 0.5 * |m|² = 8
    assert abs(aggregate_kl(torch.zeros(1000, 4), torch.zeros(1000, 4))) < 0.01  # q(z|x) = p(z) for all x


def test_mmd_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    torch.manual_seed(0)
    a, b = torch.randn(300, 10), torch.randn(300, 10)
    assert abs(mmd(a, a)) < 0.01 and abs(mmd(a, b)) < 0.01
    assert mmd(a, b + 0.5) > 0.05 and mmd(a, b + 1.0) > mmd(a, b + 0.5)


def test_probe_recovers_a_factor_linear_in_z_and_not_noise():
    torch.manual_seed(0)
    z = torch.randn(1200, 6)
    factor = 2 * z[:, 1] - z[:, 4] + 0.3
    assert probe_r2(z[:1000], factor[:1000], z[1000:], factor[1000:]) > 0.99
    assert probe_r2(z[:1000], torch.randn(1000), z[1000:], torch.randn(200)) < 0.1
    hue = (torch.atan2(z[:, 2], z[:, 3]) / (2 * math.pi)) % 1  # a circular factor read through cos and sin
    scores = factor_r2(z[:1000], {"hair_hue": hue[:1000], "eye_size": factor[:1000]},
                       z[1000:], {"hair_hue": hue[1000:], "eye_size": factor[1000:]})
    assert scores["eye_size"] > 0.99 and scores["hair_hue"] > 0.5


def test_calibrated_nll_is_the_minimum_over_sigma():
    sse, dims = torch.tensor(30.0), 1000
    best = calibrated_nll(sse, dims)
    for variance in (0.01, 0.03, 0.1):
        nll = sse / (2 * variance) + 0.5 * dims * math.log(2 * math.pi * variance)
        assert best <= nll + 1e-3


def test_image_diversity():
    assert image_diversity(torch.full((10, 3, 8, 8), 100, dtype=torch.uint8)) == 0
    assert image_diversity((torch.rand(10, 3, 8, 8) * 255).to(torch.uint8)) > 0.2


def test_iwae_is_tighter_than_the_elbo_and_tightens_with_k(tmp_path):
    run = fit(data="builtin:300", image_size=32, base_channels=8, latent_dim=4, epochs=4, batch_size=50, lr=2e-3,
              runs_dir=tmp_path, progress=False)
    images = torch.load(run.dir / "snapshots.pt", weights_only=True)["panel"]
    bounds = {k: iwae_bound(run.model, images, torch.Generator().manual_seed(1), k=k).mean().item() for k in (1, 8, 64)}
    assert bounds[64] < bounds[8] < bounds[1]
    elbo = run.history["val_neg_elbo"][-1]
    assert bounds[64] < elbo and abs(bounds[1] - elbo) < 0.05 * elbo

    measured = measure_run(run, k=16, iwae_images=8, mmd_images=30, probe_images=100)
    assert measured["iwae_neg_log_px"] <= measured["neg_elbo"] and len(measured["kl_per_dim"]) == 4
    assert set(measured["probe_r2"]) >= {"hair_length", "eye_size", "hair_hue"}
    assert measure_run(run, k=16, iwae_images=8, mmd_images=30, probe_images=100)["seconds"] == measured["seconds"]
    grid = traverse(run.model, images[0].float() / 255, dims=[0, 2], values=[-3, 0, 3])
    assert grid.shape == (6, 3, 32, 32) and not torch.equal(grid[0], grid[2])
