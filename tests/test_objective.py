import math

import torch

from vaehelpers.objective import HALF_LOG_PI, bits_per_dim, gaussian_kl, kl_per_dim, neg_elbo, squared_error, vae_loss


def test_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 4), torch.randn(3, 4) * 0.5
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    z = q.sample((200_000,))
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(gaussian_kl(mu, logvar), monte_carlo, atol=0.02, rtol=0.01)


def test_kl_is_zero_only_at_the_prior():
    assert gaussian_kl(torch.zeros(1, 5), torch.zeros(1, 5)).item() == 0.0
    assert (kl_per_dim(torch.tensor([[0.1, 0.0]]), torch.tensor([[0.0, 0.2]])) > 0).all()


def test_neg_elbo_by_hand_on_a_tiny_case():
    # One image of D = 2 pixels, two latent dimensions.
    x = torch.tensor([[[[0.0, 1.0]]]])
    x_hat = torch.tensor([[[[0.5, 0.5]]]])
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    # recon = 0.25 + 0.25; KL = 0.5 (1 + 1 - 1 - 0) + 0.5 (0 + 2 - 1 - ln 2); constant = 2 * 0.5 ln(pi)
    by_hand = 0.5 + 0.5 + 0.5 * (1 - math.log(2)) + math.log(math.pi)
    loss = vae_loss(x, x_hat, mu, logvar, kl_weight=1.0)
    assert math.isclose(loss.neg_elbo.item(), by_hand, rel_tol=1e-6)
    # The same number from the Gaussian density with variance 1/2 itself.
    nll = -torch.distributions.Normal(x_hat, math.sqrt(0.5)).log_prob(x).sum()
    assert math.isclose(loss.neg_elbo.item(), (nll + loss.kl).item(), rel_tol=1e-6)


def test_kl_weight_scales_only_the_objective():
    torch.manual_seed(1)
    x, x_hat = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    mu, logvar = torch.randn(4, 5), torch.randn(4, 5)
    one, hundred = vae_loss(x, x_hat, mu, logvar, 1.0), vae_loss(x, x_hat, mu, logvar, 100.0)
    torch.testing.assert_close(hundred.objective, one.recon + 100 * one.kl)
    torch.testing.assert_close(hundred.neg_elbo, one.neg_elbo)  # the bound always uses weight 1
    torch.testing.assert_close(one.recon, squared_error(x, x_hat).mean())
    torch.testing.assert_close(one.neg_elbo, neg_elbo(squared_error(x, x_hat), gaussian_kl(mu, logvar), 192).mean())


def test_kl_weight_zero_sends_no_gradient_through_the_kl():
    x = torch.rand(2, 3, 4, 4)
    x_hat = torch.rand(2, 3, 4, 4, requires_grad=True)
    mu, logvar = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    vae_loss(x, x_hat, mu, logvar, kl_weight=0.0).objective.backward()
    assert torch.count_nonzero(mu.grad) == 0 and torch.count_nonzero(logvar.grad) == 0
    assert torch.count_nonzero(x_hat.grad) > 0
    mu.grad = logvar.grad = None
    vae_loss(x, x_hat, mu, logvar, kl_weight=1.0).objective.backward()
    assert torch.count_nonzero(mu.grad) > 0


def test_bits_per_dim():
    assert math.isclose(bits_per_dim(12288 * math.log(2), 12288), 1.0)
    assert math.isclose(HALF_LOG_PI, 0.5723649429247001)


def test_sigma_vae_neg_elbo_is_the_gaussian_density_at_the_calibrated_variance():
    torch.manual_seed(2)
    x, x_hat = torch.rand(3, 3, 4, 4), torch.rand(3, 3, 4, 4)
    mu, logvar = torch.randn(3, 2), torch.randn(3, 2)
    loss = vae_loss(x, x_hat, mu, logvar, kl_weight=0.5, likelihood="sigma-vae")
    variance = (x - x_hat).pow(2).mean()  # σ² at its optimum: the batch's mean squared error per pixel
    nll = -torch.distributions.Normal(x_hat, variance.sqrt()).log_prob(x).flatten(1).sum(1).mean()
    kl = gaussian_kl(mu, logvar).mean()
    torch.testing.assert_close(loss.neg_elbo, nll + kl)
    torch.testing.assert_close(loss.objective, nll + 0.5 * kl)  # the weight scales the KL of the objective only
    torch.testing.assert_close(loss.recon, squared_error(x, x_hat).mean())
