import pytest
import torch

from vaehelpers.model import ConvVAE


@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes_and_range(size):
    model = ConvVAE(latent_dim=7, image_size=size, base_channels=8)
    x = torch.rand(3, 3, size, size)
    x_hat, mu, logvar = model(x)
    assert x_hat.shape == x.shape and mu.shape == logvar.shape == (3, 7)
    assert 0 <= x_hat.min() and x_hat.max() <= 1
    assert model.sample(5).shape == (5, 3, size, size)
    assert model.decode(model.encode(x)[0]).shape == x.shape


def test_reparameterisation_uses_mu_and_sigma():
    mu, logvar = torch.full((20000, 1), 2.0), torch.full((20000, 1), 2 * torch.log(torch.tensor(3.0)))
    z = ConvVAE.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 2.0) < 0.1 and abs(z.std().item() - 3.0) < 0.1


def test_bad_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="power of two"):
        ConvVAE(image_size=48)
