"""Training: one run of one setting, in its own folder (:mod:`vaehelpers.store`).

``fit`` trains, or reuses a finished run, or resumes an interrupted one from its last
checkpoint. The run's files are written at most every ``checkpoint_every`` seconds (30 by
default) and after the last epoch, so that at GPU speed (epochs well under a second) the
writes do not dominate; on the CPU an interrupted run ends with the same history as an
uninterrupted one. A loss that stops being finite stops the run with
:class:`TrainingDiverged`; the last checkpoint stays and the run is not finished.

Which device trains is decided in :mod:`vaehelpers.devices`, which run of a setting is already there is looked
up in :mod:`vaehelpers.lookup`, and how fast each way of stepping is, measured in :mod:`vaehelpers.speed`; here
:func:`decide_step` puts those together into the one decision a command passes down, and :func:`fit` trains.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .board import Board, recorded_steps
from .cache import default_cache_dir
from .data import ImageSet, batches, split_indices
from .decode import to_uint8
from .devices import resolve_device
from .errors import OneSentenceError
from .files import NotWritable, ensure_writable, locked, torch_save_atomic, write_atomic
from .lookup import existing_config, finished_run, found_for
from .model import ConvVAE
from .objective import bits_per_dim, vae_loss
from .speed import NATIVE_BF16_ENV, Choice, choose_step, cpu_has_native_bf16, native_bf16_told
from .step import EncodeDecode, adam, compiled_encode_decode, compiler_missing, encode_decode, train_step, training_rate
from .store import HISTORY_COLUMNS, TERMS, Run, RunConfig, build_model, history_csv, load_run, read_pt, run_generator


class TrainingDiverged(OneSentenceError, RuntimeError):
    """Training produced a loss that is not finite. IPython shows it as its one sentence."""


_clock = time.monotonic  # when the run's files were last written (replaced in tests)


class EmulatedBf16(UserWarning):
    """bf16 asked for on a CPU that only emulates it (no AVX512-BF16 or AMX): many times slower than fp32."""


def warn_if_emulated(cfg: RunConfig, device: torch.device) -> None:
    """Warn, with the slowdown measured here on the run's model, where ``cfg`` trains in bf16 on a CPU that only
    emulates it. (``auto`` never chooses bf16 there; this is for an explicit ``precision="bf16"``.)"""
    if cfg.precision != "bf16" or device.type != "cpu" or cpu_has_native_bf16():
        return
    fp32, bf16 = _emulation_rates(cfg.base_channels, cfg.image_size, cfg.latent_dim, min(cfg.batch_size, 32))
    why = f"{NATIVE_BF16_ENV}=0 says so" if native_bf16_told() is False else "it has no AVX512-BF16 or AMX"
    warnings.warn(f"precision bf16 is emulated on this CPU ({why}): a training step of this "
                  f"model measured here ran {fp32 / bf16:.1f}x slower than in fp32 ({bf16:,.0f} against {fp32:,.0f} "
                  "images/s); train with precision 'auto' or 'fp32' unless bf16 itself is what you want.",
                  EmulatedBf16, stacklevel=3)


@functools.cache
def _emulation_rates(base_channels: int, image_size: int, latent_dim: int, batch_size: int) -> tuple[float, float]:
    """fp32 and bf16 training images/s of one model on this CPU, from two steps each: seconds, not minutes."""
    return tuple(training_rate(torch.device("cpu"), base_channels, p, batch_size, steps=2, warmup=1,  # type: ignore
                               image_size=image_size, latent_dim=latent_dim) for p in ("fp32", "bf16"))


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: ConvVAE, images: torch.Tensor, kl_weight: float, generator: torch.Generator, likelihood: str = "fixed",
    batch_size: int = 1000,
) -> dict[str, float]:
    """Mean terms over a uint8 image set (nats per image, one z ~ q(z|x) per image, ε from ``generator``, on the
    images' device), computed in fp32 there, with one transfer of the results at the end."""
    device = images.device
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


# ---------------------------------------------------------------- training


def train_epoch(model: ConvVAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, cfg: RunConfig,
                shuffle_gen: torch.Generator, noise_gen: torch.Generator, bar: tqdm,
                epoch: int, compiled: EncodeDecode | None = None) -> tuple[dict[str, float], list[float]]:
    """One pass over the shuffled training images; returns the terms' means over the epoch, and the objectives
    of the mini-batches :func:`~vaehelpers.board.recorded_steps` names (kept on the device until the epoch ends).
    ``compiled``: the compiled pass (:func:`~vaehelpers.step.compiled_encode_decode`), for full batches; an epoch's
    shorter last batch runs eagerly rather than compile a second graph for one step.

    Raises :class:`TrainingDiverged` at the end of an epoch in which a step's objective was not
    finite (found on the device, so that no step waits for it).
    """
    model.train()
    device = images.device
    sums = {k: torch.zeros((), device=device) for k in TERMS[:-1]}  # on the device: no sync per step
    steps = torch.arange(1, math.ceil(len(images) / cfg.batch_size) + 1, device=device)
    first_bad = torch.full((), len(steps) + 1, device=device)  # the first step whose objective was not finite
    recorded, kept = set(recorded_steps(len(steps))), []
    for step, x in enumerate(batches(images, cfg.batch_size, shuffle=True, generator=shuffle_gen)):
        passes = compiled if compiled is not None and len(x) == cfg.batch_size else encode_decode
        loss = train_step(model, optimizer, x, cfg.kl_weight, cfg.likelihood, cfg.precision, noise_gen, passes)
        if step in recorded:
            kept.append(loss.objective.detach())
        first_bad = torch.where(torch.isfinite(loss.objective), first_bad, torch.minimum(first_bad, steps[step]))
        for k in sums:
            sums[k] += getattr(loss, k).detach() * len(x)
        bar.update()
    bad_step = int(first_bad)  # the epoch's one wait for the device, with the sums below
    if bad_step <= len(steps):
        raise TrainingDiverged(_diverged(cfg, f"at epoch {epoch}, step {bad_step} of {len(steps)}"))
    means = {k: v.item() / len(images) for k, v in sums.items()}
    bar.set_postfix(epoch=epoch, objective=f"{means['objective']:.1f}")
    means["bits_per_dim"] = float(bits_per_dim(means["neg_elbo"], images[0].numel()))
    return means, torch.stack(kept).tolist()  # sent with the sums, at the epoch's one wait


def _diverged(cfg: RunConfig, where: str) -> str:
    return (f"Training KL weight {cfg.kl_weight:g} (likelihood {cfg.likelihood}, lr {cfg.lr:g}) diverged {where}: "
            f"the loss is no longer finite; the last checkpoint is kept and the run is not finished, "
            f"so try a lower learning rate (e.g. lr {cfg.lr / 10:g}).")


def check_split(data: ImageSet, cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's (train, validation) indices, or a ``ValueError`` if the set is too small for the
    figures: the interpolation needs two validation images."""
    train_idx, val_idx = split_indices(len(data), cfg.val_fraction, cfg.data_seed)
    if len(val_idx) < 2:
        need = next(n for n in range(len(data) + 1, 10**9) if len(split_indices(n, cfg.val_fraction)[1]) >= 2)
        raise ValueError(f"Data {data.source} has {len(data)} images, so its {cfg.val_fraction:.0%} validation "
                         f"split holds {len(val_idx)}: the figures need 2, so use at least {need} images "
                         "(or a larger val_fraction).")
    return train_idx, val_idx


def decide_step(cfg: RunConfig, device: torch.device, data: ImageSet, runs_dir: str | os.PathLike,
                cache_dir: str | os.PathLike | None = None, compiled: bool | None = None,
                settled: RunConfig | None = None) -> Choice:
    """How ``cfg`` trains on ``device`` here, its precision and its step (eager or compiled): the one decision a
    command makes and passes down.

    A finished run is as it was trained. With precision "auto", a run of these settings already under ``runs_dir``
    keeps the precision it was started in (:func:`~vaehelpers.lookup.existing_config`; ``settled``: its answer for
    ``cfg`` where the caller has it already), so that no run trains twice because two machines or commands would
    choose differently; the rest :func:`~vaehelpers.speed.choose_step` measures (once per machine and shape).
    Raises ``ValueError`` where ``compiled`` is True and no compiler is here.
    """
    if compiled and compiler_missing(device):
        raise ValueError(f"compiled = True asks for torch.compile, but {compiler_missing(device)} is here: "
                         "install one (e.g. apt-get install g++) or leave compiled unset.")
    train_images = len(check_split(data, cfg)[0])
    settled = settled if settled is not None else existing_config(cfg, runs_dir, data)
    done = finished_run(cfg, runs_dir, data, settled)
    if done is not None:  # nothing to train, nothing to measure: as it was trained
        return Choice(done.config.precision, bool(done.info.get("compiled", False)), "the run is finished")  # type: ignore
    choice = choose_step(settled, device, train_images, cache_dir, compiled)
    if settled is cfg:
        return choice
    return replace(choice, why=f"the run exists in {settled.precision}; {choice.why}")


RUN_FOLDER_FILE = "VAEHELPERS_RUN_FOLDER_FILE"
"""The environment variable naming a file into which :func:`fit` writes the folder of the run it trains: how a
Slurm task (:class:`~vaehelpers.slurm.RunTask`) finds its run's last checkpoint when Slurm signals it."""


def _name_run_folder(run_dir: Path) -> None:
    """Write ``run_dir`` into the file :data:`RUN_FOLDER_FILE` names, where it is set."""
    if os.environ.get(RUN_FOLDER_FILE):
        write_atomic(Path(os.environ[RUN_FOLDER_FILE]), f"{run_dir.resolve()}\n".encode())


def fit(
    cfg: RunConfig | None = None,
    *,
    runs_dir: str | os.PathLike = "runs",
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    progress: bool | str = True,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_every: float = 30.0,
    events: bool = True,
    compiled: bool | None = None,
    **settings,
) -> Run:
    """Train one VAE setting, or reuse/resume the run with the same settings.

    Pass a :class:`RunConfig` or its fields as keywords (``fit(kl_weight=100, epochs=20)``).
    The run's folder under ``runs_dir`` is named from the settings and the data.
    ``progress``: True for a tqdm bar (with the last epoch's objective), ``"epochs"`` for one printed
    line per epoch (for logs and papermill), False for silence.
    ``on_epoch_end(epoch, row)`` is called after each epoch (after its files, where it wrote them).
    ``checkpoint_every``: the least number of seconds between two writes of the run's files
    (0: after every epoch); the last epoch is always written.
    ``events``: write TensorBoard events into the run's folder while it trains (:mod:`vaehelpers.board`).
    ``precision="auto"`` and ``compiled=None`` (compile the step where it pays) are decided by :func:`decide_step`;
    whether the step was compiled is not part of the run's identity (it changes only the rounding).
    """
    cfg = cfg if cfg is not None else RunConfig(**settings)
    dev = resolve_device(device)
    data = cfg.load_images(cache_dir)
    check_split(data, cfg)
    asked, cfg = cfg, existing_config(cfg, runs_dir, data)  # the run's one lookup
    run_dir = Path(runs_dir) / cfg.run_name(data)
    _name_run_folder(run_dir)
    if cfg.precision != "auto" and (run_dir / "checkpoint.pt").exists():  # a finished run: reused, nothing measured
        with locked(run_dir / ".lock", f"the run {run_dir}"):
            done = load_run(run_dir)
            if done.finished:
                return found_for(done, asked)
    choice = decide_step(cfg, dev, data, runs_dir, cache_dir, compiled, settled=cfg)
    cfg = replace(cfg, precision=choice.precision)  # part of the run's identity
    run_dir = Path(runs_dir) / cfg.run_name(data)
    ensure_writable(run_dir, "the run's files")  # a read-only runs folder is said in one sentence
    _name_run_folder(run_dir)
    with locked(run_dir / ".lock", f"the run {run_dir}"):  # a second process waits here, then reuses the run
        done = load_run(run_dir) if (run_dir / "checkpoint.pt").exists() else None
        if done is None or not done.finished:
            warn_if_emulated(cfg, dev)
            if done is not None and compiled is None and done.info.get("compiled", False) != choice.compiled:
                # a resume keeps the step its run started with (runs from before compiling: eager), so that it
                # ends with the history of an uninterrupted run, where the compiler is still here
                compiled_before = done.info.get("compiled", False) and compiler_missing(dev) is None
                choice = replace(choice, compiled=compiled_before, why=f"as the run started; {choice.why}")
            if progress:
                print(f"training step: {choice.describe()}", flush=True)
            kernels = Path(cache_dir or default_cache_dir()) / "inductor"
            _train(cfg, data, run_dir, dev, done, progress, on_epoch_end, checkpoint_every, events,
                   compiled_encode_decode(kernels) if choice.compiled else None)
        return found_for(done if done is not None and done.finished else load_run(run_dir), asked)


def _train(cfg: RunConfig, data: ImageSet, run_dir: Path, dev: torch.device, done: Run | None,
           progress: bool | str, on_epoch_end: Callable[[int, dict[str, float]], None] | None,
           checkpoint_every: float, events: bool, compiled: EncodeDecode | None = None) -> None:
    """Train ``cfg`` into ``run_dir`` from scratch, or on from ``done``, the run's last checkpoint; ``compiled``:
    the compiled pass for the step, or None for eager."""
    train_idx, val_idx = check_split(data, cfg)
    images = data.images.to(dev)
    train_images, val_images = images[train_idx.to(dev)], images[val_idx.to(dev)]
    panel_idx = torch.arange(min(cfg.panel_size, len(val_idx)))
    panel = val_images[panel_idx.to(dev)]
    prior_z = torch.randn(cfg.prior_samples, cfg.latent_dim, generator=run_generator(cfg, "prior_codes"))

    model = build_model(cfg).to(dev, memory_format=torch.channels_last)
    optimizer = adam(model, cfg.lr)
    shuffle_gen = run_generator(cfg, "batches")
    noise_gen = run_generator(cfg, "noise", device=dev)
    history: dict[str, list[float]] = {c: [] for c in HISTORY_COLUMNS}
    snapshots = {"panel_val_indices": val_idx[panel_idx], "panel": panel.cpu(), "prior_z": prior_z, "epochs": {}}
    start_epoch = 0

    if done is not None:  # resume an interrupted run; load_run has checked its files
        checkpoint = read_pt(run_dir / "checkpoint.pt")
        model.load_state_dict(done.model.state_dict())
        optimizer.load_state_dict(checkpoint["optimizer"])
        shuffle_gen.set_state(checkpoint["shuffle_rng"])
        noise_gen.set_state(checkpoint["noise_rng"])
        start_epoch, history = done.epochs_done, done.history
        snapshots["epochs"] = done.snapshots["epochs"]
        if progress:
            print(f"resuming {run_dir.name} after epoch {start_epoch} of {cfg.epochs}, its last checkpoint", flush=True)
    else:
        info = {
            "config": asdict(cfg),
            "data": {"source": data.source, "key": data.key, "images": len(data), "skipped": data.skipped,
                     "converted": data.converted},
            "split": {"seed": cfg.data_seed, "val_fraction": cfg.val_fraction, "train": len(train_idx),
                      "val": len(val_idx), "val_indices": val_idx.tolist()},
            "model": model.hparams(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "device": str(dev),
            "compiled": compiled is not None,  # the step compiled by torch.compile (at the start; a resume may differ)
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }
        write_atomic(run_dir / "config.json", json.dumps(info, indent=1).encode())
        torch_save_atomic(run_dir / "snapshots.pt", snapshots)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    last_written, written_epoch = _clock(), start_epoch
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, disable=progress is not True,
               desc=f"kl_weight={cfg.kl_weight:g}", unit="batch")
    board, completed = None, False
    try:
        board = Board(run_dir, cfg, steps_per_epoch, history, snapshots) if events else None
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            started = time.perf_counter()
            train, step_objectives = train_epoch(model, optimizer, train_images, cfg, shuffle_gen, noise_gen, bar, epoch,
                                                  compiled)
            val = evaluate(model, val_images, cfg.kl_weight, run_generator(cfg, "validation", epoch, dev), cfg.likelihood)
            if not all(math.isfinite(v) for v in val.values()):  # a step that left the weights non-finite
                raise TrainingDiverged(_diverged(cfg, f"after the last step of epoch {epoch}"))
            row = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in val.items()}}
            row["seconds"] = time.perf_counter() - started
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else 0.0
            for c in HISTORY_COLUMNS:
                history[c].append(row[c])
            if board is not None:
                board.step_objectives(epoch, step_objectives)
                board.epoch(row)

            if epoch in cfg.snapshot_epochs:
                model.eval()
                with torch.no_grad():
                    snapshots["epochs"][epoch] = shot = {
                        "recon": to_uint8(reconstruct(model, panel.float() / 255)),
                        "samples": to_uint8(model.decode(prior_z.to(dev))),
                    }
                if board is not None:
                    board.snapshot(epoch, snapshots["panel"], shot["recon"], shot["samples"])
            if epoch == cfg.epochs or _clock() - last_written >= checkpoint_every:
                torch_save_atomic(run_dir / "snapshots.pt", snapshots)
                write_atomic(run_dir / "history.csv", history_csv(history))
                if board is not None:
                    board.flush()  # the events of the epochs the checkpoint completes are on disk before it
                torch_save_atomic(run_dir / "checkpoint.pt", {  # written last: it marks the epochs complete
                    "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "shuffle_rng": shuffle_gen.get_state(), "noise_rng": noise_gen.get_state(),
                })
                last_written, written_epoch = _clock(), epoch
            if progress == "epochs":
                print(f"kl_weight={cfg.kl_weight:g} epoch {epoch}/{cfg.epochs}: objective {row['train_objective']:.1f}, "
                      f"validation -ELBO {row['val_neg_elbo']:.1f} nats ({row['seconds']:.1f} s)", flush=True)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        completed = True
    except NotWritable as e:  # a full disk (a file or the events): the last complete checkpoint stays, the run resumes from it
        resumes = f"after epoch {written_epoch}, its last complete checkpoint" if written_epoch else "from the start"
        raise NotWritable(e.errno, f"{e} (Run {run_dir.name} then resumes {resumes}.)") from None
    finally:
        bar.close()
        if board is not None:
            try:
                board.close(quietly=not completed)  # where an error is on its way, it is the one to tell
            except NotWritable as e:  # the run's files are complete, its last events are not
                raise NotWritable(e.errno, f"{e} (Run {run_dir.name} is complete; its TensorBoard events may lack "
                                           "its last epochs.)") from None
