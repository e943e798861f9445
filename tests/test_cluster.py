"""What a real cluster does to a sweep that a one-node test run does not (issue 24): a report step on a machine
that would choose another precision, job records and folders another user could write, damaged records, a GPU
PyTorch cannot use, SIGTERM to the local executor, a dead kernel with one worker. None needs a Slurm cluster;
tests/test_slurm.py drives the real one."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from vaehelpers import report as report_module
from vaehelpers import devices, speed, train
from vaehelpers.__main__ import main
from vaehelpers.files import write_atomic
from vaehelpers.local import run_local
from vaehelpers.params import PROJECT
from vaehelpers.report import RunsMissing, load_report
from vaehelpers.slurm import SlurmOptions, run_slurm, slurm_dir
from vaehelpers.slurm_queue import IN_FLIGHT
from vaehelpers.slurm_record import RecordDamaged, read_record, run_key
from vaehelpers.trust import Untrusted
from vaehelpers.store import RunConfig
from vaehelpers.sweep import RunSpec, RunNotebook
from vaehelpers.devices import GPUUnusable, resolve_device
from vaehelpers.train import fit

from conftest import fixed_rates, interrupt_at

TINY = dict(data="builtin:150", epochs=1, base_channels=8, latent_dim=4, batch_size=50)


def test_the_report_step_finds_the_runs_a_node_trained_in_another_precision_and_trains_none(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv(speed.NATIVE_BF16_ENV, "0")  # the nodes have no native bf16, whatever this CPU has
    for weight in (1.0, 100.0, 0.0):  # what a cluster's tasks trained: fp32, decided on their nodes
        fit(RunConfig(kl_weight=weight, precision="fp32", **TINY), runs_dir=runs, progress=False, device="cpu")
    # The login node's "auto" would choose bf16 (native there, and twice as fast), and train everything again.
    monkeypatch.setenv(speed.NATIVE_BF16_ENV, "1")
    monkeypatch.setattr(speed, "measure_rates", fixed_rates({"fp32": 500.0, "bf16": 1000.0}))
    assert train.decide_step(RunConfig(kl_weight=10.0, **TINY), resolve_device("cpu"), RunConfig(**TINY).load_images(),
                             runs).precision == "bf16"

    def no_training(*args, **kwargs):
        raise AssertionError("the report step trained a run")

    monkeypatch.setattr(report_module, "fit", no_training)
    report = load_report([1.0, 100.0, 0.0], sigma_vae=False, runs_dir=str(runs), device="cpu", train_missing=False,
                         precision="auto", **TINY)
    assert [run.config.precision for run in report.three] == ["fp32"] * 3
    assert len(list(runs.glob("*/config.json"))) == 3  # no run folder was added
    with pytest.raises(RunsMissing, match=r"^1 of 4 runs of the report are not trained under .*\(KL weight 10, latent "
                                          r"size 4, seed 0\), and the report trains none itself"):
        load_report([1.0, 100.0, 0.0, 10.0], sigma_vae=False, runs_dir=str(runs), device="cpu", train_missing=False,
                    **TINY)


def _task(tmp_path: Path, **changes) -> RunNotebook:
    parameters = {**dict(data="builtin:150", epochs=2, kl_weight=1.0, seed=0, runs_dir=str(tmp_path / "runs")), **changes}
    return RunNotebook(RunSpec(1.0, "fixed", 0, 4), tmp_path / "out" / "run-kl1.ipynb", parameters)


def test_the_job_record_is_keyed_by_the_runs_identity_not_its_notebook(tmp_path):
    task = _task(tmp_path)
    assert run_key(task) == run_key(RunNotebook(task.spec, tmp_path / "elsewhere.ipynb", dict(task.parameters)))
    assert run_key(task) != run_key(_task(tmp_path, lr=1e-4))  # other settings: another run, never waited on
    assert run_key(task) == run_key(_task(tmp_path, checkpoint_every=5.0, compiled=True, device="cpu"))  # same run
    assert {"PREEMPTED", "PENDING", "RUNNING", "REQUEUED"} <= IN_FLIGHT and "UNKNOWN" not in IN_FLIGHT


def test_pickles_an_earlier_version_queued_still_load_under_the_names_they_give(tmp_path):
    """A Slurm task's pickle names its callable (vaehelpers.slurm.RunTask) and its argument, which earlier versions
    called vaehelpers.sweep.Task: a requeued or adopted task queued before the rename still loads."""
    import pickle

    from vaehelpers.slurm import RunTask

    task = _task(tmp_path)
    RunNotebook.__qualname__ = "Task"  # pickled as the version before the rename did
    try:
        old = pickle.dumps((RunTask(3), task))
    finally:
        RunNotebook.__qualname__ = "RunNotebook"
    assert b"vaehelpers.sweep" in old and b"Task" in old and b"RunNotebook" not in old
    callable_, argument = pickle.loads(old)
    assert type(callable_) is RunTask and type(callable_).__module__ == "vaehelpers.slurm" and callable_.time_min == 3
    assert type(argument) is RunNotebook and run_key(argument) == run_key(task)


class Planted:
    """A pickle that, loaded, writes a file: what anyone able to write the Slurm folder could leave there."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _plant(folder: Path, marker: Path) -> None:
    """A result pickle where submitit reads job 1234_0's (``<job>_<task>_result.pkl`` in the job's folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "1234_0_0_result.pkl").write_bytes(pickle.dumps(("success", Planted(marker))))


def _private_group() -> bool:
    """Whether this user's primary group is a group of their own (named after them, no other member)."""
    import grp
    import pwd

    user = pwd.getpwuid(os.getuid())
    group = grp.getgrgid(user.pw_gid)
    return group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


def _shared_group(path: Path) -> None:
    """Give ``path`` a group other users are in, so that its group write bit lets others write it (a group of this
    user's own would not: it is accepted)."""
    if os.geteuid() == 0:
        os.chown(path, -1, 65534, follow_symlinks=False)
    elif _private_group():
        pytest.skip("this user's group is their own and only root can give a file another group here")


@pytest.mark.parametrize("where", ["slurm folder", "record"])
def test_a_slurm_folder_or_record_others_can_write_is_refused_and_nothing_in_it_loaded(tmp_path, where, capsys):
    folder, marker = slurm_dir(tmp_path / "runs"), tmp_path / "marker"
    _plant(folder / "1234_0", marker)
    record = {"version": 1, "jobs": {run_key(_task(tmp_path)): {"job": "1234_0", "notebook": "x", "label": "y",
                                                                "submitted": time.time()}}}
    (folder / "jobs.json").write_text(json.dumps(record))
    _shared_group(folder if where == "slurm folder" else folder / "jobs.json")
    folder.chmod(0o775 if where == "slurm folder" else 0o700)
    (folder / "jobs.json").chmod(0o664 if where == "record" else 0o600)
    bad, mode = (folder, "0775") if where == "slurm folder" else (folder / "jobs.json", "0664")
    with pytest.raises(Untrusted, match=rf"^{re.escape(str(bad))} can be written by other users \(mode {mode}\), "
                                        "so it is not read: a file planted there could run code in this process"):
        run_slurm([_task(tmp_path)], tmp_path / "runs", SlurmOptions())
    assert not marker.exists()
    assert main(["report", "--data", "builtin:150", "--epochs", "2", "--base-channels", "8", "--latent-dim", "4",
                 "--batch-size", "50", "--executor", "slurm", "--runs-dir", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad} can be written by other users")
    assert not marker.exists()


def test_a_job_folder_others_can_write_is_refused_before_its_result_is_unpickled(tmp_path):
    from vaehelpers.trust import check_trusted

    folder, marker = slurm_dir(tmp_path / "runs"), tmp_path / "marker"
    folder.mkdir(mode=0o700, parents=True)
    job = folder / "1234_0"
    _plant(job, marker)  # a result that, unpickled, writes the marker; a record that names its job
    record = {"version": 1, "jobs": {run_key(_task(tmp_path)): {"job": "1234_0", "notebook": "x", "label": "y",
                                                                "submitted": time.time()}}}
    (folder / "jobs.json").write_text(json.dumps(record))
    (folder / "jobs.json").chmod(0o600)
    _shared_group(job)
    job.chmod(0o770)  # the job's folder group-writable: what lies in it is not this user's alone
    with pytest.raises(Untrusted, match=rf"^{re.escape(str(job))} can be written by other users \(mode 0770\)"):
        run_slurm([_task(tmp_path)], tmp_path / "runs", SlurmOptions(poll_s=0.1, lost_after_s=20))
    assert not marker.exists()
    job.chmod(0o700)
    check_trusted(job)  # private again: trusted
    link = folder / "link"
    link.symlink_to(job)
    with pytest.raises(Untrusted, match="is a symbolic link"):
        check_trusted(link)


def test_the_slurm_folder_is_created_private(tmp_path):
    from vaehelpers.trust import make_private

    old = os.umask(0o002)  # a shared project's umask
    try:
        folder = make_private(slurm_dir(tmp_path / "runs"))
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_record_naming_one_job_for_several_runs_is_damaged(tmp_path):
    folder = slurm_dir(tmp_path)
    folder.mkdir(mode=0o700, parents=True)
    jobs = {f"key{i}": {"job": "77_1", "notebook": f"n{i}", "label": f"l{i}", "submitted": 0.0} for i in range(3)}
    (folder / "jobs.json").write_text(json.dumps({"version": 1, "jobs": jobs}))
    (folder / "jobs.json").chmod(0o600)
    with pytest.raises(RecordDamaged, match=r"is damaged: job 77_1 is recorded for 3 runs, and a task trains one"):
        read_record(folder)
    (folder / "jobs.json").write_text("{not json")
    with pytest.raises(RecordDamaged, match=r"is damaged \(not the record this program writes\)"):
        read_record(folder)


def test_auto_stops_where_an_nvidia_driver_is_loaded_but_pytorch_cannot_use_its_gpu(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("PyTorch uses the GPU here: the case of a GPU it cannot use is made on a machine without one")
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
                       "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    monkeypatch.setattr(devices, "NVIDIA_DRIVER", version)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cuda = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
    with pytest.raises(GPUUnusable, match=rf"found NVIDIA driver 535\.104\.05 but PyTorch cannot use its GPU \(PyTorch "
                                          rf"{re.escape(torch.__version__)} is {cuda}; PyTorch says: .*\): .*install a "
                                          "PyTorch build for"):
        resolve_device("auto")
    assert resolve_device("cpu").type == "cpu"  # --device cpu still trains
    assert main(["report", "--data", "builtin:150", "--epochs", "1", "--runs-dir", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "out")]) == 2
    assert re.match(r"error: device 'auto' found NVIDIA driver 535\.104\.05 .* or pass device 'cpu' \(--device cpu\) "
                    r"to train on the CPU\.$", capsys.readouterr().err.strip())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every GPU hidden on purpose: the CPU, without a word
    assert resolve_device("auto").type == "cpu"
    version.unlink()  # no driver at all: the CPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert resolve_device("auto").type == "cpu"


def _notebook(path: Path, code: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_one_local_worker_records_a_dead_kernel_and_goes_on_like_the_pool(tmp_path, capsys):
    dies = RunNotebook(RunSpec(1.0, "fixed", 0, 4), tmp_path / "dies.ipynb", {},
                _notebook(tmp_path / "die.ipynb", "import os\nos._exit(1)"))
    lives = RunNotebook(RunSpec(100.0, "fixed", 0, 4), tmp_path / "lives.ipynb", {},
                 _notebook(tmp_path / "live.ipynb", "print('alive')"))
    failures = run_local([dies, lives], workers=1, threads=0)
    assert len(failures) == 1 and failures[0].startswith("KL weight 1, latent size 4, seed 0: ")
    assert "DeadKernelError" in failures[0] or "died" in failures[0]
    assert "alive" in (tmp_path / "lives.ipynb").read_text()  # the next run was executed


@pytest.mark.slow  # a report of three runs, stopped and (SIGTERM) run again
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_report_ends_every_worker_and_kernel_and_the_rerun_resumes(tmp_path, sig):
    """SIGTERM (``timeout``, a batch scheduler, a closing terminal) or SIGINT to the parent alone: no process it
    started is left, and (SIGTERM) the rerun resumes the runs from their checkpoints."""
    args = [sys.executable, "-m", "vaehelpers", "report", "--data", "builtin:600", "--epochs", "12", "--base-channels",
            "8", "--latent-dim", "4", "--batch-size", "50", "--kl-weights", "1,100,0", "--no-sigma-vae",
            "--extra-seeds", "none", "--workers", "2", "--threads", "1", "--checkpoint-every", "0", "--no-pdf",
            "--precision", "fp32", "--compile", "no",  # nothing for the speed probe to measure
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(PROJECT)))
    seen, lines = set(), []
    for line in proc.stdout:  # both workers training: each has written a checkpoint
        lines.append(line)
        if m := re.match(r"\[(run-kl\d+)\] kl_weight=\S+ epoch 2/12", line):
            seen.add(m.group(1))
        if len(seen) == 2:
            break
    assert len(seen) == 2, "".join(lines)[-3000:]
    started = psutil.Process(proc.pid).children(recursive=True)
    kernels = [p for p in started if "ipykernel" in " ".join(p.cmdline())]
    assert len(kernels) == 2 and len(started) >= 4  # two workers, their kernels (and multiprocessing's tracker)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err[-2000:]  # 143 for SIGTERM, 130 for SIGINT
    assert re.search(r"interrupted: the runs being trained stop \(\d+ worker and kernel processes ended\)", err), err
    time.sleep(0.5)
    left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], [p.cmdline() for p in left]
    if sig == signal.SIGTERM:
        rerun = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                               env=dict(os.environ, PYTHONPATH=str(PROJECT)))
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert re.search(r"resuming \S+ after epoch ([2-9]|1[01]) of 12", rerun.stdout), rerun.stdout[-3000:]


# ---------------------------------------------------------------- runs survive moving the data (item 7)

SMALL = dict(image_size=32, base_channels=8, latent_dim=4, epochs=2, batch_size=25, lr=1e-3, val_fraction=0.1,
             snapshot_epochs=[1, 2], panel_size=4, prior_samples=6, precision="fp32")


def _faces_npy(path: Path, cache: Path) -> Path:
    """120 built-in faces as an (N, 32, 32, 3) .npy file with a fixed modification time: the same bytes and
    times on every machine."""
    import numpy as np

    from vaehelpers.data import load_images

    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, load_images("builtin:120", 32, cache_dir=cache).images.permute(0, 2, 3, 1).numpy())
    os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    return path


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a run trained again")

    monkeypatch.setattr(train, "_train", refuse)


@pytest.mark.parametrize("kind", ["array", "folder"])
def test_a_run_is_found_again_after_its_data_is_moved(tmp_path, monkeypatch, kind):
    import shutil

    from PIL import Image

    import numpy as np

    if kind == "array":
        source = _faces_npy(tmp_path / "a" / "faces.npy", tmp_path / "cache")
    else:
        source = tmp_path / "a" / "faces"
        source.mkdir(parents=True)
        for j, image in enumerate(np.load(_faces_npy(tmp_path / "x.npy", tmp_path / "cache"))[:60]):
            Image.fromarray(image).save(source / f"{j:03d}.png")
    run = fit(RunConfig(data=str(source), **SMALL), runs_dir=tmp_path / "runs", progress=False, device="cpu")
    moved = tmp_path / "scratch" / source.name  # a copy on a cluster's scratch: new path, new times
    moved.parent.mkdir()
    (shutil.copytree if kind == "folder" else shutil.copy)(source, moved)
    shutil.rmtree(source) if kind == "folder" else source.unlink()
    _no_training(monkeypatch)
    again = fit(RunConfig(data=str(moved), **SMALL), runs_dir=tmp_path / "runs", progress=False, device="cpu")
    assert again.dir == run.dir and again.config.data == str(moved)
    assert len(again.data()) == run.info["data"]["images"]  # its images read where they are now
    changed = moved / "000.png" if kind == "folder" else moved  # other content: another run
    if kind == "folder":
        changed.unlink()
    else:
        np.save(changed, np.load(changed)[:100])
    with pytest.raises(AssertionError, match="a run trained again"):
        fit(RunConfig(data=str(moved), **SMALL), runs_dir=tmp_path / "runs", progress=False, device="cpu")


def test_a_run_named_by_its_datas_path_keeps_its_name_and_is_reused(tmp_path, monkeypatch):
    """Runs trained before content keys were named by their data's path and times: such a run is found under
    that name (here the one the code before gave it, commit ecc485a) and reused, not trained again."""
    import tempfile

    npy = _faces_npy(Path(tempfile.gettempdir()) / "vaehelpers-golden" / "faces.npy", tmp_path / "cache")
    run = fit(RunConfig(data=str(npy), data_identity=1, **SMALL), runs_dir=tmp_path, progress=False, device="cpu")
    assert run.dir.name == "faces_kl1_z4_e2_seed0_fp32_c7f31a79"
    info = json.loads((run.dir / "config.json").read_text())
    del info["config"]["data_identity"]  # as the code before wrote it
    (run.dir / "config.json").write_text(json.dumps(info))
    _no_training(monkeypatch)
    again = fit(RunConfig(data=str(npy), **SMALL), runs_dir=tmp_path, progress=False, device="cpu")
    assert again.dir == run.dir and again.config.data_identity == 1
    assert RunConfig(data=str(npy), **SMALL).run_name(again.data()) != run.dir.name  # a new run's name differs


def test_the_report_step_takes_a_run_finished_in_both_precisions_without_training(tmp_path, monkeypatch):
    """bench --compare-precision leaves a setting finished in fp32 and in bf16: the report step takes the one
    "auto" chooses, which is finished, and trains nothing (it stopped with RunsMissing)."""
    runs = tmp_path / "runs"
    small = dict(TINY, data="builtin:100")
    for weight in (1.0, 100.0, 0.0):
        fit(RunConfig(kl_weight=weight, precision="fp32", **small), runs_dir=runs, progress=False, device="cpu")
    fit(RunConfig(kl_weight=1.0, precision="bf16", **small), runs_dir=runs, progress=False, device="cpu")
    _no_training(monkeypatch)
    report = load_report([1.0, 100.0, 0.0], sigma_vae=False, runs_dir=str(runs), device="cpu", train_missing=False,
                         **small)
    assert report.runs[1.0].config.precision == "fp32"  # the fixed probe here: fp32 faster


class _Job:
    """What ``slurm_queue.wait_for`` reads of a submitit job, with the state Slurm would report."""

    class _Watcher:
        def update(self) -> None:
            pass

    def __init__(self, folder: Path, job_id: str, state: str):
        from submitit.core.utils import JobPaths

        self.job_id, self.state, self.watcher = job_id, state, self._Watcher()
        self.paths = JobPaths(folder / "%j", job_id=job_id, task_id=0)


def test_a_preempted_task_slurm_never_requeues_is_reported_after_the_grace_period_not_waited_on_forever(tmp_path, capsys,
                                                                                                         monkeypatch):
    from vaehelpers.slurm_queue import wait_for

    folder = slurm_dir(tmp_path)
    folder.mkdir(mode=0o700)
    from vaehelpers import slurm_queue

    preempted, requeued = _Job(folder, "51_0", "PREEMPTED"), _Job(folder, "51_1", "PREEMPTED")
    listed = _Job(folder, "51_2", "PREEMPTED")  # PREEMPTED, but squeue lists it: coming back, waited on
    in_queue = slurm_queue.in_queue
    monkeypatch.setattr(slurm_queue, "in_queue", lambda job_id: True if job_id == "51_2" else in_queue(job_id))
    task = _task(tmp_path)
    for job in (requeued, listed):
        job.paths.folder.mkdir(mode=0o700, parents=True)

    def slurm() -> None:  # Slurm requeues the second (PENDING), which then finishes its run; the first stays
        time.sleep(0.3)
        requeued.state = "PENDING"
        time.sleep(0.7)
        write_atomic(requeued.paths.result_pickle, pickle.dumps(("success", 12.0)), mode=0o600)  # as submitit's
        requeued.state = "COMPLETED"
        time.sleep(3.0)  # past the grace period and lost_after_s: the listed one still comes back, and finishes
        write_atomic(listed.paths.result_pickle, pickle.dumps(("success", 12.0)), mode=0o600)
        listed.state = "COMPLETED"

    threading.Thread(target=slurm, daemon=True).start()
    started = time.monotonic()
    failures = wait_for([(task, preempted, time.time()), (task, requeued, time.time()), (task, listed, time.time())],
                        poll_s=0.05, lost_after_s=2.0)
    assert 4.0 <= time.monotonic() - started < 15
    assert len(failures) == 1 and re.fullmatch(
        rf"{task.spec.label}: Slurm job 51_0 was preempted and not requeued \(\d s in that state, out of Slurm's queue: "
        r"its partition's PreemptMode cancels\); the command submits it again when run again, and its run resumes "
        r"from its last checkpoint", failures[0]), failures
    assert "== 2 of 3 runs trained in Slurm" in capsys.readouterr().out


def test_a_result_pickle_another_user_owns_or_a_link_is_never_unpickled(tmp_path):
    from vaehelpers.slurm_queue import task_error
    from vaehelpers.trust import read_trusted

    folder, marker = slurm_dir(tmp_path), tmp_path / "marker"
    folder.mkdir(mode=0o700)
    job = _Job(folder, "1234_0", "COMPLETED")
    _plant(job.paths.folder, marker)
    job.paths.folder.chmod(0o700)
    pickle_file = job.paths.result_pickle
    pickle_file.chmod(0o600)
    if os.geteuid() == 0:  # a file swapped in by another user: theirs, whatever its mode and folder
        os.chown(pickle_file, 65534, 65534)
        with pytest.raises(Untrusted, match=rf"^{re.escape(str(pickle_file))} belongs to user id 65534, not to you"):
            task_error(job, "COMPLETED")
        assert not marker.exists()
        os.chown(pickle_file, 0, 0)
    moved = tmp_path / "elsewhere.pkl"
    pickle_file.rename(moved)
    pickle_file.symlink_to(moved)  # a link in its place: not followed
    with pytest.raises(Untrusted, match=rf"^{re.escape(str(pickle_file))} is a symbolic link"):
        task_error(job, "COMPLETED")
    assert not marker.exists()
    fifo = job.paths.folder / "fifo"
    os.mkfifo(fifo, 0o600)  # nothing to read, ever: refused at once, not waited on
    with pytest.raises(Untrusted, match="is not a regular file"):
        read_trusted(fifo)
    pickle_file.unlink()
    assert task_error(job, "CANCELLED", patience_s=0) == ("the task ended (CANCELLED) without a result (killed, out "
                                                           "of memory or its node lost?)")
    pickle_file.write_bytes(pickle.dumps(("error", "Traceback (most recent call last):\n  ...\nvaehelpers.slurm.RunFailed: "
                                          "TrainingDiverged: the run diverged")))
    pickle_file.chmod(0o600)
    assert task_error(job, "FAILED") == "TrainingDiverged: the run diverged"


@pytest.mark.parametrize("mode", [0o775, 0o1777, "private group"])
def test_a_runs_folder_others_could_swap_is_refused_unless_sticky_or_the_users_own_group(tmp_path, mode):
    import grp
    import pwd

    from vaehelpers.trust import make_private

    runs = tmp_path / "shared" / "runs"
    runs.mkdir(parents=True)
    user = pwd.getpwuid(os.getuid())
    if mode == "private group":  # RHEL's umask 002 with a group of one's own: only this user writes
        if not _private_group():
            pytest.skip(f"the primary group of {user.pw_name} ({grp.getgrgid(user.pw_gid).gr_name}) is not theirs alone")
        os.chown(tmp_path / "shared", -1, user.pw_gid)
        (tmp_path / "shared").chmod(0o775)
        assert make_private(slurm_dir(runs)).stat().st_mode & 0o777 == 0o700
        return
    _shared_group(tmp_path / "shared")
    (tmp_path / "shared").chmod(mode)  # a shared project folder: group-writable (or sticky, like /tmp)
    if mode & 0o1000:
        assert make_private(slurm_dir(runs)).stat().st_mode & 0o777 == 0o700
        return
    with pytest.raises(Untrusted, match=rf"^{re.escape(str(tmp_path / 'shared'))} can be written by other users "
                                        r"\(mode 0775\), so another user could put a folder of theirs in the place of"):
        make_private(slurm_dir(runs))
    assert not slurm_dir(runs).exists()  # nothing made in the place it refused


def test_a_requeue_at_the_time_limit_after_a_slice_without_a_checkpoint_is_refused_with_the_fix(tmp_path, monkeypatch):
    from vaehelpers import slurm
    from vaehelpers.slurm import RunTask
    from vaehelpers.slurm_queue import RunFailed

    monkeypatch.setattr(slurm, "end_descendants", lambda **kwargs: 0)  # it would end pytest's own children
    named_in = tmp_path / "run_folder.txt"
    monkeypatch.setenv(train.RUN_FOLDER_FILE, str(named_in))
    task = _task(tmp_path, epochs=6)
    twice = RunTask(time_min=3)  # under 10 min, submitit counts every signal as the time limit
    twice.stalled = 1  # the slice before ended without a checkpoint too (one may go to the speed probe)
    with pytest.raises(RunFailed, match=r"^run-kl1\.ipynb reached its time limit of 3 min twice in a row without writing "
                                        r"a checkpoint \(its run resumes from its last checkpoint, if any\): another "
                                        r"slice would end the same way, so it is not requeued; give the tasks more time"):
        twice.checkpoint(task, 1)

    with pytest.raises(KeyboardInterrupt):  # interrupted after its checkpoint of epoch 3 of 6
        fit(RunConfig(kl_weight=1.0, precision="fp32", **dict(TINY, epochs=6)), runs_dir=tmp_path / "runs",
            progress=False, device="cpu", checkpoint_every=0, on_epoch_end=interrupt_at(3))
    assert named_in.read_text().strip() == str(next((tmp_path / "runs").glob("*/checkpoint.pt")).parent.resolve())
    after_3 = RunTask(time_min=3)
    after_3.last_epoch, after_3.stalled = 3, 1  # the requeue before was after epoch 3 too, and the one before that
    with pytest.raises(RunFailed, match=r"twice in a row without writing a checkpoint \(its run resumes after epoch 3 "
                                        r"of 6\)"):
        after_3.checkpoint(task, 1)
    capped = RunTask(time_min=3, max_requeues=2)
    capped.requeues = 2
    with pytest.raises(RunFailed, match=r"reached its time limit of 3 min after 2 requeues at it, the most "
                                        r"--max-requeues allows: not requeued; its run resumes after epoch 3 of 6"):
        capped.checkpoint(task, 1)


def test_a_run_is_found_after_its_data_is_renamed_and_read_from_the_cache_after_its_data_is_gone(tmp_path, monkeypatch):
    import shutil

    import numpy as np

    from vaehelpers.explore import Explorer

    source = _faces_npy(tmp_path / "a" / "faces.npy", tmp_path / "cache")
    run = fit(RunConfig(data=str(source), **SMALL), runs_dir=tmp_path / "runs", progress=False, device="cpu")
    trained_on = run.data().images
    renamed = tmp_path / "scratch" / "celeba-64.npy"  # the same bytes under another name: the same run
    renamed.parent.mkdir()
    shutil.move(source, renamed)
    _no_training(monkeypatch)
    again = fit(RunConfig(data=str(renamed), **SMALL), runs_dir=tmp_path / "runs", progress=False, device="cpu")
    assert again.dir == run.dir and again.config.data == str(renamed)
    assert torch_equal(again.data().images, trained_on)
    assert len(list((tmp_path / "runs").glob("*/config.json"))) == 1
    # the explorer opens the run folder, which names the data's first path: now gone, the cache's copy is read
    with pytest.warns(UserWarning, match=r"faces\.npy, is not there any more: its images are read from the data "
                                         r"cache's copy of what it trained on"):
        explorer = Explorer.open(run.dir)
    assert torch_equal(explorer.images, trained_on[run.val_indices])
    np.save(source, np.load(renamed)[:100])  # other images at the recorded path: not what it trained on either
    with pytest.warns(UserWarning, match=r"faces\.npy, holds other images now: its images are read from the data cache"):
        assert torch_equal(Explorer.open(run.dir).images, trained_on[run.val_indices])
    shutil.rmtree(tmp_path / "cache")
    source.unlink()
    with pytest.raises(FileNotFoundError, match=rf"^The data of run {run.dir.name}, {re.escape(str(source))}, is not "
                                                r"there any more, and the data cache holds no copy of the images it "
                                                r"trained on: put the data back there"):
        Explorer.open(run.dir)


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def _fake_command(tmp_path: Path, monkeypatch, name: str, script: str) -> Path:
    """A command ``name`` on PATH that runs ``script`` (sh), logging its arguments to ``<tmp>/<name>.log``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    command = bin_dir / name
    command.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / (name + ".log")}\n{script}\n')
    command.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / (name + ".log")


def test_the_ctrl_c_line_says_where_each_cancelled_run_goes_on(tmp_path, monkeypatch):
    """Cancelled tasks in every state, each said as it stood before the cancel: a run with no checkpoint starts
    over, not 'resumes from its last checkpoint'."""
    import torch

    from vaehelpers.slurm import _cancel

    scancel = _fake_command(tmp_path, monkeypatch, "scancel", "exit 0")
    folder = slurm_dir(tmp_path)
    folder.mkdir(mode=0o700)

    def task_in(state: str, epoch: int | None = None, epochs: int = 10, result=None):
        job = _Job(folder, f"90_{len(jobs)}", "RUNNING")
        job.paths.folder.mkdir(mode=0o700, parents=True)
        if state != "pending":  # fit named its run folder
            run_dir = tmp_path / "runs" / state
            run_dir.mkdir(parents=True)
            (job.paths.folder / f"{job.job_id}_run_folder.txt").write_text(f"{run_dir}\n")
            (run_dir / "config.json").write_text(json.dumps({"config": {"epochs": epochs}}))
            if epoch is not None:
                torch.save({"epoch": epoch}, run_dir / "checkpoint.pt")
        if result is not None:
            write_atomic(job.paths.result_pickle, pickle.dumps(result), mode=0o600)
        jobs.append((RunNotebook(RunSpec(float(len(jobs)), "fixed", 0, 4), tmp_path / f"{state}.ipynb", {}), job))

    jobs: list = []
    task_in("pending")
    task_in("running", epoch=None)
    task_in("halfway", epoch=3)
    task_in("trained", epoch=10)
    task_in("finished", epoch=10, result=("success", 12.0))
    task_in("failed", epoch=2, result=("error", "Traceback ...\nvaehelpers.slurm.RunFailed: TrainingDiverged: lr"))
    said = _cancel(jobs)
    assert scancel.read_text().split() == ["90"]  # one scancel for the array
    assert said == (
        "interrupted: cancelled Slurm job 90 (6 tasks); when the command runs again, "
        "KL weight 0, latent size 4, seed 0 had not begun training: it starts from its last checkpoint, if it has one; "
        "KL weight 1, latent size 4, seed 0 had no checkpoint yet: it starts over; "
        "KL weight 2, latent size 4, seed 0 resumes after epoch 3 of 10; "
        "KL weight 3, latent size 4, seed 0 had finished training: only its notebook runs again; "
        "KL weight 4, latent size 4, seed 0 had finished: it is reused; "
        "KL weight 5, latent size 4, seed 0 had failed (TrainingDiverged: lr): it is trained again")


def test_a_task_in_a_state_submitit_takes_as_an_end_is_still_asked_about(tmp_path, monkeypatch):
    """submitit stops asking sacct about a job whose state is outside its short list of unfinished ones
    (CONFIGURING, SUSPENDED, REQUEUE_HOLD, ...); the jobs the wait reads keep asking until the state is an end."""
    from vaehelpers.slurm_queue import slurm_job

    states = tmp_path / "states"
    sacct = _fake_command(tmp_path, monkeypatch, "sacct", f'printf "JobID|State|NodeList\\n"; cat {states}')
    job = slurm_job()(tmp_path / "%j", "81_0")
    for state in ("CONFIGURING", "SUSPENDED", "REQUEUE_HOLD", "STOPPED", "COMPLETED"):
        states.write_text(f"81_0|{state}|vm\n")
        job.watcher.update()
        assert job.state == state  # asked again each time, though submitit would have stopped at CONFIGURING
    asked = len(sacct.read_text().splitlines())
    job.watcher.update()  # COMPLETED: an end, no longer asked about (other tests' jobs in this process may be)
    assert not [line for line in sacct.read_text().splitlines()[asked:] if "-j 81" in line] and job.state == "COMPLETED"
