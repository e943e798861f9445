"""The run store: what a run is (its settings and folder name), its files, and reading them back safely.

A run folder ``runs/<name>/`` holds
  * ``config.json`` — the settings, the data set, the train/validation split, the device;
  * ``history.csv`` — one row per epoch: for ``train`` and ``val``, the reconstruction
    term, the KL term, the weighted objective, the true −ELBO (nats per image) and bits
    per dimension (see :mod:`vaehelpers.objective` for the conventions), the epoch's
    seconds and the peak GPU memory so far (MiB; 0 off CUDA). Training values are
    averaged over the epoch's mini-batches; validation values are computed with the
    model at the end of the epoch, with one sample z ~ q(z|x) per image;
  * ``snapshots.pt`` — a fixed panel of validation images, their reconstructions (from μ)
    and the decodings of a fixed set of prior codes at each snapshot epoch;
  * ``checkpoint.pt`` — the weights, the optimiser and the random-number state; written
    last, it marks the epochs up to its own as complete;
  * ``measurements.json`` — derived (:mod:`vaehelpers.measure`), recomputed when unreadable;
  * ``.lock`` — held by the one process that trains the run.

Guarantees: every file is replaced atomically (:func:`vaehelpers.files.write_atomic`); one
process at a time trains a run (another waits, then reuses it); the ``.pt`` files are read
with ``torch.load(weights_only=True)``, which builds tensors and plain containers and runs
no code from the file; a damaged or inconsistent file raises :class:`RunDamaged`, one
sentence naming the file and what to do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from .data import ImageSet, cached_images, load_images
from .errors import OneSentenceError
from .model import ConvVAE, VAEConfig
from .objective import LIKELIHOODS, Likelihood
from .streams import VERSION as STREAMS_VERSION, generator, stream_seed

SPLITS = ("train", "val")
TERMS = ("recon", "kl", "objective", "neg_elbo", "bits_per_dim")
HISTORY_COLUMNS = ["epoch"] + [f"{s}_{t}" for s in SPLITS for t in TERMS] + ["seconds", "peak_gpu_mib"]
PRECISIONS = ("auto", "bf16", "fp32")


class RunDamaged(OneSentenceError, ValueError):
    """A run folder whose files cannot be used. IPython shows it as its one sentence."""


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
    seed: int = 0  # the initial weights, the batch order and the training noise (vaehelpers.streams)
    data_seed: int = 0  # the built-in face set and the held-out split: the same for every seed, so all runs hold out the same images
    val_fraction: float = 0.05
    snapshot_epochs: list[int] | None = None  # None: default_snapshot_epochs(epochs)
    panel_size: int = 8  # validation images reconstructed at each snapshot
    prior_samples: int = 32  # fixed prior codes decoded at each snapshot
    likelihood: Likelihood = "fixed"  # "fixed": σ² = 1/2 (the assignment's summed MSE); "sigma-vae": σ² optimal
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # of the training steps; "auto": measured, see vaehelpers.speed
    streams: int = STREAMS_VERSION  # the random streams: 2, independent (vaehelpers.streams); 1, runs trained before
    data_identity: int = 2  # what names the data in the run's identity: 2, its content; 1, its path (runs trained before)

    def __post_init__(self) -> None:
        checks = [
            ("kl_weight", self.kl_weight >= 0 and math.isfinite(self.kl_weight), "a finite number >= 0"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "a finite number > 0"),
            ("val_fraction", 0 < self.val_fraction < 1, "between 0 and 1"),
            ("panel_size", self.panel_size >= 2, "at least 2 (the interpolation uses two panel images)"),
            ("prior_samples", self.prior_samples >= 1, "at least 1"),
            ("likelihood", self.likelihood in LIKELIHOODS, f"one of {', '.join(LIKELIHOODS)}"),
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            # SeedSequence takes seeds >= 0 (runs of version 1 took any whole number)
            ("seed", isinstance(self.seed, int) and (self.seed >= 0 or self.streams == 1), "a whole number >= 0"),
            ("data_seed", isinstance(self.data_seed, int) and (self.data_seed >= 0 or self.streams == 1),
             "a whole number >= 0"),
            ("streams", self.streams in (1, STREAMS_VERSION), f"1 or {STREAMS_VERSION}"),
            ("data_identity", self.data_identity in (1, 2), "1 or 2"),
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

    def load_images(self, cache_dir: str | os.PathLike | None = None) -> ImageSet:
        """The image set this config trains on, preprocessed (from the data cache); ``data_seed`` chooses the
        built-in face set, never ``seed``."""
        return load_images(self.data, self.image_size, seed=self.data_seed, cache_dir=cache_dir)

    @property
    def tag(self) -> str:
        """The readable start of the run's name: the data's file or folder name, or the built-in set's size."""
        return Path(self.data).stem if not self.data.startswith("builtin") else self.data.replace(":", "")

    def run_name(self, data: ImageSet | str) -> str:
        """Readable folder name from the main settings, plus a hash of all of them and of the data: its content
        key (:func:`~vaehelpers.data.content_key`, not its path, so that moving the data keeps the run's name), or,
        for a run of ``data_identity`` 1, its path and times, as such runs were named. ``data``: the image set,
        or the key itself."""
        fields = asdict(self)
        if self.data_seed == self.seed:  # as runs were named when the seed chose the data too: their names stay
            del fields["data_seed"]
        if self.streams == 1:  # as runs were named before their streams were independent: their names stay
            del fields["streams"]
        del fields["data_identity"]  # the key says it, and built-in sets (no path) keep their names
        if self.data_identity == 2 and not self.data.startswith("builtin"):
            del fields["data"]  # where the data lies is not what it is
        data_key = data if isinstance(data, str) else data.key if self.data_identity == 2 else data.path_key
        text = json.dumps({**fields, "data_key": data_key}, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        likelihood = "" if self.likelihood == "fixed" else f"_{self.likelihood}"
        return (f"{self.tag}_kl{self.kl_weight:g}{likelihood}_z{self.latent_dim}_e{self.epochs}_seed{self.seed}"
                f"_{self.precision}_{digest}")


def key_epochs(epochs: int) -> list[int]:
    """The epochs a report shows: 10 %, 50 % and 100 % of the run (10, 50, 100 for 100 epochs)."""
    return sorted({max(1, round(epochs * 0.1)), max(1, round(epochs * 0.5)), epochs})


def default_snapshot_epochs(epochs: int) -> list[int]:
    """The key epochs, 10, 50 and every 5th, capped to the run's length."""
    return sorted({e for e in [10, 50, *range(5, epochs + 1, 5)] if e <= epochs} | set(key_epochs(epochs)))


class Setting(NamedTuple):
    """What a report compares runs by: the likelihood and the KL weight. Measurements are keyed by it."""

    likelihood: Likelihood
    kl_weight: float

    @property
    def label(self) -> str:
        """How tables and figures name a setting: 'KL weight 1', or 'σ-VAE, KL weight 1'."""
        return ("σ-VAE, " if self.likelihood == "sigma-vae" else "") + f"KL weight {self.kl_weight:g}"


def build_model(cfg: RunConfig) -> ConvVAE:
    """The run's model with its seeded initial weights (the random state elsewhere untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed("weights", cfg.seed, cfg.data_seed, version=cfg.streams))
        return ConvVAE(cfg.latent_dim, cfg.image_size, cfg.base_channels)


def run_generator(cfg: RunConfig, name: str, index: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """The run's random stream ``name`` (:mod:`vaehelpers.streams`) as a generator on ``device``."""
    return generator(name, cfg.seed, cfg.data_seed, index, cfg.streams, device)


def run_bytes(cfg: RunConfig, n_images: int) -> int:
    """About what a finished run's folder takes on disk (an upper estimate), with room for the temporary copy of
    its largest file while that is replaced: weights and Adam's two moments (fp32), the snapshots (uint8 images),
    TensorBoard's events (the same images as PNG, at most their raw size, and the scalars), the history,
    config.json with its validation indices, and measurements.json."""
    parameters = sum(p.numel() for p in ConvVAE(cfg.latent_dim, cfg.image_size, cfg.base_channels).parameters())
    image = 3 * cfg.image_size**2
    checkpoint = 3 * 4 * parameters + 64 * 1024  # + random-number states and the zip container's records
    snapshot_epochs = len(cfg.snapshot_epochs or [])
    shot_images = (cfg.panel_size + cfg.prior_samples) * image * snapshot_epochs
    snapshots = cfg.panel_size * image + cfg.prior_samples * 4 * cfg.latent_dim + shot_images + 2048 * (3 + 2 * snapshot_epochs)
    events = cfg.panel_size * image * snapshot_epochs + shot_images + 2000 * cfg.epochs + 16 * 1024
    small_files = 400 * cfg.epochs + 8 * n_images * cfg.val_fraction + 64 * 1024
    return int(checkpoint + snapshots + events + small_files + max(checkpoint, snapshots))


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
    def val_indices(self) -> torch.Tensor:
        """Indices of the run's validation images in its data set (recorded in config.json)."""
        return torch.tensor(self.info["split"]["val_indices"])

    def data(self, cache_dir: str | os.PathLike | None = None) -> ImageSet:
        """The run's image set, preprocessed as it trained on it (from the data cache). Where the data is no longer
        at the path the run recorded, or holds other images now, the cache's copy of what it trained on is read;
        where there is none, a ``FileNotFoundError`` says so."""
        recorded = self.info["data"]["key"]
        try:
            data = self.config.load_images(cache_dir)
            if self.config.data.startswith("builtin") or self.config.data_identity == 1 or data.key == recorded:
                return data  # (a run named by its data's path recorded a key of paths and times, not of content)
            problem = "holds other images now"
        except FileNotFoundError:
            problem = "is not there any more"
        except ValueError as e:  # an emptied folder, a damaged array
            problem = f"cannot be read now ({e})"
        kept = cached_images(recorded, self.config.data, cache_dir)
        if kept is None:
            raise FileNotFoundError(f"The data of run {self.dir.name}, {self.config.data}, {problem}, and the data "
                                    "cache holds no copy of the images it trained on: put the data back there (or, in "
                                    "Python, set the run's config.data to where it is now) and load the run again.")
        warnings.warn(f"The data of run {self.dir.name}, {self.config.data}, {problem}: its images are read from the "
                      "data cache's copy of what it trained on.", stacklevel=2)
        return kept

    @property
    def setting(self) -> Setting:
        return Setting(self.config.likelihood, self.config.kl_weight)

    @property
    def label(self) -> str:
        return self.setting.label


# ---------------------------------------------------------------- writing


def history_csv(history: dict[str, list[float]]) -> bytes:
    """The bytes of ``history.csv`` for a history held as columns."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HISTORY_COLUMNS)
    for i in range(len(history["epoch"])):
        writer.writerow([history[c][i] if c != "epoch" else int(history[c][i]) for c in HISTORY_COLUMNS])
    return out.getvalue().encode()


# ---------------------------------------------------------------- reading, with every file checked


def _damaged(path: Path, problem: str, remedy: str | None = None) -> RunDamaged:
    remedy = remedy or f"delete the folder {path.parent} and train the run again"
    return RunDamaged(f"{path} {problem}: {remedy}.")


def read_json(path: Path) -> dict:
    """A JSON object from a run folder, or :class:`RunDamaged` naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _damaged(path, "is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(path, f"is not readable JSON ({e})") from None
    if not isinstance(value, dict):
        raise _damaged(path, "does not hold a JSON object")
    return value


def read_history(path: Path) -> dict[str, list[float]]:
    """history.csv as columns of floats (``epoch`` as int), or :class:`RunDamaged` naming the file."""
    history: dict[str, list[float]] = {c: [] for c in HISTORY_COLUMNS}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                row.setdefault("peak_gpu_mib", "0")  # not recorded by runs made before it was
                missing = [c for c in HISTORY_COLUMNS if row.get(c) in (None, "")]
                if missing:
                    raise _damaged(path, f"lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                                         f"on line {line}")
                for c in HISTORY_COLUMNS:
                    history[c].append(int(row[c]) if c == "epoch" else float(row[c]))
    except FileNotFoundError:
        raise _damaged(path, "is missing") from None
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:
        if isinstance(e, RunDamaged):
            raise
        raise _damaged(path, f"is not a readable history ({e})") from None
    if history["epoch"] != list(range(1, len(history["epoch"]) + 1)):
        raise _damaged(path, "does not number its epochs 1, 2, 3, …")
    return history


def read_pt(path: Path) -> dict:
    """A ``.pt`` file of this project, read with ``weights_only=True``: tensors and plain containers only,
    no code from the file runs. Anything else (a damaged file, a planted pickle) is :class:`RunDamaged`."""
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise _damaged(path, "is missing") from None
    except Exception as e:  # torch raises many kinds for a truncated, foreign or unsafe file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _damaged(path, f"cannot be read safely ({reason[:200]})") from None
    if not isinstance(value, dict):
        raise _damaged(path, "does not hold this project's dictionary")
    return value


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder (finished or not) back, with the model on the CPU in eval mode.

    Every file is checked: a damaged or inconsistent one raises :class:`RunDamaged`, and a
    folder with no completed epoch ``FileNotFoundError``.
    """
    run_dir = Path(run_dir)
    checkpoint_file = run_dir / "checkpoint.pt"
    if not checkpoint_file.exists():
        raise FileNotFoundError(f"{run_dir} holds no completed epoch (no checkpoint.pt): train it with fit() first.")
    info = read_json(run_dir / "config.json")
    try:
        # a config.json written before data_seed existed: the seed chose the data and the split; before streams
        # existed: the streams of version 1; before data_identity: the data named by its path
        cfg = RunConfig(**{"data_seed": info["config"].get("seed", 0), "streams": 1, "data_identity": 1,
                            **info["config"]})
        if not {"val_indices", "train"} <= set(info["split"]) or "device" not in info or "data" not in info:
            raise KeyError("split, data or device")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise _damaged(run_dir / "config.json", f"does not describe a run ({type(e).__name__}: {e})") from None
    checkpoint = read_pt(checkpoint_file)
    epochs_done = checkpoint.get("epoch")
    if not isinstance(epochs_done, int) or not 1 <= epochs_done <= cfg.epochs:
        raise _damaged(checkpoint_file, f"names no completed epoch between 1 and {cfg.epochs} ({epochs_done!r})")
    model = build_model(cfg)
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, RuntimeError, TypeError) as e:
        raise _damaged(checkpoint_file, f"does not hold this run's weights ({str(e).splitlines()[0][:200]})") from None
    model.eval()
    history = read_history(run_dir / "history.csv")
    if len(history["epoch"]) < epochs_done:
        raise _damaged(run_dir / "history.csv", f"holds {len(history['epoch'])} epochs where checkpoint.pt has "
                                                f"{epochs_done}")
    history = {k: v[:epochs_done] for k, v in history.items()}
    if not all(math.isfinite(v) for c, values in history.items() for v in values):
        raise _damaged(run_dir / "history.csv", "holds losses that are not finite (the run diverged)",
                       f"delete the folder {run_dir} and train again with a lower learning rate")
    snapshots = read_pt(run_dir / "snapshots.pt")
    if not isinstance(snapshots.get("epochs"), dict) or "panel" not in snapshots or "prior_z" not in snapshots:
        raise _damaged(run_dir / "snapshots.pt", "does not hold this project's snapshots")
    snapshots["epochs"] = {e: s for e, s in snapshots["epochs"].items() if e <= epochs_done}
    return Run(run_dir, cfg, info, history, snapshots, model, epochs_done)
