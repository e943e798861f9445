"""TensorBoard from the run store: every run writes its events into its own folder while it trains.

The runs folder is TensorBoard's log folder, each run folder one of its runs. The x axis of
every curve is the optimiser step (epoch e ends at step e · steps per epoch). What a run writes:

  * per epoch, for ``train`` and ``val``: ``recon``, ``kl``, ``objective``, ``neg_elbo`` (nats per
    image) and ``bits_per_dim`` (bits), as in ``history.csv`` (:mod:`vaehelpers.objective`);
  * a few times per epoch, ``train_steps/objective``: the objective of single mini-batches,
    values the training loop already holds on its device, sent at the end of the epoch;
  * at each snapshot epoch, the reconstruction panel (validation images above, their
    reconstructions from μ below) and the decoded prior samples, as images;
  * the run's settings through the HParams plugin (:data:`HPARAMS`), with its validation
    −ELBO and KL and, once measured (:mod:`vaehelpers.measure`), its IWAE bound, PSNR and
    active units (:data:`METRICS`), so that a sweep's runs compare in one table.

The run store's guarantees hold: only the process holding the run's lock writes its events;
a resumed run starts its writer with a purge at its first step again (TensorBoard's
``SessionLog.START``), so the epochs trained after the last checkpoint by an interrupted
process are dropped and every curve holds one point per epoch; events of runs trained
before this module existed are written from ``history.csv`` and ``snapshots.pt`` the first
time they are shown (:func:`write_missing`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torchvision.utils import make_grid

from .files import explain
from .store import SPLITS, TERMS, Run, RunConfig

EVENTS_GLOB = "events.out.tfevents.*"
HPARAMS = ("kl_weight", "latent_dim", "likelihood", "precision", "seed")
"""The settings the HParams table shows for each run (RunConfig's fields): what a sweep varies. (The table shows
five settings at first; the others are in the run's name and config.json.)"""
METRICS = {"val/neg_elbo": "validation -ELBO (nats)", "val/kl": "validation KL (nats)",
           "measure/iwae_neg_log_px": "IWAE bound (nats)", "measure/psnr_db": "PSNR (dB)",
           "measure/active_units": "active units"}
"""The HParams table's metrics: the tag of a scalar each run writes, and its column's title."""
MEASURED = ("iwae_neg_log_px", "psnr_db", "active_units")
"""The measurements (keys of measurements.json) written as ``measure/<key>`` scalars."""
STEP_POINTS = 4
"""How many mini-batch objectives an epoch writes to ``train_steps/objective``."""


def steps_per_epoch(cfg: RunConfig, n_train: int) -> int:
    """Optimiser steps in one epoch of ``n_train`` training images."""
    return math.ceil(n_train / cfg.batch_size)


def recorded_steps(steps: int) -> list[int]:
    """Which steps of an epoch (0-based) the loop keeps for ``train_steps/objective``: evenly spaced, the last
    included."""
    points = min(STEP_POINTS, steps)
    return [(i + 1) * steps // points - 1 for i in range(points)]


def has_events(run_dir: Path) -> bool:
    return any(run_dir.glob(EVENTS_GLOB))


class Board:
    """The event writer of the one process that trains a run (it holds the run's lock)."""

    def __init__(self, run_dir: Path, cfg: RunConfig, steps: int, history: dict[str, list[float]],
                 snapshots: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.steps, self.cfg, self.dir = steps, cfg, run_dir
        done = len(history.get("epoch", []))
        fresh = done == 0 or not has_events(run_dir)
        # purge_step writes SessionLog.START: at 0 for a run's first events; at the first step trained again for a
        # resumed run, which makes TensorBoard drop what an interrupted process wrote after its last checkpoint.
        with self._writing():
            self.writer = SummaryWriter(str(run_dir), purge_step=0 if fresh else done * steps + 1, flush_secs=10)
        if fresh:
            self._hparams()
            for i in range(done):  # a run trained before its events were written: from its files
                self.epoch({c: values[i] for c, values in history.items()})
            for epoch, shot in sorted(snapshots.get("epochs", {}).items()):
                self.snapshot(epoch, snapshots["panel"], shot["recon"], shot["samples"])

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A full disk or a read-only folder met by the writer (or by its background thread, which hands its error
        to the next call) as the one-sentence :class:`~vaehelpers.files.NotWritable`."""
        try:
            yield
        except OSError as e:
            raise explain(e, self.dir, 0, "the TensorBoard events") from None

    def _hparams(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = {name: getattr(self.cfg, name) for name in HPARAMS}
        experiment, session_start, _ = hparams(values, {tag: 0.0 for tag in METRICS},
                                               {"likelihood": ["fixed", "sigma-vae"], "precision": ["bf16", "fp32"]})
        with self._writing():
            for summary in (experiment, session_start):
                self.writer.file_writer.add_summary(summary, 0)

    def step_objectives(self, epoch: int, values: list[float]) -> None:
        """The recorded mini-batch objectives of ``epoch`` (:func:`recorded_steps`)."""
        first = (epoch - 1) * self.steps
        with self._writing():
            for step, value in zip(recorded_steps(self.steps), values):
                self.writer.add_scalar("train_steps/objective", value, first + step + 1)

    def epoch(self, row: dict[str, float]) -> None:
        """One row of the history: the epoch's training and validation terms."""
        step = int(row["epoch"]) * self.steps
        with self._writing():
            for split in SPLITS:
                for term in TERMS:
                    self.writer.add_scalar(f"{split}/{term}", row[f"{split}_{term}"], step)

    def snapshot(self, epoch: int, panel: torch.Tensor, recon: torch.Tensor, samples: torch.Tensor) -> None:
        """The reconstruction panel (uint8 images above their reconstructions) and the prior samples."""
        step = epoch * self.steps
        with self._writing():
            self.writer.add_image("snapshots/reconstructions", make_grid(torch.cat([panel, recon]), nrow=len(panel)), step)
            self.writer.add_image("snapshots/prior_samples", make_grid(samples, nrow=8), step)

    def flush(self) -> None:
        """Write what is buffered; called with the run's other files, before its checkpoint."""
        with self._writing():
            self.writer.flush()

    def close(self, quietly: bool = False) -> None:
        """Write what is buffered and close the file. ``quietly``: where another error is already on its way (a
        full disk met elsewhere), this one is dropped so that the first is the one told."""
        try:
            with self._writing():
                self.writer.close()
        except OSError:
            if not quietly:
                raise


def _from_files(run: Run) -> None:
    """The events of a run that has none, from its history and snapshots."""
    Board(run.dir, run.config, steps_per_epoch(run.config, run.info["split"]["train"]), run.history,
          run.snapshots).close()


def write_measurements(run: Run, measured: dict) -> None:
    """The HParams table's measured metrics (``measure/<key>``), at the run's last step (after the run's other
    events, from its files where it has none yet). The caller holds the run's lock."""
    from torch.utils.tensorboard import SummaryWriter

    if not has_events(run.dir):
        _from_files(run)
    steps = steps_per_epoch(run.config, run.info["split"]["train"])
    with SummaryWriter(str(run.dir)) as writer:
        for key in MEASURED:
            writer.add_scalar(f"measure/{key}", float(measured[key]), run.epochs_done * steps)


def write_missing(runs_dir: Path) -> list[str]:
    """Write the events of every run under ``runs_dir`` that has none (trained before this module), from its
    ``history.csv``, ``snapshots.pt`` and ``measurements.json``. A run another process holds (training it) is
    left to that process; a damaged one is left out. Returns one line per run written or left out."""
    import json

    from .files import locked
    from .store import RunDamaged, load_run

    lines = []
    for run_dir in sorted(p for p in Path(runs_dir).iterdir() if (p / "checkpoint.pt").exists()):
        if has_events(run_dir):
            continue
        with locked(run_dir / ".lock", f"the run {run_dir}"):
            if has_events(run_dir):  # written by the process we waited for
                continue
            try:
                run = load_run(run_dir)
            except RunDamaged as e:
                lines.append(f"left out: {e}")
                continue
            _from_files(run)
            try:
                measured = json.loads((run_dir / "measurements.json").read_text())
            except (OSError, ValueError):
                measured = None  # not measured yet: the report's measurements write them
            if isinstance(measured, dict) and all(isinstance(measured.get(k), (int, float)) for k in MEASURED):
                write_measurements(run, measured)
            lines.append(f"events written from the files of {run_dir.name} ({run.epochs_done} epochs)")
    return lines


def serve(runs_dir: Path, host: str = "127.0.0.1", port: int = 6006) -> str:
    """Start TensorBoard on ``runs_dir`` in this process (a background thread) and return its address.

    The Python loader (``--load_fast=false``) honours the purge of a resumed run; every event file of a run is
    read (``--reload_multifile``), a run's measurements being written in a file of their own.
    """
    from tensorboard import program

    tensorboard = program.TensorBoard()
    tensorboard.configure(argv=[None, "--logdir", str(runs_dir), "--host", host, "--port", str(port),
                                "--load_fast", "false", "--reload_multifile", "true", "--reload_interval", "5"])
    return tensorboard.launch()
