"""Full disks and read-only folders: one sentence naming the folder (and the space needed and free), no
temporary file left, the last complete checkpoint intact, and a rerun that resumes once there is room.

Where this process may mount (root), the tests use real tiny tmpfs filesystems, full or read-only; elsewhere
the full-disk ones are skipped with the reason and a read-only folder is made by chmod.
"""

import errno
import os
import shutil
import subprocess
import uuid

import numpy as np
import pytest
import torch

from vaehelpers import files, fit
from vaehelpers.__main__ import main
from vaehelpers.data import load_images
from vaehelpers.files import NotWritable, write_atomic
from vaehelpers.store import RunConfig, load_run, run_bytes

from conftest import TINY, without_time

TINY_RUN = dict(data="builtin:150", epochs=3, base_channels=8, latent_dim=4, batch_size=50, precision="fp32")


def _mount(folder, *options):
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tiny filesystem needs root and mount(8); this process has neither")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return folder


@pytest.fixture
def mounts(tmp_path):
    """Mount tiny tmpfs filesystems (``mounts(folder, "size=64k")``); unmounted after the test."""
    mounted = []

    def mount(folder, *options):
        mounted.append(_mount(folder, *options))
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder, leave=0):
    """Fill ``folder``'s filesystem but for ``leave`` bytes."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        while shutil.disk_usage(folder).free > leave:
            try:
                f.write(b"\0" * min(4096, max(1, shutil.disk_usage(folder).free - leave)))
                f.flush()
            except OSError:
                break
    return filler


def _temporary_files(folder):
    return [p.name for p in folder.rglob("*.tmp")]


@pytest.fixture
def read_only(tmp_path, mounts):
    """A read-only folder: a tmpfs mounted read-only as root (chmod does not stop root), else chmod 555."""
    folder = tmp_path / "read-only"
    if os.geteuid() == 0:
        return mounts(folder, "ro", "size=1m")
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_a_write_to_a_full_disk_says_so_and_leaves_the_old_file_and_no_temporary_file(tmp_path, mounts):
    disk = mounts(tmp_path / "disk", "size=256k")
    target = disk / "history.csv"
    write_atomic(target, b"old")
    _fill(disk)
    with pytest.raises(NotWritable) as raised:
        write_atomic(target, b"x" * 100_000)
    assert str(raised.value).startswith(f"Not enough space in {disk} for history.csv: 100 kB needed, ")
    assert "bytes free; free some space there or choose another folder, then run the same command again." in str(raised.value)
    assert raised.value.errno == errno.ENOSPC and "\n" not in str(raised.value)
    assert target.read_bytes() == b"old" and _temporary_files(disk) == []


def test_training_on_a_full_disk_stops_in_one_sentence_and_resumes_once_there_is_room(tmp_path, mounts):
    disk = mounts(tmp_path / "disk", "size=8m")
    filler = _fill(disk, leave=3_000_000)  # room for config.json and the first snapshots, not for every file
    with pytest.raises(NotWritable, match=rf"^Not enough space in {disk}/builtin150_kl1.* for (\S+: .* needed, |the "
                                          r"TensorBoard events: ).* free; "
                                          r"free some space there .* \(Run \S+ then resumes (from the start|after epoch \d, its last complete "
                                          r"checkpoint)\.\)$"):
        fit(RunConfig(**TINY_RUN), runs_dir=disk, progress=False, checkpoint_every=0)
    assert _temporary_files(disk) == []
    filler.unlink()  # space freed: the same command trains the run
    run = fit(RunConfig(**TINY_RUN), runs_dir=disk, progress=False, checkpoint_every=0)
    assert run.finished and _temporary_files(disk) == []


def test_a_disk_that_fills_mid_run_keeps_the_last_checkpoint_and_the_rerun_ends_as_an_uninterrupted_run(
        tmp_path, monkeypatch):
    reference = fit(RunConfig(**TINY_RUN), runs_dir=tmp_path / "reference", progress=False, checkpoint_every=0)
    real_fsync, checkpoints = os.fsync, []

    def fsync(fd):  # the disk fills while the third epoch's checkpoint is written
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".checkpoint.pt." in name:
            checkpoints.append(name)
            if len(checkpoints) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    runs = tmp_path / "runs"
    with pytest.raises(NotWritable, match=r"for checkpoint.pt: .* \(Run \S+ then resumes after epoch 2, its last "
                                          r"complete checkpoint\.\)$"):
        fit(RunConfig(**TINY_RUN), runs_dir=runs, progress=False, checkpoint_every=0)
    (run_dir,) = runs.iterdir()
    assert load_run(run_dir).epochs_done == 2 and _temporary_files(runs) == []
    monkeypatch.undo()
    resumed = fit(RunConfig(**TINY_RUN), runs_dir=runs, progress=False, checkpoint_every=0)
    assert without_time(resumed.history) == without_time(reference.history)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                                 reference.model.state_dict().values()))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer's thread dies of it
def test_a_full_disk_met_by_the_events_writer_is_the_same_one_sentence_and_the_rerun_resumes(tmp_path, monkeypatch):
    """The events are written by TensorBoard's background thread, which hands its error to the next call: a full
    disk there is told like any other (CI once met it first on a nearly full tmpfs, as a raw OSError from close)."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    reference = fit(RunConfig(**TINY_RUN), runs_dir=tmp_path / "reference", progress=False, checkpoint_every=0)
    full, real_write = [], RecordWriter.write

    def write(self, data):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(RecordWriter, "write", write)
    runs = tmp_path / "runs"
    with pytest.raises(NotWritable, match=r"^Not enough space in \S+ for the TensorBoard events: [\d.,]+ \S+ free; .* "
                                          r"\(Run \S+ then resumes after epoch 2, its last complete checkpoint\.\)$"):
        fit(RunConfig(**TINY_RUN), runs_dir=runs, progress=False, checkpoint_every=0,
            on_epoch_end=lambda epoch, row: full.append(True) if epoch == 2 else None)  # the disk fills after epoch 2
    (run_dir,) = runs.iterdir()
    assert load_run(run_dir).epochs_done == 2 and _temporary_files(runs) == []
    monkeypatch.undo()
    resumed = fit(RunConfig(**TINY_RUN), runs_dir=runs, progress=False, checkpoint_every=0)
    assert without_time(resumed.history) == without_time(reference.history)


def test_the_report_refuses_before_training_when_its_runs_cannot_fit(tmp_path, mounts, capsys):
    disk = mounts(tmp_path / "disk", "size=2m")
    assert main(["report", *TINY, "--runs-dir", str(disk / "runs"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    need = 6 * run_bytes(RunConfig(**{**TINY_RUN, "epochs": 2}), 150)
    assert error.startswith(f"error: Not enough space in {disk / 'runs'} for the 6 runs still to train: "
                            f"{files.size_text(need)} needed, ")
    assert list((disk / "runs").iterdir()) == []  # nothing trained, nothing left


def test_run_bytes_is_an_upper_estimate_of_a_finished_run(tmp_path):
    run = fit(RunConfig(**TINY_RUN), runs_dir=tmp_path, progress=False)
    sizes = [f.stat().st_size for f in run.dir.iterdir()]
    assert sum(sizes) + max(sizes) <= run_bytes(run.config, 150) <= 2 * (sum(sizes) + max(sizes))


def test_read_only_runs_and_reports_folders_are_refused_in_one_sentence(read_only, tmp_path, capsys):
    for runs, out in ((read_only / "runs", tmp_path / "out"), (tmp_path / "runs", read_only)):
        assert main(["report", *TINY, "--runs-dir", str(runs), "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: Cannot write ") and f"in {read_only}: it is read-only (" in error
        assert error.rstrip().endswith("make it writable or choose another folder, then run the same command again.")
    with pytest.raises(NotWritable, match=f"in {read_only}: it is read-only"):
        fit(RunConfig(**TINY_RUN), runs_dir=read_only, progress=False)


def test_a_data_cache_that_cannot_be_written_is_said_and_the_images_load_without_it(read_only, tmp_path, monkeypatch):
    faces = (np.random.default_rng(0).random((40, 16, 16, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "faces.npy", faces)
    with pytest.warns(UserWarning, match=rf"^Cannot write the data cache of .*faces.npy in {read_only}: it is read-only "
                                         r".* Until then the images are loaded without the cache"):
        loaded = load_images(tmp_path / "faces.npy", 16, cache_dir=read_only / "cache")
    assert len(loaded) == 40 and torch.equal(loaded.images, torch.from_numpy(faces).permute(0, 3, 1, 2))


def test_a_full_data_cache_is_said_and_leaves_no_part_of_its_entry(tmp_path, mounts):
    disk = mounts(tmp_path / "cache", "size=256k")
    faces = (np.random.default_rng(0).random((400, 16, 16, 3)) * 255).astype(np.uint8)  # 307 kB: more than fits
    np.save(tmp_path / "faces.npy", faces)
    with pytest.warns(UserWarning, match=rf"^Not enough space in {disk} for \S+\.npy: 307 kB needed, .* Until then"):
        loaded = load_images(tmp_path / "faces.npy", 16, cache_dir=disk)
    assert len(loaded) == 400 and sorted(p.suffix for p in disk.iterdir()) == [".lock"]
