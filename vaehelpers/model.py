"""The convolutional VAE (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

Encoder: stride-2 4×4 convolutions with ReLU halve the image down to 4×4, then one
linear layer gives μ and log σ² of q(z|x) = N(μ, diag σ²). Decoder: a linear layer back
to 4×4 feature maps, stride-2 4×4 transposed convolutions with ReLU up to the image
size, and a sigmoid so outputs lie in [0, 1] like the inputs. Channels double at each
halving, from ``base_channels`` up to ``max_channels``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = 20
    image_size: int = 64  # a power of two, at least 8: 32, 64 and 128 are the usual
    base_channels: int = 32
    max_channels: int = 256

    def __post_init__(self) -> None:
        size = self.image_size
        if size < 8 or size & (size - 1):
            raise ValueError(f"image_size must be a power of two of at least 8 (e.g. 32, 64, 128), got {size}.")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be at least 1, got {self.latent_dim}.")
        if not 1 <= self.base_channels <= self.max_channels:
            raise ValueError(f"base_channels must be at least 1 and at most max_channels ({self.max_channels}), "
                             f"got {self.base_channels}.")

    @property
    def channels(self) -> list[int]:
        n_halvings = self.image_size.bit_length() - 3  # image_size / 2**n == 4
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(n_halvings)]


class ConvVAE(nn.Module):
    def __init__(self, latent_dim: int = 20, image_size: int = 64, base_channels: int = 32, max_channels: int = 256):
        super().__init__()
        self.config = cfg = VAEConfig(latent_dim, image_size, base_channels, max_channels)
        chans = cfg.channels
        down: list[nn.Module] = []
        for c_in, c_out in zip([3] + chans[:-1], chans):
            down += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(chans[-1] * 16, 2 * latent_dim))
        up: list[nn.Module] = [nn.Linear(latent_dim, chans[-1] * 16), nn.ReLU(), nn.Unflatten(1, (chans[-1], 4, 4))]
        for c_in, c_out in zip(chans[::-1], chans[-2::-1] + [3]):
            up += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        up[-1] = nn.Sigmoid()
        self.decoder = nn.Sequential(*up)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images B×3×S×S in [0, 1] to (μ, log σ²), each B×latent_dim."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes B×latent_dim to images B×3×S×S in [0, 1] (the Gaussian means)."""
        return self.decoder(z)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None,
                       eps: torch.Tensor | None = None) -> torch.Tensor:
        """z = μ + σ·ε with ε ~ N(0, I) (drawn with ``generator``, or given, e.g. k×B×d for k samples each),
        so that gradients flow to μ and σ."""
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (reconstruction, μ, log σ²) for one sample z ~ q(z|x)."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar, generator)), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode ``n`` codes drawn from the prior p(z) = N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.decode(z)

    def hparams(self) -> dict:
        return asdict(self.config)


def describe(module: nn.Module) -> str:
    """A short name for a layer: 'Conv2d 3→32, 4×4, stride 2', 'Linear 4096→40', 'ReLU'."""
    name = type(module).__name__
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        k, s = module.kernel_size, module.stride
        return f"{name} {module.in_channels}→{module.out_channels}, {k[0]}×{k[1]}, stride {s[0]}"
    if isinstance(module, nn.Linear):
        return f"{name} {module.in_features}→{module.out_features}"
    return name


@torch.no_grad()
def layer_table(model: ConvVAE) -> list[dict]:
    """One row per layer of the encoder and decoder: name, output shape (per image), parameters.

    Found by passing one image through the model, so it describes the model as built.
    """
    rows: list[dict] = []

    def record(part: str):
        def hook(module: nn.Module, inputs, output) -> None:
            rows.append({"part": part, "layer": describe(module), "output": tuple(output.shape[1:]),
                         "parameters": sum(p.numel() for p in module.parameters())})
        return hook

    handles = [m.register_forward_hook(record(part)) for part, seq in (("encoder", model.encoder), ("decoder", model.decoder))
               for m in seq]
    try:
        device = next(model.parameters()).device
        size = model.config.image_size
        mu, _ = model.encode(torch.zeros(1, 3, size, size, device=device))
        model.decode(mu)
    finally:
        for h in handles:
            h.remove()
    return rows
