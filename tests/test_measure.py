import torch

from vaehelpers.measure import active_units, aggregate_kl, image_diversity, summarize_codes
from vaehelpers.model import ConvVAE


def test_active_units_count_dimensions_whose_mean_varies():
    torch.manual_seed(0)
    mu = torch.zeros(500, 5)
    mu[:, 0] = torch.randn(500)  # variance 1: active
    mu[:, 1] = 0.05 * torch.randn(500)  # variance 0.0025: inactive
    assert active_units(mu) == 1


def test_encoder_that_ignores_its_input_has_no_active_units():
    model = ConvVAE(latent_dim=6, image_size=32, base_channels=4)
    torch.nn.init.zeros_(model.encoder[-1].weight)  # μ and log σ² are the bias alone, for every image
    images = (torch.rand(50, 3, 32, 32) * 255).to(torch.uint8)
    summary = summarize_codes(model, images)
    assert summary.active_units == 0 and summary.code_std == 0


def test_aggregate_kl_is_zero_for_codes_from_the_prior_and_grows_with_a_shift():
    torch.manual_seed(0)
    z = torch.randn(20000, 4)
    collapsed = torch.full((20000, 4), -20.0)  # σ ≈ 0: every code a point
    assert abs(aggregate_kl(z, collapsed)) < 0.01
    assert aggregate_kl(z + 2, collapsed) > 7  # 0.5 * |m|² = 8
    # q(z|x) equal to the prior for every image (posterior collapse) also fills the prior.
    assert abs(aggregate_kl(torch.zeros(1000, 4), torch.zeros(1000, 4))) < 0.01


def test_image_diversity():
    same = torch.full((10, 3, 8, 8), 100, dtype=torch.uint8)
    assert image_diversity(same) == 0
    assert image_diversity((torch.rand(10, 3, 8, 8) * 255).to(torch.uint8)) > 0.2
