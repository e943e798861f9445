"""The VAE objective, with its units stated.

Conventions (Kingma & Welling 2014, eq. 10; the assignment's "MSE summed over pixels"):

* Pixels x are scaled to [0, 1]; D = 3·H·W is the number of dimensions of an image.
* Reconstruction term: the squared error **summed** over the D pixels of an image,
  ``sum (x - x̂)²``. This is the negative log-likelihood of a Gaussian decoder
  N(x; x̂, σ² I) with σ² = 1/2, **up to the constant** (D/2)·log π.
* KL term: the closed-form KL( N(μ, σ²) ‖ N(0, I) ), **summed** over latent dimensions.
* Both terms are **averaged over the images** of a batch (nats per image).
* Training objective: ``recon + kl_weight · kl``. ``kl_weight`` enters nowhere else.
* True negative ELBO, in nats per image: ``recon + (D/2)·log π + kl`` — the weight is
  always 1 and the Gaussian constant is included, so it is an upper bound on −log p(x)
  whatever ``kl_weight`` was used for training.
* Bits per dimension: ``neg_elbo / (D · ln 2)``, for the density of pixels on [0, 1].
  For the convention of likelihood papers (pixels 0..255 with uniform dequantisation)
  add log2(256) = 8 bits.

The option ``likelihood="sigma-vae"`` replaces the fixed σ² = 1/2 by its optimum, the
batch's mean squared error per pixel (Rybkin, Daniilidis & Levine 2021, "Simple and
Effective VAE Training with Calibrated Decoders"). The Gaussian NLL then becomes
(D/2)·(log(2π σ²) + 1), and ``neg_elbo`` is the bound under that calibrated decoder.
A fixed σ² is the same as a KL weight: ``SSE / (2σ²) + KL`` is proportional to
``SSE + 2σ² · KL``, so weight β with σ² = 1/2 equals weight 1 with σ² = β/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

HALF_LOG_PI = 0.5 * math.log(math.pi)
"""Per-dimension constant of the Gaussian log-density with σ² = 1/2, in nats."""


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(μ, σ²) ‖ N(0, 1) ) for each latent dimension, B×latent_dim, in nats."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( q(z|x) ‖ p(z) ) per image (summed over latent dimensions), shape B, in nats."""
    return kl_per_dim(mu, logvar).sum(dim=1)


def squared_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared error summed over all pixels and channels of each image, shape B."""
    return (x.float() - x_hat.float()).pow(2).flatten(1).sum(dim=1)


def neg_elbo(sq_err: torch.Tensor, kl: torch.Tensor, num_dims: int) -> torch.Tensor:
    """True −ELBO in nats: Gaussian NLL with σ² = 1/2 (constant included) plus the KL, weight 1."""
    return sq_err + num_dims * HALF_LOG_PI + kl


def bits_per_dim(nats: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """Nats per image to bits per dimension (pixels on [0, 1])."""
    return nats / (num_dims * math.log(2))


def calibrated_nll(mean_sq_err: torch.Tensor | float, num_dims: int) -> torch.Tensor:
    """Gaussian NLL per image, in nats, with σ² set to its optimum, the mean squared error per pixel."""
    variance = torch.as_tensor(mean_sq_err) / num_dims
    return 0.5 * num_dims * (torch.log(2 * math.pi * variance) + 1)


Likelihood = Literal["fixed", "sigma-vae"]
LIKELIHOODS: tuple[Likelihood, ...] = ("fixed", "sigma-vae")
"""The decoder's variance: σ² = 1/2 ("fixed", the assignment's summed MSE) or at its optimum ("sigma-vae")."""


def decoder_variance(likelihood: Likelihood) -> str:
    """How figures and tables state the decoder variance a likelihood uses."""
    return "σ² = 1/2" if likelihood == "fixed" else "σ² = MSE per pixel (σ-VAE)"


@dataclass
class VAELoss:
    """Batch means, in nats per image. ``objective`` is what training minimises."""

    objective: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    neg_elbo: torch.Tensor


def vae_loss(
    x: torch.Tensor, x_hat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, kl_weight: float = 1.0,
    likelihood: Likelihood = "fixed",
) -> VAELoss:
    """The terms of the objective for one batch (see the module docstring for units)."""
    recon = squared_error(x, x_hat)
    kl = gaussian_kl(mu, logvar)
    num_dims = x[0].numel()
    if likelihood == "fixed":
        return VAELoss(objective=(recon + kl_weight * kl).mean(), recon=recon.mean(), kl=kl.mean(),
                       neg_elbo=neg_elbo(recon, kl, num_dims).mean())
    if likelihood == "sigma-vae":
        nll = calibrated_nll(recon.mean(), num_dims)
        return VAELoss(objective=nll + kl_weight * kl.mean(), recon=recon.mean(), kl=kl.mean(),
                       neg_elbo=nll + kl.mean())
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}; got {likelihood!r}.")
