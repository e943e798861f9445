"""Measurements of a trained model on held-out images (all in nats unless stated).

These back the report's discussion with numbers: how much information the codes carry
(KL per latent dimension, active units), and how the codes of real images sit relative
to the prior that samples are drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import batches
from .model import ConvVAE
from .objective import kl_per_dim


@torch.no_grad()
def encode_all(model: ConvVAE, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """μ and log σ² of q(z|x) for every image of a uint8 N×3×S×S set, on the CPU (float32)."""
    model.eval()
    device = next(model.parameters()).device
    mus, logvars = [], []
    for x in batches(images.to(device), batch_size):
        mu, logvar = model.encode(x)
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus), torch.cat(logvars)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies over the data: Var_x(E_q[z|x]) > threshold.

    Burda, Grosse & Salakhutdinov 2016 ("Importance Weighted Autoencoders"), section 5.2.
    """
    return int((mu.var(dim=0) > threshold).sum())


def aggregate_kl(mu: torch.Tensor, logvar: torch.Tensor) -> float:
    """KL( N(m, S) ‖ N(0, I) ) for the Gaussian fitted to the aggregate posterior q(z) = E_x q(z|x).

    m is the mean of μ over the data and S = Cov_x(μ) + E_x[diag σ²]. Near 0 when the codes
    of real images fill the prior; large when they sit in a small or shifted region of it,
    so that most prior samples land where the decoder has seen no codes ("prior holes").
    """
    mu64, var64 = mu.double(), logvar.double().exp()
    m = mu64.mean(dim=0)
    cov = torch.cov(mu64.T).reshape(len(m), len(m)) + torch.diag(var64.mean(dim=0))
    return float(0.5 * (torch.trace(cov) + m @ m - len(m) - torch.logdet(cov)))


def image_diversity(images: torch.Tensor) -> float:
    """Mean over pixels of the standard deviation across a set of uint8 images, on [0, 1]."""
    return float((images.float() / 255).std(dim=0).mean())


@dataclass
class CodeSummary:
    """How a model uses its latent space on a set of images."""

    kl_per_dim: torch.Tensor  # mean KL of each latent dimension, nats per image
    active_units: int
    code_std: float  # spread of μ over the data, averaged over dimensions (the prior's is 1)
    posterior_std: float  # mean σ of q(z|x) (the prior's is 1)
    aggregate_kl: float  # see aggregate_kl()

    @property
    def kl(self) -> float:
        return float(self.kl_per_dim.sum())


def summarize_codes(model: ConvVAE, images: torch.Tensor) -> CodeSummary:
    mu, logvar = encode_all(model, images)
    return CodeSummary(
        kl_per_dim=kl_per_dim(mu, logvar).mean(dim=0),
        active_units=active_units(mu),
        code_std=float(mu.std(dim=0).mean()),
        posterior_std=float(torch.exp(0.5 * logvar).mean()),
        aggregate_kl=aggregate_kl(mu, logvar),
    )
