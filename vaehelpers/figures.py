"""Figures of a run: learning curve, reconstructions, prior samples, interpolation.

Each function returns a matplotlib ``Figure`` and draws only what the run already
stores (or what a tensor function below computes), so a notebook needs one line a figure.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from .model import ConvVAE
from .objective import bits_per_dim
from .train import Run, to_uint8


def grid_image(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """uint8 N×3×S×S images to one H×W×3 uint8 grid (torchvision's make_grid, white gaps)."""
    return make_grid(images, nrow=nrow, padding=2, pad_value=255).permute(1, 2, 0)


def _show(ax, images: torch.Tensor, nrow: int, title: str = "") -> None:
    ax.imshow(grid_image(images, nrow).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)


def learning_curve(run: Run, title: str | None = None) -> Figure:
    """−ELBO per epoch (train and validation), and its reconstruction and KL terms."""
    h = run.history
    fig, (ax_elbo, ax_terms) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for split, style in (("train", "-"), ("val", "--")):
        label = "training" if split == "train" else "validation"
        ax_elbo.plot(h["epoch"], h[f"{split}_neg_elbo"], style, marker=".", label=label)
        ax_terms.plot(h["epoch"], h[f"{split}_recon"], style, color="C0", label=f"reconstruction ({label})")
        ax_terms.plot(h["epoch"], h[f"{split}_kl"], style, color="C3", label=f"KL ({label})")
    num_dims = 3 * run.config.image_size**2
    ax_elbo.set(xlabel="epoch", ylabel="−ELBO (nats per image)", title="Negative ELBO (KL weight 1, σ² = 1/2)")
    secondary = ax_elbo.secondary_yaxis(
        "right", functions=(lambda n: bits_per_dim(n, num_dims), lambda b: b * num_dims * 0.6931471805599453)
    )
    secondary.set_ylabel("bits per dimension")
    ax_elbo.legend()
    ax_terms.set(xlabel="epoch", ylabel="nats per image", yscale="log", title="Terms: Σ(x − x̂)² and KL(q ‖ p)")
    ax_terms.legend(fontsize=8)
    fig.suptitle(title or f"Learning curve, trained with KL weight {run.config.kl_weight:g}")
    return fig


def reconstructions(run: Run, epochs: list[int] | None = None) -> Figure:
    """The fixed validation panel (top row) above its reconstructions at each epoch."""
    stored = sorted(run.snapshots["epochs"])
    epochs = [e for e in (epochs or stored) if e in run.snapshots["epochs"]]
    if not epochs:
        raise ValueError(f"No snapshots in {run.dir} for epochs {epochs}; stored: {stored}.")
    panel = run.snapshots["panel"]
    fig, axes = plt.subplots(len(epochs), 1, figsize=(1.1 * len(panel), 2.4 * len(epochs)), squeeze=False)
    for ax, epoch in zip(axes[:, 0], epochs):
        _show(ax, torch.cat([panel, run.snapshots["epochs"][epoch]["recon"]]), len(panel),
              f"epoch {epoch}: originals (top), reconstructions (bottom)")
    fig.suptitle(f"Reconstructions of validation images, KL weight {run.config.kl_weight:g}")
    fig.tight_layout()
    return fig


def prior_samples(run: Run, epoch: int | None = None, nrow: int = 8) -> Figure:
    """Decodings of the run's fixed prior codes z ~ N(0, I) at one snapshot epoch (default: the last)."""
    epoch = epoch or max(run.snapshots["epochs"])
    samples = run.snapshots["epochs"][epoch]["samples"]
    fig, ax = plt.subplots(figsize=(1.1 * nrow, 1.1 * len(samples) / nrow + 0.5))
    _show(ax, samples, nrow)
    ax.set_title(f"Samples from the prior p(z) = N(0, I), KL weight {run.config.kl_weight:g}, epoch {epoch}")
    fig.tight_layout()
    return fig


@torch.no_grad()
def interpolate(model: ConvVAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Decode points on the line between μ(x_a) and μ(x_b), ends included: ``steps`` images.

    ``x_a`` and ``x_b`` are float images 3×S×S in [0, 1]; returns uint8 steps×3×S×S.
    """
    device = next(model.parameters()).device
    mu, _ = model.encode(torch.stack([x_a, x_b]).to(device))
    t = torch.linspace(0, 1, steps, device=device)[:, None]
    return to_uint8(model.decode((1 - t) * mu[0] + t * mu[1]))


def interpolation(run: Run, a: int = 0, b: int = 1, steps: int = 8) -> Figure:
    """Real image a, the decoded path from μ(a) to μ(b) (its ends are the reconstructions), real image b.

    ``a`` and ``b`` index the run's fixed validation panel, so every setting shows the same pair.
    """
    panel = run.snapshots["panel"]
    path = interpolate(run.model, panel[a].float() / 255, panel[b].float() / 255, steps)
    row = torch.cat([panel[a : a + 1], path, panel[b : b + 1]])
    fig, ax = plt.subplots(figsize=(1.1 * len(row), 1.7))
    _show(ax, row, len(row))
    ax.set_title(f"Interpolation, KL weight {run.config.kl_weight:g}: real image, decoded path from μ(a) to μ(b), real image")
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Save a figure as PNG (150 dpi) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path
