"""Figures of runs: learning curves, reconstructions, prior samples, interpolations.

Each function returns a matplotlib ``Figure`` (not registered with pyplot, so a notebook
shows it once, as the cell's value) and draws only what the runs store, or what
:func:`interpolate` computes, so a notebook needs one line a figure. The ``compare_*``
functions put several KL weights side by side on the same images.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from .stats import mean_sd
from .model import ConvVAE
from .objective import bits_per_dim, decoder_variance
from .store import Run, Setting, key_epochs
from .decode import to_uint8


def grid_image(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """uint8 N×3×S×S images to one H×W×3 uint8 grid (torchvision's make_grid, white gaps)."""
    return make_grid(images, nrow=nrow, padding=2, pad_value=255).permute(1, 2, 0)


def _show(ax, images: torch.Tensor, nrow: int, title: str = "") -> None:
    ax.imshow(grid_image(images, nrow).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)


def learning_curve(run: Run) -> Figure:
    """−ELBO per epoch (training and validation), and its reconstruction and KL terms."""
    h = run.history
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_elbo, ax_terms = fig.subplots(1, 2)
    for split, style in (("train", "-"), ("val", "--")):
        label = "training" if split == "train" else "validation"
        ax_elbo.plot(h["epoch"], h[f"{split}_neg_elbo"], style, marker=".", label=label)
        ax_terms.plot(h["epoch"], h[f"{split}_recon"], style, color="C0", label=f"reconstruction ({label})")
        ax_terms.plot(h["epoch"], h[f"{split}_kl"], style, color="C3", label=f"KL ({label})")
    num_dims = 3 * run.config.image_size**2
    ax_elbo.set(xlabel="epoch", ylabel="−ELBO (nats per image)", title=f"−ELBO (KL counted once, {decoder_variance(run.config.likelihood)})")
    secondary = ax_elbo.secondary_yaxis("right", functions=(lambda n: bits_per_dim(n, num_dims),
                                                            lambda b: b * num_dims * math.log(2)))
    secondary.set_ylabel("bits per dimension")
    ax_elbo.legend()
    ax_terms.set(xlabel="epoch", ylabel="nats per image", yscale="log", title="Terms: Σ(x − x̂)² and KL(q ‖ p)")
    ax_terms.legend(fontsize=8)
    fig.suptitle(f"Learning curve, trained with {run.label}")
    return fig


def reconstructions(run: Run, epochs: list[int] | None = None) -> Figure:
    """The fixed validation panel (top row) above its reconstructions, one block per epoch.

    ``epochs`` defaults to 10 %, 50 % and 100 % of the run (10, 50 and 100 for 100 epochs).
    """
    stored = sorted(run.snapshots["epochs"])
    epochs = [e for e in (epochs or key_epochs(run.config.epochs)) if e in run.snapshots["epochs"]]
    if not epochs:
        raise ValueError(f"No snapshots in {run.dir} for those epochs; stored: {stored}.")
    panel = run.snapshots["panel"]
    fig = Figure(figsize=(1.1 * len(panel), 2.4 * len(epochs) + 0.4), layout="constrained")
    for ax, epoch in zip(fig.subplots(len(epochs), 1, squeeze=False)[:, 0], epochs):
        _show(ax, torch.cat([panel, run.snapshots["epochs"][epoch]["recon"]]), len(panel),
              f"epoch {epoch}: originals (top), reconstructions (bottom)")
    fig.suptitle(f"Reconstructions of validation images, {run.label}")
    return fig


def prior_samples(run: Run, epoch: int | None = None, nrow: int = 8) -> Figure:
    """Decodings of the run's fixed prior codes z ~ N(0, I) at one snapshot epoch (default: the last)."""
    epoch = epoch or max(run.snapshots["epochs"])
    samples = run.snapshots["epochs"][epoch]["samples"]
    fig = Figure(figsize=(1.1 * nrow, 1.1 * math.ceil(len(samples) / nrow) + 0.5), layout="constrained")
    _show(fig.subplots(), samples, nrow, f"Samples from the prior p(z) = N(0, I), {run.label}, epoch {epoch}")
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


def _interpolation_row(run: Run, a: int, b: int, steps: int) -> torch.Tensor:
    panel = run.snapshots["panel"]
    path = interpolate(run.model, panel[a].float() / 255, panel[b].float() / 255, steps)
    return torch.cat([panel[a : a + 1], path, panel[b : b + 1]])


def interpolation(run: Run, a: int = 0, b: int = 1, steps: int = 8) -> Figure:
    """Real image a, the decoded path from μ(a) to μ(b) (its ends are the reconstructions), real image b.

    ``a`` and ``b`` index the run's fixed validation panel, so every setting shows the same pair.
    """
    row = _interpolation_row(run, a, b, steps)
    fig = Figure(figsize=(1.1 * len(row), 1.7), layout="constrained")
    _show(fig.subplots(), row, len(row), f"Interpolation, {run.label}: real a, decoded path μ(a) → μ(b), real b")
    return fig


# ---------------------------------------------------------------- several KL weights side by side


def compare_learning_curves(runs: list[Run]) -> Figure:
    """Validation −ELBO, reconstruction term and KL term of several runs on shared axes."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    for i, run in enumerate(runs):
        h = run.history
        for ax, column in zip(axes, ("val_neg_elbo", "val_recon", "val_kl")):
            ax.plot(h["epoch"], h[column], color=f"C{i}", marker=".", label=run.label)
    axes[0].set(title="−ELBO (validation)", ylabel="nats per image")
    axes[1].set(title="Reconstruction Σ(x − x̂)² (validation)", ylabel="nats per image", yscale="log")
    axes[2].set(title="KL(q(z|x) ‖ p(z)) (validation)", ylabel="nats per image", yscale="symlog")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    return fig


def compare_reconstructions(runs: list[Run]) -> Figure:
    """The same validation panel (top) and its reconstruction by each run at its last epoch."""
    panel = runs[0].snapshots["panel"]
    fig = Figure(figsize=(1.1 * len(panel), 1.25 * (len(runs) + 1) + 0.3), layout="constrained")
    axes = fig.subplots(len(runs) + 1, 1, squeeze=False)[:, 0]
    _show(axes[0], panel, len(panel), "validation images")
    for ax, run in zip(axes[1:], runs):
        last = max(run.snapshots["epochs"])
        _show(ax, run.snapshots["epochs"][last]["recon"], len(panel), f"reconstructed, {run.label}")
    return fig


def compare_prior_samples(runs: list[Run], n: int = 8) -> Figure:
    """The same prior codes z decoded by each run (a row per KL weight)."""
    fig = Figure(figsize=(1.1 * n, 1.25 * len(runs) + 0.3), layout="constrained")
    for ax, run in zip(fig.subplots(len(runs), 1, squeeze=False)[:, 0], runs):
        last = max(run.snapshots["epochs"])
        _show(ax, run.snapshots["epochs"][last]["samples"][:n], n, f"prior samples, {run.label}")
    return fig


def compare_interpolations(runs: list[Run], a: int = 0, b: int = 1, steps: int = 8) -> Figure:
    """The same pair of real images interpolated by each run (a row per KL weight)."""
    fig = Figure(figsize=(1.1 * (steps + 2), 1.25 * len(runs) + 0.3), layout="constrained")
    for ax, run in zip(fig.subplots(len(runs), 1, squeeze=False)[:, 0], runs):
        _show(ax, _interpolation_row(run, a, b, steps), steps + 2, f"interpolation, {run.label}")
    return fig


# ---------------------------------------------------------------- measurements (vaehelpers.measure)


def kl_per_dimension(runs: list[Run], measurements: dict[Setting, dict]) -> Figure:
    """KL of each latent dimension, sorted, one panel per run: which dimensions carry information."""
    fig = Figure(figsize=(4 * len(runs), 3), layout="constrained")
    for ax, run in zip(fig.subplots(1, len(runs), squeeze=False)[0], runs):
        name, m = run.label, measurements[run.setting]
        values = sorted(m["kl_per_dim"], reverse=True)
        ax.bar(range(1, len(values) + 1), values, color="C0")
        ax.axhline(0.01, color="C3", lw=0.8, ls="--")
        ax.set(title=f"{name}: {m['active_units']} active", xlabel="latent dimension (sorted)",
               ylabel="KL (nats per image)", yscale="symlog")
        ax.set_yscale("symlog", linthresh=0.01)
    return fig


def traversals(run: Run, measurements: dict[Setting, dict], n_dims: int = 4, image: int = 0,
               values: tuple[float, ...] = (-3, -2, -1, 0, 1, 2, 3)) -> Figure:
    """μ of one validation image decoded with each of the most informative dimensions swept from −3 to 3."""
    from .measure import traverse

    kl_per_dim = measurements[run.setting]["kl_per_dim"]
    dims = sorted(range(len(kl_per_dim)), key=lambda j: -kl_per_dim[j])[:n_dims]
    grid = traverse(run.model, run.snapshots["panel"][image].float() / 255, dims, list(values))
    fig = Figure(figsize=(1.1 * len(values) + 1.2, 1.15 * len(dims) + 0.5), layout="constrained")
    ax = fig.subplots()
    _show(ax, grid, len(values), f"Latent traversals, {run.label}: z_j from {values[0]:g} to {values[-1]:g}")
    step = grid.shape[-1] + 2
    ax.set_axis_on()
    ax.set_xticks([2 + step * (i + 0.5) for i in range(len(values))], [f"{v:g}" for v in values])
    ax.set_yticks([2 + step * (i + 0.5) for i in range(len(dims))],
                  [f"z{j} ({kl_per_dim[j]:.1f} nats)" for j in dims])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig


def rate_distortion(measurements: dict[Setting, dict], by_seed: dict[Setting, list[dict]] | None = None,
                    marked: tuple[float, ...] = (1.0, 100.0, 0.0)) -> Figure:
    """Distortion against rate for every setting; the assignment's weights marked. Where ``by_seed`` holds several
    seeds of a setting, its point is their mean with error bars of ± one standard deviation."""
    seeds = {s: (by_seed or {}).get(s) or [m] for s, m in measurements.items()}
    points = {s: [mean_sd([m[k] for m in ms])[0] for k in ("rate", "distortion")] for s, ms in seeds.items()}
    spread = {s: [mean_sd([m[k] for m in ms])[1] for k in ("rate", "distortion")] for s, ms in seeds.items()}
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    fixed = sorted((s for s in measurements if s.likelihood == "fixed"), key=lambda s: s.kl_weight)
    ax.plot([points[s][0] for s in fixed], [points[s][1] for s in fixed], "-", color="0.6", zorder=1)
    for i, (setting, (rate, distortion)) in enumerate(sorted(points.items(), key=lambda item: item[1][0])):
        sigma = setting.likelihood == "sigma-vae"
        is_marked = setting.kl_weight in marked and not sigma
        color = "C3" if sigma else ("C0" if is_marked else "0.4")
        if len(seeds[setting]) > 1:
            ax.errorbar(rate, distortion, xerr=spread[setting][0], yerr=spread[setting][1], color=color,
                        capsize=3, lw=1, zorder=2)
        ax.scatter(rate, distortion, s=90 if is_marked else 35, zorder=3,
                   marker="*" if sigma else ("o" if is_marked else "s"), color=color)
        n = f" (n = {len(seeds[setting])})" if len(seeds[setting]) > 1 else ""
        ax.annotate(("σ-VAE" if sigma else f"{setting.kl_weight:g}") + n, (rate, distortion),
                    textcoords="offset points", xytext=(6, 6 if i % 2 else -12), fontsize=9)  # alternate: no overlap
    ax.set_xscale("symlog", linthresh=1)
    several = any(len(ms) > 1 for ms in seeds.values())
    ax.set(xlabel="rate: KL(q(z|x) ‖ p(z)), nats per image", ylabel="distortion: Σ(x − x̂)² per image",
           title="Rate–distortion (validation), each point labelled with its KL weight;\n"
                 "large dots: the assignment's weights, star: the σ-VAE (weight 1)"
                 + ("\nwhere n seeds: their mean, bars ± 1 sd" if several else ""))
    return fig


def compare_latent_sizes(runs: dict[int, Run], by_latent: dict[int, list[dict]], n: int = 8) -> Figure | None:
    """KL weight 1 at each latent size: the same kind of prior samples (left) and the KL of each latent dimension,
    sorted, mean over seeds (right). None with a single latent size."""
    if len(runs) < 2:
        return None
    fig = Figure(figsize=(1.1 * n + 4, 1.4 * len(runs) + 0.6), layout="constrained")
    axes = fig.subplots(len(runs), 2, squeeze=False, gridspec_kw={"width_ratios": [n * 1.1, 4]})
    for (ax_samples, ax_kl), (d, run) in zip(axes, runs.items()):
        last = max(run.snapshots["epochs"])
        _show(ax_samples, run.snapshots["epochs"][last]["samples"][:n], n,
              f"prior samples, KL weight 1, {d} latent dimensions (seed {run.config.seed})")
        per_dim = [sorted(m["kl_per_dim"], reverse=True) for m in by_latent[d]]
        mean = [sum(values) / len(values) for values in zip(*per_dim)]
        ax_kl.bar(range(1, len(mean) + 1), mean, color="C0")
        ax_kl.axhline(0.01, color="C3", lw=0.8, ls="--")
        ax_kl.set_yscale("symlog", linthresh=0.01)
        ax_kl.set_ylim(0, 2 * max(max(mean), 0.01))  # symlog's own limits cut the tallest bars
        ax_kl.set(title="KL per dimension, sorted" + (f" (mean of {len(per_dim)} seeds)" if len(per_dim) > 1 else ""),
                  xlabel="latent dimension (sorted)", ylabel="nats")
    return fig


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Save a figure as PNG at 150 dpi."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path
