"""--executor slurm against a real single-node Slurm cluster on this machine (`make slurm`, scripts/slurm.sh):
sbatch, job arrays, requeue and cancellation as Slurm does them, no mock. Skipped, with the reason, where no
cluster runs and none can be started (not root, Slurm not installed); a failure in CI (CI=true)."""

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from vaehelpers.__main__ import main
from vaehelpers.params import PROJECT, run_config
from vaehelpers.slurm import SlurmOptions, run_slurm
from vaehelpers.sweep import NOTEBOOKS, RunSpec, RunNotebook, up_to_date

from conftest import TINY, missing_part, without_time

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]  # one cluster: its tests one after another
SCRIPT = PROJECT / "scripts" / "slurm.sh"
SLURM = ["--executor", "slurm", "--cpus-per-task", "1", "--array-parallelism", "2", "--time-min", "10"]


def _up() -> bool:
    return subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def cluster():
    """The cluster `make slurm` started, or one started here (and stopped after the tests) where we are root."""
    if shutil.which("sinfo") and _up():
        yield
        return
    if os.geteuid() != 0:
        missing_part("no Slurm cluster runs here and starting one needs root: `make slurm` as root starts one")
    if not Path("/usr/sbin/slurmctld").exists() or not shutil.which("sbatch"):
        missing_part("Slurm is not installed: `make slurm` installs Debian's Slurm and starts a one-node cluster")
    started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True)
    if started.returncode != 0:
        missing_part(f"a Slurm cluster could not be started here: {started.stderr.strip()[-300:]}")
    yield
    subprocess.run([str(SCRIPT), "stop"], capture_output=True)


def _squeue(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True, text=True).stdout.strip()


def test_a_sweep_runs_as_a_job_array_and_is_reported(cluster, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["report", *TINY, "--kl-weights", "1,100,0", "--no-sigma-vae", "--extra-seeds", "1", "--no-pdf", *SLURM,
            "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    job = re.search(r"== submitted Slurm job (\d+): 6 tasks", printed).group(1)
    assert "== Slurm" in printed and re.search(r"6 of 6 finished, 0 running, 0 pending", printed)
    names = {"run-kl1.ipynb", "run-kl100.ipynb", "run-kl0.ipynb", "run-kl1-seed1.ipynb", "run-kl0-seed1.ipynb"}
    assert names <= {p.name for p in out.iterdir()}  # the executed notebooks, kept as with the local executor
    logs = list((tmp_path / "runs" / "slurm").rglob(f"{job}_*_log.out"))
    assert len(logs) == 6 and all("run folder: " in p.read_text() for p in logs)
    html = (out / "report.html").read_text()
    assert "KL weight 1 (n = 2 seeds, mean ± sd)" in html and "<h2" in html
    assert main(args) == 0 and "6 finished, 0 to train." in capsys.readouterr().out  # nothing submitted again


EPOCHS = 40  # long enough (about 15 s) to be still training when Slurm's KillWait of 5 s ends


def _task(runs_dir: Path, out: Path, **settings) -> RunNotebook:
    parameters = {**dict(data="builtin:600", epochs=EPOCHS, batch_size=50, base_channels=8, latent_dim=4,
                         kl_weight=1.0, likelihood="fixed", seed=0, device="cpu", runs_dir=str(runs_dir),
                         checkpoint_every=0.0), **settings}
    return RunNotebook(RunSpec(1.0, "fixed", 0, 4), out, parameters, NOTEBOOKS / "run.ipynb")


def _history(runs_dir: Path) -> list[dict]:
    (folder,) = [p.parent for p in runs_dir.glob("*/config.json")]
    with open(folder / "history.csv") as f:
        return [without_time(row) for row in csv.DictReader(f)]


def test_a_requeued_task_resumes_and_ends_with_the_history_of_an_uninterrupted_one(cluster, tmp_path, capsys):
    kept, requeued = _task(tmp_path / "kept", tmp_path / "kept.ipynb"), _task(tmp_path / "requeued", tmp_path / "r.ipynb")
    options = SlurmOptions(cpus_per_task=1, array_parallelism=2, time_min=10, wait=False)
    run_slurm([kept, requeued], tmp_path, options)
    job = re.search(r"submitted Slurm job (\d+)", capsys.readouterr().out).group(1)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "requeued").glob("*/checkpoint.pt")) or len(_history(tmp_path / "requeued")) < 2:
        assert time.monotonic() < deadline, "the task wrote no checkpoint in 2 minutes"
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", f"{job}_1"], check=True)
    # Slurm makes a requeued task wait about two minutes before it may start again (its BeginTime): not here.
    deadline = time.monotonic() + 30
    while "PENDING" not in _squeue(f"{job}_1"):
        assert time.monotonic() < deadline, f"the requeued task never showed as pending: {_squeue(f'{job}_1')}"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job}_1", "StartTime=now"], check=True)
    todo = [t for t in (kept, requeued) if not up_to_date(t.out, t.source, t.parameters)]
    failures, ended = run_slurm(todo, tmp_path, replace(options, wait=True, poll_s=1))
    assert (failures, ended) == ([], True)
    assert "already in Slurm, submitted by another command" in capsys.readouterr().out  # waited for, not submitted twice
    (log_file,) = (tmp_path / "slurm").rglob(f"{job}_1_*log.out")
    log = log_file.read_text()
    resumed = re.search(rf"resuming \S+ after epoch (\d+) of {EPOCHS}, its last checkpoint", log)
    assert resumed and 2 <= int(resumed.group(1)) < EPOCHS, log[-3000:]  # stopped mid-run, and resumed there
    assert _history(tmp_path / "requeued") == _history(tmp_path / "kept") and len(_history(tmp_path / "kept")) == EPOCHS


def test_a_failing_task_is_named_with_its_error_and_log_while_the_others_finish(cluster, tmp_path, capsys):
    runs = tmp_path / "runs"
    cfg = run_config(data="builtin:150", epochs=2, base_channels=8, latent_dim=4, batch_size=50, kl_weight=0.0,
                     lr=1e-4, seed=0)
    cfg = replace(cfg, precision="fp32")  # a task's "auto" resumes the run it finds, in whichever precision
    damaged = runs / cfg.run_name(cfg.load_images().key)
    damaged.mkdir(parents=True)
    (damaged / "checkpoint.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    assert main(["report", *TINY, "--kl-weights", "1,100,0", "--no-sigma-vae", *SLURM,
                 "--runs-dir", str(runs), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"error: 1 of 3 runs failed, the others finished: KL weight 0, latent size 4, seed 0: RunDamaged: "
                    rf"{re.escape(str(damaged))}.* \(Slurm job \d+_2, log \S+/\d+_2/\d+_2_0_log\.err\)$", err), err
    log = re.search(r"log (\S+)\)$", err).group(1)
    assert Path(log).exists() and "RunDamaged" in Path(log).read_text()
    assert {"run-kl1.ipynb", "run-kl100.ipynb"} <= {p.name for p in out.iterdir()}
    assert not (out / "report.html").exists()


def test_interrupting_the_wait_twice_still_cancels_every_submitted_task_and_says_so(cluster, tmp_path):
    args = [sys.executable, "-m", "vaehelpers", "report", "--data", "builtin:600", "--epochs", "200",
            "--base-channels", "8", "--latent-dim", "4", "--kl-weights", "1,100,0", "--no-sigma-vae", *SLURM,
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    job, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if m := re.search(r"== submitted Slurm job (\d+)", line):
            job = m.group(1)
        if job and "running" in line and not re.search(r" 0 running", line):
            break
    assert job, "".join(lines)
    assert _squeue(job)  # its tasks are in Slurm
    proc.send_signal(signal.SIGINT)  # an impatient user: Ctrl-C twice, 5 ms apart, while the first cancels
    time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert re.search(rf"interrupted: cancelled Slurm job {job} \(3 tasks\)", err), err
    said = re.search(r"when the command runs again, (.*)$", err, re.M)  # where each run goes on, not a promise
    assert said and "resume from their last checkpoints" not in err, err
    for weight in ("1", "100", "0"):  # cancelled within seconds of running: no run has a checkpoint yet
        assert re.search(rf"KL weight {weight}, latent size 4, seed 0 (had no checkpoint yet: it starts over|had not "
                         r"begun training: it starts from its last checkpoint, if it has one)", said.group(1)), said.group(1)
    deadline = time.monotonic() + 30
    while _squeue(job):
        assert time.monotonic() < deadline, f"Slurm job {job} still queued 30 s after the cancel: {_squeue(job)}"
        time.sleep(0.5)


def test_a_job_slurm_does_not_know_is_lost_after_the_grace_period_and_submitted_again(cluster, tmp_path, capsys):
    import json

    from vaehelpers.slurm import slurm_dir
    from vaehelpers.slurm_record import read_record, run_key

    task = _task(tmp_path / "runs", tmp_path / "run.ipynb")
    folder = slurm_dir(tmp_path)
    folder.mkdir(mode=0o700)

    def record(submitted: float) -> None:  # a job id this cluster never had (another cluster, a copied folder)
        (folder / "jobs.json").write_text(json.dumps({"version": 1, "jobs": {run_key(task): {
            "job": "987654_0", "notebook": str(task.out), "label": task.spec.label, "submitted": submitted}}}))
        (folder / "jobs.json").chmod(0o600)

    record(time.time())  # just submitted: sacct may not list it yet, so it is waited on, for the grace period
    started = time.monotonic()
    failures, ended = run_slurm([task], tmp_path, SlurmOptions(cpus_per_task=1, poll_s=1, lost_after_s=4))
    assert ended and len(failures) == 1 and time.monotonic() - started < 30
    assert re.match(r"KL weight 1, latent size 4, seed 0: Slurm job 987654_0 is unknown to Slurm \(neither sacct "
                    r"nor squeue lists it\) \d+ s after its submission: lost", failures[0]), failures
    assert "already in Slurm, submitted by another command: run.ipynb (job 987654_0, " in capsys.readouterr().out
    record(time.time() - 3600)  # an hour ago: lost at once, said, and submitted again
    umask = os.umask(0o002)  # a shared project's umask: the record stays private all the same
    try:
        run_slurm([task], tmp_path, SlurmOptions(cpus_per_task=1, time_min=5, wait=False, lost_after_s=600))
    finally:
        os.umask(umask)
    assert (folder / "jobs.json").stat().st_mode & 0o777 == 0o600
    printed = capsys.readouterr().out
    job = re.search(r"== submitted Slurm job (\d+): 1 task", printed).group(1)
    subprocess.run(["scancel", job], check=True)
    assert ("== run.ipynb: Slurm job 987654_0, submitted 60 min ago, is unknown to Slurm (neither sacct nor squeue "
            "lists it): taken as lost, and submitted again") in printed
    recorded = read_record(folder)[run_key(task)]["job"]
    assert recorded in (job, f"{job}_0")  # submitit names a one-task array by its job id alone
    assert (folder / recorded).stat().st_mode & 0o077 == 0  # the job's folder private, like the Slurm folder


def _start_requeued_tasks_now(stop) -> None:
    """Slurm holds a requeued task about two minutes (its BeginTime) before it may start again: not here."""
    while not stop.is_set():
        queue = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], capture_output=True, text=True).stdout
        for job, state, reason in (line.split(maxsplit=2) for line in queue.splitlines() if line.count(" ") >= 2):
            if state == "PENDING" and "BeginTime" in reason:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        stop.wait(1)


LONG = 300  # epochs: about 240 s on one core here, several slices of a 3-minute limit (Slurm's SIGUSR2 comes 90 s
# before the limit, up to a minute earlier)


def test_a_run_longer_than_its_time_limit_is_requeued_slice_after_slice_and_ends_with_its_whole_history(
        cluster, tmp_path, capsys):
    import threading

    task = _task(tmp_path / "runs", tmp_path / "run.ipynb", data="builtin:1000", epochs=LONG, precision="fp32",
                 compiled=False)
    options = SlurmOptions(cpus_per_task=1, time_min=3, poll_s=2)
    stop = threading.Event()
    bumper = threading.Thread(target=_start_requeued_tasks_now, args=(stop,), daemon=True)
    bumper.start()
    try:
        # a cap of no requeue: the first time limit ends the task, with the reason and where the run resumes
        (failure,), ended = run_slurm([task], tmp_path / "runs", replace(options, max_requeues=0))
        capped = re.search(r"run\.ipynb reached its time limit of 3 min after 0 requeues at it, the most "
                           rf"--max-requeues allows: not requeued; its run resumes after epoch (\d+) of {LONG} when the "
                           r"command runs again \(or raise --max-requeues or --time-min\)", failure)
        assert ended and capped, failure
        first = int(capped.group(1))
        assert 1 <= first < LONG and len(_history(tmp_path / "runs")) == first
        capsys.readouterr()
        # no cap (the default): requeued at each time limit, resuming where the slice before wrote its checkpoint
        assert run_slurm([task], tmp_path / "runs", options) == ([], True)
    finally:
        stop.set()
        bumper.join()
    printed = capsys.readouterr().out
    said = [int(n) for n in re.findall(r"== run\.ipynb \(Slurm job \d+\): requeued at the time limit \(\d+ times?\), "
                                       r"resumes after epoch (\d+)", printed)]
    assert said and first <= said[0] and said == sorted(said) and said[-1] < LONG, printed
    assert re.search(r"; 1 requeue at the time limit so far", printed), printed
    job = re.search(r"== submitted Slurm job (\d+)", printed).group(1)
    (out_log,) = (tmp_path / "runs" / "slurm").rglob(f"{job}_*log.out")
    (err_log,) = (tmp_path / "runs" / "slurm").rglob(f"{job}_*log.err")
    log = out_log.read_text()
    for n, epoch in enumerate(said, 1):  # the slices' logs, one after another: where each stopped and resumed
        assert f"== requeued at the time limit ({n} time{'s' if n > 1 else ''}), resumes after epoch {epoch} of {LONG}" in log
        assert f"after epoch {epoch} of {LONG}, its last checkpoint" in log
    assert f"after epoch {first} of {LONG}, its last checkpoint" in log
    assert "Traceback" not in err_log.read_text() and "Traceback" not in log  # a requeue is not a failure
    history = _history(tmp_path / "runs")
    assert [int(row["epoch"]) for row in history] == list(range(1, LONG + 1))


def test_the_job_record_of_the_version_before_is_taken_over_for_the_runs_its_tasks_train(cluster, tmp_path, capsys):
    """The version before recorded output notebook -> job id: a job is taken over for the run its own pickle says
    it trains, never for another run that only shares the notebook's name (other epochs)."""
    import json
    import pickle

    import submitit
    from submitit.core.utils import DelayedSubmission

    from vaehelpers.slurm import RunTask, slurm_dir
    from vaehelpers.slurm_record import read_record, run_key

    same, other = _task(tmp_path / "runs", tmp_path / "a.ipynb"), _task(tmp_path / "runs", tmp_path / "b.ipynb", seed=1)
    sleepers = [subprocess.run(["sbatch", "--parsable", "-c", "1", "-o", "/dev/null", "--wrap", "sleep 120"],
                               capture_output=True, text=True, check=True).stdout.strip() for _ in range(2)]
    deadline = time.monotonic() + 30
    while len(subprocess.run(["sacct", "-n", "-X", "-j", ",".join(sleepers), "-o", "JobID"], capture_output=True,
                             text=True).stdout.split()) < 2:  # in Slurm's accounting, as a job submitted a while ago
        assert time.monotonic() < deadline, "sacct never listed the jobs"
        time.sleep(0.2)
    folder = slurm_dir(tmp_path / "runs")
    folder.mkdir(mode=0o700, parents=True)
    trained = [same, RunNotebook(other.spec, other.out, dict(other.parameters, epochs=EPOCHS + 1), other.source)]
    for job_id, task in zip(sleepers, trained):  # each job's pickle, as submitit wrote it for the version before
        pickled = submitit.SlurmJob(folder / "%j", job_id).paths.submitted_pickle
        pickled.parent.mkdir(mode=0o700)
        pickled.write_bytes(pickle.dumps(DelayedSubmission(RunTask(10), task, 1)))
        pickled.chmod(0o600)
    (folder / "submitted.json").write_text(json.dumps({str(same.out): sleepers[0], str(other.out): sleepers[1]}))
    (folder / "submitted.json").chmod(0o600)
    try:
        assert run_slurm([same, other], tmp_path / "runs", SlurmOptions(cpus_per_task=1, wait=False)) == ([], False)
    finally:
        subprocess.run(["scancel", *sleepers], check=True)
    printed = capsys.readouterr().out
    new = re.search(r"== submitted Slurm job (\d+): 1 task \(b\.ipynb\)", printed)  # only the other run
    subprocess.run(["scancel", new.group(1)] if new else ["true"], check=True)
    assert new, printed
    assert f"already in Slurm, submitted by another command: a.ipynb (job {sleepers[0]}, " in printed
    assert (f"still in Slurm from the version before, for no run of this call (not waited on; a run it shares waits "
            f"for its lock): job {sleepers[1]} (b.ipynb)") in printed
    assert read_record(folder)[run_key(same)]["job"] == sleepers[0]
    assert json.loads((folder / "submitted.json").read_text()) == {str(other.out): sleepers[1]}  # kept for its run


def test_a_task_preempted_and_never_requeued_is_submitted_again_by_the_next_call(cluster, tmp_path, capsys, monkeypatch):
    import json

    import submitit

    from vaehelpers.slurm import slurm_dir
    from vaehelpers.slurm_record import read_record, run_key

    task = _task(tmp_path / "runs", tmp_path / "run.ipynb")
    folder = slurm_dir(tmp_path)
    folder.mkdir(mode=0o700)
    (folder / "jobs.json").write_text(json.dumps({"version": 1, "jobs": {run_key(task): {
        "job": "987654_0", "notebook": str(task.out), "label": task.spec.label, "submitted": time.time() - 60}}}))
    (folder / "jobs.json").chmod(0o600)
    state = submitit.SlurmJob.state  # what sacct says of a job a partition with PreemptMode=CANCEL preempted:
    monkeypatch.setattr(submitit.SlurmJob, "state", property(  # PREEMPTED, while squeue no longer lists it
        lambda job: "PREEMPTED" if job.job_id == "987654_0" else state.fget(job)))
    run_slurm([task], tmp_path, SlurmOptions(cpus_per_task=1, time_min=5, wait=False))
    printed = capsys.readouterr().out
    job = re.search(r"== submitted Slurm job (\d+): 1 task", printed).group(1)
    subprocess.run(["scancel", job], check=True)
    assert ("== run.ipynb: Slurm job 987654_0 was preempted and not requeued: submitted again, to resume from its "
            "last checkpoint") in printed
    assert read_record(folder)[run_key(task)]["job"] in (job, f"{job}_0")
