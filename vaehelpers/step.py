"""One training step: forward in the chosen precision, the losses in fp32, backward, fused Adam.

The model's pass over a batch (:func:`encode_decode`) takes the reparameterisation noise as an argument,
drawn outside, so that the same function runs eagerly or compiled by ``torch.compile`` (TorchInductor: one
graph for the forward pass and, through AOTAutograd, one for the backward). Both draw the same noise from the
same generator, so a compiled run differs from an eager one only by the rounding of the fused kernels. The
compiled graph depends on the model's shape and the precision alone, not on the KL weight or the likelihood
(the losses stay eager), so one compile serves every run of a report. Which of the two runs, and in which
precision, :mod:`vaehelpers.speed` decides.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Callable

import torch

from .model import ConvVAE
from .objective import VAELoss, vae_loss
from .torch_private import has_triton, inductor_default_cache_dir

EncodeDecode = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def autocast(device: torch.device, precision: str):
    """The context of a training step's forward pass: bf16 autocast (convolutions and linear layers in
    bf16, weights, gradients and the optimiser in fp32), or nothing for fp32. The losses cast to fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def adam(model: ConvVAE, lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel (one pass over all parameters per step) where the device has one."""
    device = next(model.parameters()).device
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))


def encode_decode(model: ConvVAE, x: torch.Tensor, eps: torch.Tensor,
                  precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstruction, μ, log σ²) of a float batch for the noise ``eps`` (B×latent_dim): z = μ + σ·ε, decoded,
    under the precision's autocast."""
    with autocast(x.device, precision):
        mu, logvar = model.encode(x)
        return model.decode(model.reparameterize(mu, logvar, eps=eps)), mu, logvar


def noise(x: torch.Tensor, latent_dim: int, precision: str, generator: torch.Generator | None) -> torch.Tensor:
    """ε ~ N(0, I) for a batch, in the dtype of μ under the step's autocast (bf16 in bf16), as the model's
    own ``reparameterize`` draws it."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return torch.randn(len(x), latent_dim, generator=generator, device=x.device, dtype=dtype)


def train_step(model: ConvVAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, kl_weight: float,
               likelihood: str = "fixed", precision: str = "fp32", generator: torch.Generator | None = None,
               passes: EncodeDecode = encode_decode) -> VAELoss:
    """One optimiser step on a float batch in [0, 1]; ``passes``: :func:`encode_decode` or its compiled form
    (:func:`compiled_encode_decode`). The batch goes in channels-last order, which the convolutions of oneDNN
    (CPU) and cuDNN run faster, in bf16 most of all."""
    x = x.contiguous(memory_format=torch.channels_last)
    x_hat, mu, logvar = passes(model, x, noise(x, model.latent_dim, precision, generator), precision)
    loss = vae_loss(x, x_hat, mu, logvar, kl_weight, likelihood)  # type: ignore[arg-type]
    optimizer.zero_grad(set_to_none=True)
    loss.objective.backward()
    optimizer.step()
    return loss


# ---------------------------------------------------------------- compiled


def compiler_missing(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device`` here (one phrase), or None where it can."""
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "g++")
        return None if shutil.which(cxx) else f"no C++ compiler ({cxx}) for TorchInductor's CPU kernels"
    if device.type == "cuda":
        return None if has_triton() else "no Triton for TorchInductor's GPU kernels"
    return f"torch.compile is not used on {device.type}"


def use_kernel_cache(cache_dir: os.PathLike | str) -> None:
    """Keep TorchInductor's compiled kernels under ``cache_dir``, so that a second process loads them in seconds,
    unless ``TORCHINDUCTOR_CACHE_DIR`` names another folder than TorchInductor's default (which importing parts
    of PyTorch writes there). TorchInductor reads the variable at each use, and processes started later inherit it."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(inductor_default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)


def compiled_encode_decode(cache_dir: os.PathLike | str) -> EncodeDecode:
    """:func:`encode_decode` compiled by TorchInductor, its kernels cached under ``cache_dir``."""
    use_kernel_cache(cache_dir)
    return torch.compile(encode_decode, dynamic=False)


# ---------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_for_timing(device: torch.device, base_channels: int, image_size: int, latent_dim: int,
                     batch_size: int, lr: float = 1e-4) -> tuple[ConvVAE, torch.optim.Optimizer, torch.Tensor]:
    """A seeded model, its optimiser and a batch of random images, for timing steps (the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ConvVAE(latent_dim, image_size, base_channels).to(device, memory_format=torch.channels_last)
        x = torch.rand(batch_size, 3, image_size, image_size, device=device)
    return model, adam(model, lr), x


def timed_steps(model: ConvVAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, precision: str, steps: int,
                passes: EncodeDecode = encode_decode) -> float:
    """Seconds for ``steps`` training steps on the batch ``x`` (the device waited for at both ends)."""
    synchronize(x.device)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, x, 1.0, precision=precision, passes=passes)
    synchronize(x.device)
    return time.perf_counter() - started


def training_rate(device: torch.device, base_channels: int, precision: str, batch_size: int = 100,
                  steps: int = 20, warmup: int = 3, image_size: int = 64, latent_dim: int = 20) -> float:
    """Training images per second of the ConvVAE (forward, backward, Adam step, eager) on random images."""
    model, optimizer, x = model_for_timing(device, base_channels, image_size, latent_dim, batch_size)
    timed_steps(model, optimizer, x, precision, warmup)
    return steps * batch_size / timed_steps(model, optimizer, x, precision, steps)
