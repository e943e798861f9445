"""The run store: safe to load, damaged files named, one trainer per run, nothing diverged marked finished."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vaehelpers.files import write_atomic
from vaehelpers.measure import measure_run
from vaehelpers.store import RunDamaged, load_run
from vaehelpers.train import TrainingDiverged, fit

from conftest import TWO_RUNS

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(data="builtin:120", image_size=32, base_channels=8, latent_dim=4, epochs=3, batch_size=25, lr=1e-3,
            val_fraction=0.1, snapshot_epochs=[1, 3], panel_size=4, prior_samples=6)


@pytest.fixture
def copy(two_runs, tmp_path, monkeypatch):
    """A copy of the shared finished run of KL weight 1 (tests/conftest.py), for a test to damage."""
    monkeypatch.setenv("VAEHELPERS_CACHE", str(two_runs.cache_dir))
    target = tmp_path / "runs" / two_runs.kl1.dir.name
    shutil.copytree(two_runs.kl1.dir, target)
    return target


class Payload:
    """Unpickling this runs a shell command: what a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name", ["checkpoint.pt", "snapshots.pt"])
def test_a_planted_pickle_is_refused_and_never_runs(copy, tmp_path, name):
    marker = tmp_path / "payload-ran"
    torch.save({"epoch": 3, "model": Payload(marker), "epochs": {}}, copy / name)
    with pytest.raises(RunDamaged, match=rf"^{re.escape(str(copy / name))} cannot be read safely .*: delete the folder"):
        fit(runs_dir=copy.parent, progress=False, kl_weight=1.0, **TWO_RUNS)  # a plain fit opens the folder it would reuse
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "checkpoint.pt").write_bytes((d / "checkpoint.pt").read_bytes()[:500]),
     r"checkpoint.pt cannot be read safely"),
    (lambda d: (d / "history.csv").write_text("garbage\n1,2,3\n"), r"history.csv lacks the columns epoch, "),
    (lambda d: (d / "history.csv").write_text((d / "history.csv").read_text().replace("0.", "x.", 1)),
     r"history.csv is not a readable history"),
    (lambda d: (d / "history.csv").write_text((d / "history.csv").read_text().splitlines()[0] + "\n"),
     r"history.csv holds 0 epochs where checkpoint.pt has 6"),
    (lambda d: (d / "config.json").write_text("{not json"), r"config.json is not readable JSON"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), r"config.json does not hold a JSON object"),
    (lambda d: (d / "snapshots.pt").unlink(), r"snapshots.pt is missing"),
])
def test_a_damaged_run_folder_names_the_file_and_what_to_do(copy, damage, message):
    damage(copy)
    with pytest.raises(RunDamaged) as raised:
        load_run(copy)
    text = str(raised.value)
    assert re.search(message, text) and str(copy) in text, text
    assert text.endswith(f": delete the folder {copy} and train the run again.") and "\n" not in text


def test_a_diverged_history_is_never_a_finished_run(copy):
    rows = (copy / "history.csv").read_text().splitlines()
    (copy / "history.csv").write_text("\n".join(rows[:-1] + [re.sub(r",[^,]+,", ",nan,", rows[-1], count=1)]) + "\n")
    with pytest.raises(RunDamaged, match="holds losses that are not finite .*train again with a lower learning rate"):
        load_run(copy)


def test_garbled_measurements_are_computed_again(copy):
    run = load_run(copy)
    (copy / "measurements.json").write_text('{"options": ')
    measured = measure_run(run, k=4, iwae_images=10, mmd_images=10, probe_images=50)
    assert json.loads((copy / "measurements.json").read_text())["psnr_db"] == measured["psnr_db"]


def test_divergence_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from vaehelpers import train

    optimizers = []
    real_adam = train.adam
    monkeypatch.setattr(train, "adam", lambda model, lr: optimizers.append(real_adam(model, lr)) or optimizers[-1])

    def raise_lr(epoch, row):  # a good first epoch, then a learning rate that blows the weights up
        if epoch == 1:
            for group in optimizers[0].param_groups:
                group["lr"] = 1e8

    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 2, step \d+ of 5: .* lower learning rate"):
        fit(runs_dir=tmp_path / "runs", progress=False, checkpoint_every=0, on_epoch_end=raise_lr, **TINY)
    (run_dir,) = (tmp_path / "runs").iterdir()
    run = load_run(run_dir)
    assert run.epochs_done == 1 and not run.finished  # the good epoch stays; nothing diverged was written


def test_two_processes_on_one_runs_folder_train_the_run_once(tmp_path):
    script = textwrap.dedent(f"""
        from vaehelpers.train import fit
        run = fit(runs_dir={str(tmp_path / 'runs')!r}, progress="epochs", checkpoint_every=0,
                  **{dict(TINY, data='builtin:600', epochs=8)!r})
        print("finished", run.finished, run.dir.name)
    """)
    env = dict(os.environ, VAEHELPERS_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    epochs_trained = sum(out.count(" epoch ") for out, _ in outs)
    assert epochs_trained == 8  # one trained all eight epochs, the other reused its run
    names = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(names) == 1 and next(iter(names)).startswith("finished True")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # one process wrote the run's TensorBoard events
    assert not list((tmp_path / "runs").rglob("*.tmp")) and not list((tmp_path / "cache").glob("*.tmp"))


def test_atomic_writes_use_unique_temporary_names(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: seen.append(Path(a).name) or real_replace(a, b))
    write_atomic(tmp_path / "config.json", b"1")
    write_atomic(tmp_path / "config.json", b"2")
    assert len(set(seen)) == 2 and all(n.startswith(".config.json.") and n.endswith(".tmp") for n in seen)
    assert (tmp_path / "config.json").read_bytes() == b"2"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it


def test_the_explorer_leaves_a_damaged_run_out_and_says_which(copy, tmp_path):
    from vaehelpers.explore import finished_runs

    damaged = copy.parent / "damaged-copy"
    shutil.copytree(copy, damaged)
    (damaged / "config.json").write_text("{")
    with pytest.warns(UserWarning, match=rf"Left out: {re.escape(str(damaged / 'config.json'))} is not readable JSON"):
        runs = finished_runs(copy.parent)
    assert list(runs.values()) == [copy]
