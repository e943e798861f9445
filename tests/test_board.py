"""TensorBoard events from the run store: written while a run trains, one clean curve after a resume or a
kill -9, written from the files of runs trained before, read back with TensorBoard's own loader."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vaehelpers import board, train
from vaehelpers.board import recorded_steps, write_missing
from vaehelpers.measure import measure_run
from vaehelpers.train import fit

from conftest import interrupt_at

pea = pytest.importorskip("tensorboard.backend.event_processing.plugin_event_accumulator",
                          reason="tensorboard is missing: rebuild .venv from the lock")

TINY = dict(data="builtin:150", image_size=32, base_channels=8, latent_dim=4, epochs=4, batch_size=25, lr=1e-3,
            val_fraction=0.1, snapshot_epochs=[2, 4], panel_size=4, prior_samples=6, precision="fp32")
STEPS = 6  # 135 training images in batches of 25


def _events(run_dir):
    """What TensorBoard's loader (the one `make board` uses) reads from a run folder."""
    accumulator = pea.EventAccumulator(str(run_dir), size_guidance={pea.TENSORS: 0})
    accumulator.Reload()
    return accumulator


def _curve(events, tag):
    return [(e.step, float(torch.tensor(e.tensor_proto.float_val[0]))) for e in events.Tensors(tag)]


def test_recorded_steps_are_evenly_spaced_and_end_the_epoch():
    assert recorded_steps(114) == [27, 56, 84, 113] and recorded_steps(3) == [0, 1, 2] and recorded_steps(1) == [0]


def test_a_run_writes_its_curves_images_and_settings_while_it_trains(tmp_path):
    seen = []
    run = fit(runs_dir=tmp_path, progress=False, checkpoint_every=0,
              on_epoch_end=lambda epoch, row: seen.append(len(_curve(_events(_run_dir(tmp_path)), "val/neg_elbo"))),
              **TINY)

    assert seen == [1, 2, 3, 4]  # on disk after each epoch, not only at the end
    events = _events(run.dir)
    for split in ("train", "val"):
        for term in ("recon", "kl", "objective", "neg_elbo", "bits_per_dim"):
            steps, values = zip(*_curve(events, f"{split}/{term}"))
            assert steps == (6, 12, 18, 24)
            assert values == pytest.approx(run.history[f"{split}_{term}"], rel=1e-6)
    assert [step for step, _ in _curve(events, "train_steps/objective")] == [
        epoch * STEPS + s + 1 for epoch in range(4) for s in recorded_steps(STEPS)]
    for tag in ("snapshots/reconstructions", "snapshots/prior_samples"):
        assert [e.step for e in events.Tensors(tag)] == [12, 24]
    start = events.Tensors("_hparams_/session_start_info")
    assert len(start) == 1
    measured = measure_run(run, k=4, iwae_images=8, mmd_images=8, probe_images=50)
    events = _events(run.dir)
    assert _curve(events, "measure/psnr_db") == [(24, pytest.approx(measured["psnr_db"], rel=1e-6))]


def _run_dir(runs):
    """The one run folder under ``runs`` (beside the tests' data cache)."""
    (folder,) = [p for p in runs.iterdir() if (p / "config.json").exists()]
    return folder


def _next_second() -> None:
    """Wait for the clock's next second. TensorBoard reads a run's event files in the order of their names, which
    start with the second each was opened in, then the host, the process id and a per-process counter, compared as
    text: two files opened in one second sort by pid or counter ("…9" after "…10"), not by time. A real resume
    opens its file seconds after the cut one; a test that resumes at once waits for the next second as well."""
    started = int(time.time())
    while int(time.time()) == started:
        time.sleep(0.02)


def test_a_resumed_run_has_one_point_per_epoch(tmp_path, monkeypatch):
    clock = iter(range(0, 1000, 10))  # checkpoints at epochs 2 and 4: epoch 3's events are written, then dropped
    monkeypatch.setattr(train, "_clock", lambda: next(clock))

    with pytest.raises(KeyboardInterrupt):
        fit(runs_dir=tmp_path, progress=False, on_epoch_end=interrupt_at(3), checkpoint_every=15, **TINY)
    assert [s for s, _ in _curve(_events(_run_dir(tmp_path)), "val/neg_elbo")] == [6, 12, 18]  # epoch 3 not checkpointed
    monkeypatch.undo()
    _next_second()
    resumed = fit(runs_dir=tmp_path, progress=False, **TINY)
    assert resumed.history["epoch"] == [1, 2, 3, 4]
    events = _events(resumed.dir)
    steps, values = zip(*_curve(events, "val/neg_elbo"))
    assert steps == (6, 12, 18, 24) and values == pytest.approx(resumed.history["val_neg_elbo"], rel=1e-6)
    assert [e.step for e in events.Tensors("snapshots/reconstructions")] == [12, 24]
    objective_steps = [s for s, _ in _curve(events, "train_steps/objective")]
    assert objective_steps == sorted(set(objective_steps)) and len(objective_steps) == 4 * len(recorded_steps(STEPS))


def test_kill_9_during_training_leaves_events_that_load_and_a_clean_resume(tmp_path):
    code = ("import time, sys; from vaehelpers.train import fit; "
            f"fit(runs_dir={str(tmp_path)!r}, progress=False, checkpoint_every=0, "
            f"on_epoch_end=lambda e, r: (print(e, flush=True), time.sleep(0.5)), **{dict(TINY, epochs=8)!r})")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    for line in child.stdout:
        if line.strip() == "3":
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    _events(_run_dir(tmp_path))  # loads
    _next_second()
    resumed = fit(runs_dir=tmp_path, progress=False, **dict(TINY, epochs=8))
    steps, values = zip(*_curve(_events(resumed.dir), "val/neg_elbo"))
    assert steps == tuple(STEPS * e for e in range(1, 9))
    assert values == pytest.approx(resumed.history["val_neg_elbo"], rel=1e-6)


def test_runs_trained_before_events_get_them_from_their_files(tmp_path):
    run = fit(runs_dir=tmp_path, progress=False, events=False, **TINY)
    assert not board.has_events(run.dir)
    measured = measure_run(run, k=4, iwae_images=8, mmd_images=8, probe_images=50)
    assert [s for s, _ in _curve(_events(run.dir), "val/neg_elbo")] == [6, 12, 18, 24]  # measuring wrote them all
    for events_file in run.dir.glob(board.EVENTS_GLOB):  # as if measured before this change
        events_file.unlink()
    assert write_missing(tmp_path) == [f"events written from the files of {run.dir.name} (4 epochs)"]
    events = _events(run.dir)
    steps, values = zip(*_curve(events, "val/neg_elbo"))
    assert steps == (6, 12, 18, 24) and values == pytest.approx(run.history["val_neg_elbo"], rel=1e-6)
    assert [e.step for e in events.Tensors("snapshots/prior_samples")] == [12, 24]
    assert _curve(events, "measure/active_units") == [(24, measured["active_units"])]
    assert len(events.Tensors("_hparams_/session_start_info")) == 1
    assert write_missing(tmp_path) == []  # once
