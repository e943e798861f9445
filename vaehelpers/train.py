"""Training: one run of one setting, written to its own folder after every epoch.

A run folder holds
  * ``config.json`` — the settings, the data set, the train/validation split, the device;
  * ``history.csv`` — one row per epoch: for ``train`` and ``val``, the reconstruction
    term, the KL term, the weighted objective, the true −ELBO (nats per image) and bits
    per dimension (see :mod:`vaehelpers.objective` for the conventions), the epoch's
    seconds and the peak GPU memory so far (MiB; 0 off CUDA). Training values are
    averaged over the epoch's mini-batches; validation values are computed with the
    model at the end of the epoch, with one sample z ~ q(z|x) per image;
  * ``snapshots.pt`` — a fixed panel of validation images, their reconstructions (from μ)
    and the decodings of a fixed set of prior codes at each snapshot epoch;
  * ``checkpoint.pt`` — the weights, the optimiser and the random-number state.

Every file is replaced atomically, at most every ``checkpoint_every`` seconds (30 by
default) and after the last epoch, so that at GPU speed (epochs well under a second) the
writes do not dominate. An interrupted run resumes from its last checkpoint and, on the
CPU, ends with the same history as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import torch
from tqdm.auto import tqdm

from .data import batches, load_images, split_indices
from .model import ConvVAE, VAEConfig
from .objective import LIKELIHOODS, VAELoss, bits_per_dim, vae_loss

SPLITS = ("train", "val")
TERMS = ("recon", "kl", "objective", "neg_elbo", "bits_per_dim")
HISTORY_COLUMNS = ["epoch"] + [f"{s}_{t}" for s in SPLITS for t in TERMS] + ["seconds", "peak_gpu_mib"]


@dataclass
class RunConfig:
    """Everything that decides what a run computes (the device does not)."""

    data: str = "builtin"  # a folder, an .npz/.npy file, "builtin" or "builtin:N"
    kl_weight: float = 1.0
    latent_dim: int = 20
    epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-4
    image_size: int = 64
    base_channels: int = 32
    seed: int = 0
    val_fraction: float = 0.05
    snapshot_epochs: list[int] | None = None  # None: default_snapshot_epochs(epochs)
    panel_size: int = 8  # validation images reconstructed at each snapshot
    prior_samples: int = 32  # fixed prior codes decoded at each snapshot
    likelihood: str = "fixed"  # "fixed": σ² = 1/2 (the assignment's summed MSE); "sigma-vae": σ² optimal
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # of the training steps; "auto": see resolve_precision

    def __post_init__(self) -> None:
        checks = [
            ("kl_weight", self.kl_weight >= 0 and math.isfinite(self.kl_weight), "a finite number >= 0"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive"),
            ("val_fraction", 0 < self.val_fraction < 1, "between 0 and 1"),
            ("panel_size", self.panel_size >= 2, "at least 2 (the interpolation uses two panel images)"),
            ("prior_samples", self.prior_samples >= 1, "at least 1"),
            ("likelihood", self.likelihood in LIKELIHOODS, f"one of {', '.join(LIKELIHOODS)}"),
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}; got {getattr(self, name)!r}.")
        VAEConfig(self.latent_dim, self.image_size, self.base_channels)  # checks the model's settings
        # Plain types, so that 100 and 100.0 (papermill passes whole numbers as int) name the same run.
        self.data, self.kl_weight, self.lr, self.val_fraction = str(self.data), float(self.kl_weight), float(self.lr), float(self.val_fraction)
        if self.snapshot_epochs is None:
            self.snapshot_epochs = default_snapshot_epochs(self.epochs)
        self.snapshot_epochs = sorted({int(e) for e in self.snapshot_epochs if 1 <= int(e) <= self.epochs})

    def run_name(self, data_key: str) -> str:
        """Readable folder name from the main settings, plus a hash of all of them and of the data."""
        text = json.dumps({**asdict(self), "data_key": data_key}, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        tag = Path(self.data).stem if not self.data.startswith("builtin") else self.data.replace(":", "")
        likelihood = "" if self.likelihood == "fixed" else f"_{self.likelihood}"
        return (f"{tag}_kl{self.kl_weight:g}{likelihood}_z{self.latent_dim}_e{self.epochs}_seed{self.seed}"
                f"_{self.precision}_{digest}")


def key_epochs(epochs: int) -> list[int]:
    """The epochs a report shows: 10 %, 50 % and 100 % of the run (10, 50, 100 for 100 epochs)."""
    return sorted({max(1, round(epochs * 0.1)), max(1, round(epochs * 0.5)), epochs})


def default_snapshot_epochs(epochs: int) -> list[int]:
    """The key epochs, 10, 50 and every 5th, capped to the run's length."""
    return sorted({e for e in [10, 50, *range(5, epochs + 1, 5)] if e <= epochs} | set(key_epochs(epochs)))


PRECISIONS = ("auto", "bf16", "fp32")
_clock = time.monotonic  # when the run's files were last written (replaced in tests)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX), not by emulation."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device: torch.device) -> Literal["bf16", "fp32"]:
    """``"auto"``: bf16 autocast on CUDA GPUs and on CPUs with native bf16, fp32 elsewhere (MPS included)."""
    if precision != "auto":
        return precision  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


@dataclass
class Run:
    """A run folder read back: settings, history, snapshots and the trained model."""

    dir: Path
    config: RunConfig
    info: dict
    history: dict[str, list[float]]
    snapshots: dict
    model: ConvVAE
    epochs_done: int

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.config.epochs

    @property
    def label(self) -> str:
        """How tables and figures name a run: 'KL weight 1', or 'σ-VAE, KL weight 1'."""
        prefix = "σ-VAE, " if self.config.likelihood == "sigma-vae" else ""
        return f"{prefix}KL weight {self.config.kl_weight:g}"


# ---------------------------------------------------------------- atomic files


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def torch_save_atomic(path: Path, obj: object) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def _history_csv(history: dict[str, list[float]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HISTORY_COLUMNS)
    for i in range(len(history["epoch"])):
        writer.writerow([history[c][i] if c != "epoch" else int(history[c][i]) for c in HISTORY_COLUMNS])
    return out.getvalue().encode()


def read_history(path: Path) -> dict[str, list[float]]:
    """history.csv as columns of floats (``epoch`` as int)."""
    history: dict[str, list[float]] = {c: [] for c in HISTORY_COLUMNS}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            row.setdefault("peak_gpu_mib", "0")  # not recorded by runs made before it was
            for c in HISTORY_COLUMNS:
                history[c].append(int(row[c]) if c == "epoch" else float(row[c]))
    return history


# ---------------------------------------------------------------- evaluation


def autocast(device: torch.device, precision: str):
    """The context of a training step's forward pass: bf16 autocast (convolutions and linear layers in
    bf16, weights, gradients and the optimiser in fp32), or nothing for fp32. The losses cast to fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: ConvVAE, images: torch.Tensor, kl_weight: float, batch_size: int = 1000, seed: int = 0,
    likelihood: str = "fixed",
) -> dict[str, float]:
    """Mean terms over a uint8 image set (nats per image, one z ~ q(z|x) per image), computed in fp32
    on the images' device, with one transfer of the results at the end."""
    device = images.device
    generator = torch.Generator(device=device).manual_seed(seed)
    sums = {k: torch.zeros((), device=device) for k in TERMS[:-1]}
    model.eval()
    for x in batches(images, batch_size):
        x_hat, mu, logvar = model(x, generator)
        loss = vae_loss(x, x_hat, mu, logvar, kl_weight, likelihood)
        for k in sums:
            sums[k] += getattr(loss, k) * len(x)
    means = {k: v.item() / len(images) for k, v in sums.items()}
    means["bits_per_dim"] = float(bits_per_dim(means["neg_elbo"], images[0].numel()))
    return means


@torch.no_grad()
def reconstruct(model: ConvVAE, x: torch.Tensor) -> torch.Tensor:
    """Decode μ of q(z|x): the model's deterministic reconstruction of float images."""
    return model.decode(model.encode(x)[0])


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


# ---------------------------------------------------------------- training


def _build_model(cfg: RunConfig) -> ConvVAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return ConvVAE(cfg.latent_dim, cfg.image_size, cfg.base_channels)


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder (finished or not) back, with the model on the CPU in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.pt").exists():
        raise FileNotFoundError(f"{run_dir} holds no completed epoch (no checkpoint.pt): train it with fit() first.")
    info = json.loads((run_dir / "config.json").read_text())
    cfg = RunConfig(**info["config"])
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = _build_model(cfg)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    history = read_history(run_dir / "history.csv")
    epochs_done = checkpoint["epoch"]
    history = {k: v[:epochs_done] for k, v in history.items()}
    snapshots = torch.load(run_dir / "snapshots.pt", map_location="cpu", weights_only=False)
    snapshots["epochs"] = {e: s for e, s in snapshots["epochs"].items() if e <= epochs_done}
    return Run(run_dir, cfg, info, history, snapshots, model, epochs_done)


def adam(model: ConvVAE, lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel (one pass over all parameters per step) where the device has one."""
    device = next(model.parameters()).device
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))


def train_step(model: ConvVAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, kl_weight: float,
               likelihood: str = "fixed", precision: str = "fp32", generator: torch.Generator | None = None) -> VAELoss:
    """One optimiser step on a float batch in [0, 1]. The batch goes in channels-last order, which the
    convolutions of oneDNN (CPU) and cuDNN run faster, in bf16 most of all."""
    x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, precision):
        x_hat, mu, logvar = model(x, generator)
    loss = vae_loss(x, x_hat, mu, logvar, kl_weight, likelihood)
    optimizer.zero_grad(set_to_none=True)
    loss.objective.backward()
    optimizer.step()
    return loss


def _train_epoch(model: ConvVAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, cfg: RunConfig,
                 shuffle_gen: torch.Generator, noise_gen: torch.Generator, bar: tqdm, epoch: int) -> dict[str, float]:
    """One pass over the shuffled training images; returns the terms' means over the epoch."""
    model.train()
    sums = {k: torch.zeros((), device=images.device) for k in TERMS[:-1]}  # on the device: no sync per step
    for x in batches(images, cfg.batch_size, shuffle=True, generator=shuffle_gen):
        loss = train_step(model, optimizer, x, cfg.kl_weight, cfg.likelihood, cfg.precision, noise_gen)
        for k in sums:
            sums[k] += getattr(loss, k).detach() * len(x)
        bar.update()
    means = {k: v.item() / len(images) for k, v in sums.items()}  # the epoch's one wait for the device
    bar.set_postfix(epoch=epoch, objective=f"{means['objective']:.1f}")
    means["bits_per_dim"] = float(bits_per_dim(means["neg_elbo"], images[0].numel()))
    return means


def fit(
    cfg: RunConfig | None = None,
    *,
    runs_dir: str | os.PathLike = "runs",
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    progress: bool | str = True,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_every: float = 30.0,
    **settings,
) -> Run:
    """Train one VAE setting, or reuse/resume the run with the same settings.

    Pass a :class:`RunConfig` or its fields as keywords (``fit(kl_weight=100, epochs=20)``).
    The run's folder under ``runs_dir`` is named from the settings and the data.
    ``progress``: True for a tqdm bar with the running loss, ``"epochs"`` for one printed
    line per epoch (for logs and papermill), False for silence.
    ``on_epoch_end(epoch, row)`` is called after each epoch (after its files, where it wrote them).
    ``checkpoint_every``: the least number of seconds between two writes of the run's files
    (0: after every epoch); the last epoch is always written.
    """
    cfg = cfg if cfg is not None else RunConfig(**settings)
    dev = resolve_device(device)
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, dev))  # part of the run's identity
    data = load_images(cfg.data, cfg.image_size, seed=cfg.seed, cache_dir=cache_dir)
    run_dir = Path(runs_dir) / cfg.run_name(data.key)
    if (run_dir / "checkpoint.pt").exists():
        run = load_run(run_dir)
        if run.finished:
            return run

    train_idx, val_idx = split_indices(len(data), cfg.val_fraction, cfg.seed)
    images = data.images.to(dev)
    train_images, val_images = images[train_idx.to(dev)], images[val_idx.to(dev)]
    panel_idx = torch.arange(min(cfg.panel_size, len(val_idx)))
    panel = val_images[panel_idx.to(dev)]
    prior_z = torch.randn(cfg.prior_samples, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))

    model = _build_model(cfg).to(dev, memory_format=torch.channels_last)
    optimizer = adam(model, cfg.lr)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    history: dict[str, list[float]] = {c: [] for c in HISTORY_COLUMNS}
    snapshots = {"panel_val_indices": val_idx[panel_idx], "panel": panel.cpu(), "prior_z": prior_z, "epochs": {}}
    start_epoch = 0

    if (run_dir / "checkpoint.pt").exists():  # resume an interrupted run
        checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        shuffle_gen.set_state(checkpoint["shuffle_rng"])
        noise_gen.set_state(checkpoint["noise_rng"])
        start_epoch = checkpoint["epoch"]
        history = {k: v[:start_epoch] for k, v in read_history(run_dir / "history.csv").items()}
        saved = torch.load(run_dir / "snapshots.pt", map_location="cpu", weights_only=False)
        snapshots["epochs"] = {e: s for e, s in saved["epochs"].items() if e <= start_epoch}
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        info = {
            "config": asdict(cfg),
            "data": {"source": data.source, "key": data.key, "images": len(data), "skipped": data.skipped},
            "split": {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "train": len(train_idx),
                      "val": len(val_idx), "val_indices": val_idx.tolist()},
            "model": model.hparams(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "device": str(dev),
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }
        write_atomic(run_dir / "config.json", json.dumps(info, indent=1).encode())
        torch_save_atomic(run_dir / "snapshots.pt", snapshots)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    last_written = _clock()
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, disable=progress is not True,
               desc=f"kl_weight={cfg.kl_weight:g}", unit="batch")
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        started = time.perf_counter()
        train = _train_epoch(model, optimizer, train_images, cfg, shuffle_gen, noise_gen, bar, epoch)
        val = evaluate(model, val_images, cfg.kl_weight, seed=cfg.seed + epoch, likelihood=cfg.likelihood)
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in val.items()}}
        row["seconds"] = time.perf_counter() - started
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else 0.0
        for c in HISTORY_COLUMNS:
            history[c].append(row[c])

        if epoch in cfg.snapshot_epochs:
            model.eval()
            with torch.no_grad():
                snapshots["epochs"][epoch] = {
                    "recon": to_uint8(reconstruct(model, panel.float() / 255)),
                    "samples": to_uint8(model.decode(prior_z.to(dev))),
                }
        if epoch == cfg.epochs or _clock() - last_written >= checkpoint_every:
            torch_save_atomic(run_dir / "snapshots.pt", snapshots)
            write_atomic(run_dir / "history.csv", _history_csv(history))
            torch_save_atomic(run_dir / "checkpoint.pt", {  # written last: it marks the epochs complete
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "shuffle_rng": shuffle_gen.get_state(), "noise_rng": noise_gen.get_state(),
            })
            last_written = _clock()
        if progress == "epochs":
            print(f"kl_weight={cfg.kl_weight:g} epoch {epoch}/{cfg.epochs}: objective {row['train_objective']:.1f}, "
                  f"validation -ELBO {row['val_neg_elbo']:.1f} nats ({row['seconds']:.1f} s)", flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    bar.close()
    return load_run(run_dir)
