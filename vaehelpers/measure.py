"""Measurements of a trained model on held-out images, in nats unless stated.

They back the report's discussion with numbers: how tight the bound is (IWAE), rate and
distortion, which latent dimensions carry information (KL per dimension, active units),
how far the codes of real images sit from the prior ("prior holes": the aggregate
posterior's KL, and an MMD between decoded prior samples and real images), and, on the
built-in faces, which generative factors a linear probe can read from the codes.

:func:`measure_run` computes them all for a run and stores them in the run's folder
(``measurements.json``), so a report re-renders without recomputing.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time

import torch
import torch.nn.functional as F

from .data import batches
from .model import ConvVAE
from .objective import calibrated_nll, kl_per_dim
from .board import write_measurements
from .files import locked, write_atomic
from .store import Run, run_generator
from .decode import to_uint8
from .devices import resolve_device
from .train import evaluate, reconstruct

CIRCULAR_FACTORS = ("hair_hue", "iris_hue", "background_hue")
"""Hues wrap around: a probe predicts their cosine and sine, and their R² is the mean of the two."""


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


def sharpness(images: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels of uint8 images, on [0, 1]."""
    x = images.float() / 255
    return float(((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()) / 2)


@torch.no_grad()
def iwae_bound(model: ConvVAE, images: torch.Tensor, generator: torch.Generator, k: int = 64, variance: float = 0.5,
               batch_size: int = 16) -> torch.Tensor:
    """Importance-weighted bound on −log p(x) per image, in nats (Burda et al. 2016, eq. 8).

    −log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x) with z_i ~ q(z|x) and a Gaussian decoder of
    the given variance. k = 1 is the ELBO; the bound tightens as k grows.
    """
    model.eval()
    device = next(model.parameters()).device
    bounds = []
    for x in batches(images.to(device), batch_size):
        mu, logvar = model.encode(x)
        eps = torch.randn((k, *mu.shape), generator=generator, device=device)
        z = ConvVAE.reparameterize(mu, logvar, eps=eps)  # k × B × d
        x_hat = model.decode(z.flatten(0, 1)).float().view(k, *x.shape)
        num_dims = x[0].numel()
        log_px_z = -((x - x_hat).pow(2).flatten(2).sum(-1) / (2 * variance) + 0.5 * num_dims * math.log(2 * math.pi * variance))
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
        log_qz_x = -0.5 * (eps.pow(2) + math.log(2 * math.pi) + logvar).sum(-1)
        log_w = log_px_z + log_pz - log_qz_x
        bounds.append(-(torch.logsumexp(log_w, dim=0) - math.log(k)).cpu())
    return torch.cat(bounds)


def mmd(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased squared maximum mean discrepancy between two sets of vectors (N×F, M×F).

    Gaussian kernel whose bandwidth is the median pairwise distance of the pooled sets
    (Gretton et al. 2012). About 0 when both come from one distribution.
    """
    a, b = a.double().flatten(1), b.double().flatten(1)
    pooled = torch.cat([a, b])
    d2 = torch.cdist(pooled, pooled).pow(2)
    bandwidth2 = d2[d2 > 0].median()
    kernel = torch.exp(-d2 / bandwidth2)
    n, m = len(a), len(b)
    k_aa, k_bb, k_ab = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return float((k_aa.sum() - k_aa.trace()) / (n * (n - 1)) + (k_bb.sum() - k_bb.trace()) / (m * (m - 1))
                 - 2 * k_ab.mean())


def probe_r2(codes_train: torch.Tensor, y_train: torch.Tensor, codes_test: torch.Tensor, y_test: torch.Tensor,
             ridge: float = 1e-3) -> float:
    """R² on held-out codes of a linear (ridge) regression from codes to one target."""
    def design(c: torch.Tensor) -> torch.Tensor:
        return torch.cat([c.double(), torch.ones(len(c), 1, dtype=torch.float64)], dim=1)

    X, y = design(codes_train), y_train.double()
    w = torch.linalg.solve(X.T @ X + ridge * torch.eye(X.shape[1], dtype=X.dtype), X.T @ y)
    residual = y_test.double() - design(codes_test) @ w
    return float(1 - residual.pow(2).sum() / (y_test.double() - y_test.double().mean()).pow(2).sum())


def factor_r2(mu_train: torch.Tensor, factors_train: dict, mu_test: torch.Tensor, factors_test: dict) -> dict[str, float]:
    """R² of a linear probe from μ to each built-in face factor (hues through cosine and sine)."""
    scores = {}
    for name in factors_train:
        y_train, y_test = torch.as_tensor(factors_train[name]), torch.as_tensor(factors_test[name])
        if name in CIRCULAR_FACTORS:
            angle_train, angle_test = 2 * math.pi * y_train, 2 * math.pi * y_test
            scores[name] = (probe_r2(mu_train, torch.cos(angle_train), mu_test, torch.cos(angle_test))
                            + probe_r2(mu_train, torch.sin(angle_train), mu_test, torch.sin(angle_test))) / 2
        else:
            scores[name] = probe_r2(mu_train, y_train, mu_test, y_test)
    return scores


@torch.no_grad()
def traverse(model: ConvVAE, x: torch.Tensor, dims: list[int], values: list[float]) -> torch.Tensor:
    """Decode μ(x) with one dimension at a time set to each value: uint8 (len(dims)·len(values))×3×S×S."""
    device = next(model.parameters()).device
    mu, _ = model.encode(x[None].to(device))
    codes = mu.repeat(len(dims) * len(values), 1)
    for row, dim in enumerate(dims):
        codes[row * len(values) : (row + 1) * len(values), dim] = torch.tensor(values, device=device)
    return to_uint8(model.decode(codes))


MEASUREMENT_VERSION = 3  # 3: every sampled value from data_seed's measuring streams, the same for every seed


def measure_run(run: Run, k: int = 64, iwae_images: int = 256, mmd_images: int = 256, probe_images: int = 2000,
                cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> dict:
    """Every measurement of a run on its validation images, stored in ``measurements.json``.

    The networks run in fp32 on ``device`` (the statistics on the CPU). A stored file with
    the same options and the same number of trained epochs is reused.
    """
    options = {"k": k, "iwae_images": iwae_images, "mmd_images": mmd_images, "probe_images": probe_images,
               "epochs_done": run.epochs_done, "version": MEASUREMENT_VERSION}
    path = run.dir / "measurements.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(stored, dict) and stored.get("options") == options:
            return stored
    except (OSError, ValueError):  # missing or unreadable: derived from the run, so computed again
        pass
    started = time.perf_counter()
    dev = resolve_device(str(device))
    cfg, model = run.config, copy.deepcopy(run.model).to(dev).eval()
    data, val_idx = run.data(cache_dir), run.val_indices
    val = data.images[val_idx]
    num_dims = val[0].numel()

    terms = evaluate(model, val.to(dev), cfg.kl_weight, run_generator(cfg, "measure_noise", device=dev), cfg.likelihood)
    mu, logvar = encode_all(model, val)
    recon = torch.cat([to_uint8(reconstruct(model, x)) for x in batches(val.to(dev), 500)])
    mse_mu = float(((recon.float() - val.float()) / 255).pow(2).mean())
    calibrated_variance = terms["recon"] / num_dims
    variance = calibrated_variance if cfg.likelihood == "sigma-vae" else 0.5
    iwae = iwae_bound(model, val[:iwae_images], run_generator(cfg, "iwae", device=dev), k=k, variance=variance)

    prior_z = torch.randn(min(mmd_images, len(val)), cfg.latent_dim, generator=run_generator(cfg, "mmd_codes"))
    prior_decoded = to_uint8(model.decode(prior_z.to(dev)))  # the same codes on any device
    real = val[:mmd_images]

    def small(images: torch.Tensor) -> torch.Tensor:  # 16×16: the MMD compares overall look, not pixels
        return F.avg_pool2d(images.float() / 255, cfg.image_size // 16)

    result = {
        "options": options,
        "device": str(dev),
        "kl_weight": cfg.kl_weight,
        "likelihood": cfg.likelihood,
        "neg_elbo": terms["neg_elbo"],
        "bits_per_dim": terms["bits_per_dim"],
        "iwae_neg_log_px": float(iwae.mean()),
        "iwae_images": len(iwae),
        "rate": terms["kl"],
        "distortion": terms["recon"],
        "psnr_db": 10 * math.log10(1 / mse_mu),
        "calibrated_sigma": math.sqrt(calibrated_variance),
        "calibrated_neg_elbo": float(calibrated_nll(terms["recon"], num_dims)) + terms["kl"],
        "kl_per_dim": kl_per_dim(mu, logvar).mean(dim=0).tolist(),
        "active_units": active_units(mu),
        "code_std": float(mu.std(dim=0).mean()),
        "posterior_std": float(torch.exp(0.5 * logvar).mean()),
        "aggregate_kl": aggregate_kl(mu, logvar),
        "mmd": mmd(small(prior_decoded), small(real)),
        "mmd_images": len(real),
        "sample_diversity": image_diversity(prior_decoded),
        "data_diversity": image_diversity(val),
        "sharpness_ratio": sharpness(recon) / sharpness(val),
        "probe_r2": None,
        "probe_r2_sampled": None,
    }
    if data.factors:
        train_idx = torch.tensor(sorted(set(range(len(data))) - set(val_idx.tolist())))[:probe_images]
        mu_train, logvar_train = encode_all(model, data.images[train_idx])
        train_factors = {name: values[train_idx.numpy()] for name, values in data.factors.items()}
        val_factors = {name: values[val_idx.numpy()] for name, values in data.factors.items()}
        result["probe_r2"] = factor_r2(mu_train, train_factors, mu, val_factors)
        # The same probe on a sampled z ~ q(z|x): what the decoder actually receives, noise included.
        g = run_generator(cfg, "probe")
        z_train, z_val = ConvVAE.reparameterize(mu_train, logvar_train, g), ConvVAE.reparameterize(mu, logvar, g)
        result["probe_r2_sampled"] = factor_r2(z_train, train_factors, z_val, val_factors)
    result["seconds"] = time.perf_counter() - started
    write_atomic(path, json.dumps(result, indent=1).encode())
    with locked(run.dir / ".lock", f"the run {run.dir}"):  # one process at a time writes a run's events
        write_measurements(run, result)
    return result
