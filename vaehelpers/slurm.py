"""The Slurm executor: `submitit <https://github.com/facebookincubator/submitit>`_, one job array with a task per
run still to train; a task that reaches its time limit or is preempted is requeued by submitit and its run
resumes from its last checkpoint (:mod:`vaehelpers.train`)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cache import default_cache_dir
from .execute import error_text, execute_run
from .files import locked, write_atomic
from .sweep import Task


class RunFailed(RuntimeError):
    """A Slurm task's run notebook failed: its error in one line, which submitit passes on."""


@dataclass
class SlurmOptions:
    """How the runs are sent to Slurm (``--executor slurm``)."""

    partition: str | None = None  # None: the cluster's default partition
    gpus_per_task: int = 0
    cpus_per_task: int = 2
    time_min: int = 120  # each task's time limit; a task that reaches it is requeued and resumes
    array_parallelism: int = 64  # at most this many tasks of the array run at once
    sbatch: dict[str, str] = field(default_factory=dict)  # further sbatch options, e.g. {"account": "mylab"}
    wait: bool = True  # False: submit, print the job id and return; the same command renders later
    poll_s: float = 10.0  # seconds between two looks at the tasks: one sacct call for all of them
    lost_after_s: float = 600.0  # a job sacct still does not list this long after its submission is lost


try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # submitit is needed only to submit; the local executor runs without it
    _Checkpointable = object  # type: ignore[assignment,misc]


class RunTask(_Checkpointable):  # type: ignore[misc,valid-type]
    """A Slurm task: one run notebook. Checkpointable: at the time limit or on preemption submitit requeues it
    with the same arguments, and the run resumes from its last checkpoint."""

    def __call__(self, task: Task, threads: int) -> float:
        # Slurm requeues or preempts a task with SIGTERM to every process of the job, then SIGKILL after its
        # KillWait. submitit ignores the SIGTERM; the notebook's kernel, which inherits this, must too: otherwise
        # it dies first, and the task records a failure ("Kernel died") instead of being started again.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.umask(0o077)  # the result pickle submitit writes after this call: private
        try:
            return execute_run(task, threads=threads)
        except Exception as e:
            if not hasattr(e, "ename"):
                raise
            raise RunFailed(error_text(e)) from None


IN_FLIGHT = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
             "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}
"""Slurm job states in which a task may still finish its run: those submitit counts as unfinished (PREEMPTED
included: submitit requeues a preempted Checkpointable task), and Slurm's other states of a job not yet ended.
UNKNOWN, a job sacct does not list, is in flight only for ``SlurmOptions.lost_after_s`` after its submission."""


class Untrusted(RuntimeError):
    """A Slurm folder or file another user owns or could write: never read, never unpickled."""


def check_trusted(path: Path) -> None:
    """Refuse ``path`` (the Slurm folder, a job's folder, its record or a result pickle) unless this user owns it
    and no one else may write it: unpickling a task's result runs code, and a job record names what to wait on."""
    st = path.lstat()
    why = ("is a symbolic link" if stat.S_ISLNK(st.st_mode)
           else f"belongs to user id {st.st_uid}, not to you ({os.getuid()})" if st.st_uid != os.getuid()
           else f"can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})" if st.st_mode & 0o022
           else None)
    if why:
        raise Untrusted(f"{path} {why}, so it is not read: a file planted there could run code in this process; "
                        f"remove it (or, where you trust it, `chmod go-w` it) and run the command again.")


def slurm_dir(runs_dir: Path) -> Path:
    """``<runs>/slurm``: the job record, the tasks' pickles and logs; created private (0700)."""
    return Path(runs_dir) / "slurm"


def _private(folder: Path) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_trusted(folder)
    return folder


NOT_IDENTITY = ("device", "checkpoint_every", "compiled")
"""Task parameters that do not change what a run is (where it trains, how often it writes, eager or compiled)."""


def run_key(task: Task) -> str:
    """A run's identity in the job record: its notebook's parameters (the run's settings, data, precision and runs
    folder) less :data:`NOT_IDENTITY`, so that a call with other epochs, rate or data never waits on an array trained
    for another, and one with another ``--checkpoint-every`` never submits a run still in Slurm a second time."""
    identity = {k: v for k, v in task.parameters.items() if k not in NOT_IDENTITY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


RECORD_VERSION = 1


class RecordDamaged(ValueError):
    """The job record cannot be what this module wrote."""


def read_record(folder: Path) -> dict[str, dict]:
    """The job record of ``folder`` (``jobs.json``): run key -> {"job", "notebook", "label", "submitted"}; empty
    where there is none. Checked before use: this user's, not writable by others, and no job id twice."""
    path = folder / "jobs.json"
    if not path.exists():
        return {}
    check_trusted(path)
    try:
        data = json.loads(path.read_text())
        jobs = data["jobs"] if data.get("version") == RECORD_VERSION else None
        ids = [entry["job"] for entry in jobs.values()] if isinstance(jobs, dict) else None
        if ids is not None and not all(isinstance(e["job"], str) and isinstance(e["submitted"], (int, float))
                                       and isinstance(e["notebook"], str) for e in jobs.values()):
            ids = None
    except (ValueError, KeyError, TypeError, AttributeError):
        ids = None
    if ids is None:
        raise RecordDamaged(f"The Slurm job record {path} is damaged (not the record this program writes): check "
                            f"`squeue --me` for tasks still running, then remove the file and run the command again.")
    shared = sorted({i for i in ids if ids.count(i) > 1})
    if shared:
        raise RecordDamaged(f"The Slurm job record {path} is damaged: job {shared[0]} is recorded for "
                            f"{ids.count(shared[0])} runs, and a task trains one: check `squeue --me` for tasks still "
                            "running, then remove the file and run the command again.")
    return jobs


class _Deferred:
    """SIGINT and SIGTERM held back for the ``with`` block: their handler (which Python always runs in the main
    thread, whichever thread the signal reached) only notes them; at the end the first noted is raised as
    :class:`KeyboardInterrupt`, with any later one ignored (:func:`_interrupted`)."""

    def __enter__(self):
        self.noted: list[int] = []
        self.before = {s: signal.signal(s, lambda signum, frame: self.noted.append(signum))
                       for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.before.items():
            signal.signal(s, handler)
        if self.noted:
            _interrupted(self.noted[0], None)


def _interrupted(signum, frame):
    """SIGINT or SIGTERM while the tasks are submitted or waited on: any further one is ignored until the tasks
    this call submitted are cancelled and said (GNU ``timeout`` and an impatient second Ctrl-C send one more)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop = KeyboardInterrupt()
    stop.signum = signum  # type: ignore[attr-defined]  # the exit status: 128 + it
    raise stop


def run_slurm(tasks: list[Task], runs_dir: Path, options: SlurmOptions) -> tuple[list[str], bool]:
    """Send ``tasks`` to Slurm as one job array, except those a task submitted earlier still trains; wait for
    them all (showing finished / running / pending), unless ``options.wait`` is False.

    The job record (``<runs>/slurm/jobs.json``, keyed by :func:`run_key`) is read, updated and written under a
    lock, with SIGINT and SIGTERM deferred from the submission until it is written, so no job is lost or
    recorded twice. Returns the failed or lost runs (one line each) and whether every task ended. A SIGINT or
    SIGTERM while waiting cancels every task this call submitted, once, and says which.
    """
    import submitit

    folder = _private(slurm_dir(runs_dir))
    handlers = {s: signal.signal(s, _interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    submitted: list = []
    try:
        with locked(folder / "jobs.lock", f"the Slurm job record of {runs_dir}"):
            record = read_record(folder)
            jobs: dict[str, tuple[Task, submitit.Job, float]] = {}
            for task in tasks:  # still running from an earlier call: wait for it rather than train it twice
                entry = record.get(run_key(task))
                if entry:
                    job = submitit.SlurmJob(folder=folder / "%j", job_id=entry["job"])
                    age = time.time() - entry["submitted"]
                    if job.state in IN_FLIGHT or (job.state == "UNKNOWN" and not _lost(job, entry["submitted"],
                                                                                       options.lost_after_s)):
                        jobs[run_key(task)] = (task, job, entry["submitted"])
                    elif job.state == "UNKNOWN" and not job.paths.result_pickle.exists():
                        print(f"== {task.name}: Slurm job {entry['job']}, submitted {_duration(age)} ago, is unknown "
                              "to Slurm (neither sacct nor squeue lists it): taken as lost, and submitted again",
                              flush=True)
            new = [task for task in tasks if run_key(task) not in jobs]
            if jobs:
                print(f"== {len(jobs)} run{'s' if len(jobs) > 1 else ''} still in Slurm from an earlier call: "
                      + ", ".join(f"{t.name} (job {j.job_id})" for t, j, _ in jobs.values()), flush=True)
            if new:
                executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
                executor.update_parameters(
                    name="vae-sweep", timeout_min=options.time_min, cpus_per_task=options.cpus_per_task,
                    slurm_array_parallelism=options.array_parallelism,
                    **({"slurm_partition": options.partition} if options.partition else {}),
                    **({"slurm_gpus_per_task": options.gpus_per_task} if options.gpus_per_task else {}),
                    **({"slurm_additional_parameters": dict(options.sbatch)} if options.sbatch else {}))
                umask = os.umask(0o077)  # the job folders and pickles private; sbatch passes the umask to the tasks
                try:
                    with _Deferred():  # no signal between the submission and its record
                        submitted = executor.map_array(RunTask(), new, [options.cpus_per_task] * len(new))
                        now = time.time()
                        for task, job in zip(new, submitted):
                            jobs[run_key(task)] = (task, job, now)
                            record[run_key(task)] = {"job": job.job_id, "notebook": str(task.out),
                                                     "label": task.spec.label, "submitted": now}
                        try:
                            write_atomic(folder / "jobs.json", json.dumps(
                                {"version": RECORD_VERSION, "jobs": record}, indent=1).encode(), mode=0o600)
                        except BaseException:  # a job no record names would be waited on by nothing: cancelled
                            print(_cancel(submitted, "the job record could not be written"), file=sys.stderr,
                                  flush=True)
                            submitted = []
                            raise
                finally:
                    os.umask(umask)
                array = submitted[0].job_id.split("_")[0]
                print(f"== submitted Slurm job {array}: {len(new)} task{'s' if len(new) > 1 else ''} "
                      f"({', '.join(t.name for t in new)}); logs in {folder / array}_<task>/. The tasks read and "
                      f"write {runs_dir}, {new[0].out.parent} and the data cache {default_cache_dir()}: every node "
                      "must see them at these paths (a shared filesystem)", flush=True)
        return (_wait(list(jobs.values()), options), True) if options.wait else ([], False)
    except KeyboardInterrupt:
        print(_cancel(submitted), file=sys.stderr, flush=True)
        raise
    finally:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # else interrupted: the process is ending, and
            for s, handler in handlers.items():                      # a further signal stays ignored (_interrupted)
                signal.signal(s, handler)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _cancel(submitted: list, why: str = "interrupted") -> str:
    """Cancel every task of ``submitted`` with one scancel call; what was cancelled, in one line."""
    if not submitted:
        return f"{why}: nothing this call submitted was running (tasks from an earlier call go on)"
    arrays = sorted({job.job_id.split("_")[0] for job in submitted})
    try:
        done = subprocess.run(["scancel", *arrays], capture_output=True, text=True, timeout=60)
        failed = done.stderr.strip() or str(done.returncode) if done.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        failed = str(e)
    if failed:
        return (f"{why}: scancel {' '.join(arrays)} failed ({failed}): cancel those jobs yourself (`scancel "
                + " ".join(arrays) + "`)")
    return (f"{why}: cancelled Slurm job {', '.join(arrays)} ({len(submitted)} tasks); finished runs stay, and "
            "the others resume from their last checkpoints when the command runs again")


def _lost(job, submitted: float, lost_after_s: float) -> bool:
    """Whether a job sacct does not list is lost: submitted more than ``lost_after_s`` ago, no result written, and
    not in Slurm's queue either (``squeue``; where squeue cannot answer, e.g. its controller is down, not lost)."""
    if time.time() - submitted <= lost_after_s or job.paths.result_pickle.exists():
        return False
    try:
        queue = subprocess.run(["squeue", "-h", "-j", job.job_id, "-o", "%i"], capture_output=True, text=True,
                               timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if queue.returncode == 0:
        return not queue.stdout.strip()
    return "invalid job id" in queue.stderr.lower()


def _wait(jobs: list, options: SlurmOptions) -> list[str]:
    """Wait for every (task, job, submitted), printing the counts when they change; the failed ones and the lost
    ones (unknown to Slurm ``options.lost_after_s`` after their submission), one line each. A job's folder and
    result are checked (:func:`check_trusted`) before submitit unpickles its result."""
    failed: dict[int, str] = {}
    pending = dict(enumerate(jobs))
    shown, started = None, time.perf_counter()
    watcher = jobs[0][1].watcher
    while pending:
        # submitit takes every state outside its short list (CONFIGURING, SUSPENDED, REQUEUE_HOLD, ...) as an end and
        # stops asking sacct about it: those still in flight are asked about again
        finished = getattr(watcher, "_finished", None)
        if isinstance(finished, set):
            finished.difference_update(job.job_id for _, job, _ in pending.values() if job.state in IN_FLIGHT)
        watcher.update()  # one sacct call for every task (submitit's own refresh slows to 10 min)
        for key, (task, job, submitted) in list(pending.items()):
            state = job.state
            if job.paths.result_pickle.exists() or state not in IN_FLIGHT | {"UNKNOWN"}:
                del pending[key]
                for path in (job.paths.folder, job.paths.result_pickle):
                    if path.exists():
                        check_trusted(path)
                error = job.exception()
                if error is not None:
                    log = job.paths.stderr
                    failed[key] = f"{task.spec.label}: {_job_error(error)} (Slurm job {job.job_id}, log {log})"
                    print(f"== failed: {task.spec.label} (Slurm job {job.job_id}): {_job_error(error)}; log: {log}",
                          flush=True)
            elif state == "UNKNOWN" and _lost(job, submitted, options.lost_after_s):
                del pending[key]
                failed[key] = (f"{task.spec.label}: Slurm job {job.job_id} is unknown to Slurm (neither sacct nor "
                               f"squeue lists it) {_duration(time.time() - submitted)} after its submission: lost; "
                               "the command submits it again when run again")
                print(f"== lost: {failed[key]}", flush=True)
        states = [job.state for _, job, _ in pending.values()]
        running = sum(s in ("RUNNING", "COMPLETING") for s in states)
        counts = (len(jobs) - len(pending), running, len(pending) - running)
        if counts != shown:
            shown = counts
            print(f"== Slurm, {time.perf_counter() - started:.0f} s: {counts[0]} of {len(jobs)} finished, "
                  f"{counts[1]} running, {counts[2]} pending", flush=True)
        if pending:
            time.sleep(options.poll_s)
    print(f"== {len(jobs) - len(failed)} of {len(jobs)} runs trained in Slurm in {time.perf_counter() - started:.0f} s",
          flush=True)
    return [failed[key] for key in sorted(failed)]  # in the sweep's order


def _job_error(error: BaseException) -> str:
    """The last line of a task's traceback: the run's own error (a diverged run, a damaged file)."""
    text = str(error)
    trace = text.split("-" * 22)
    lines = [line.strip() for line in (trace[1] if len(trace) > 2 else text).strip().splitlines() if line.strip()]
    return lines[-1].removeprefix(f"{RunFailed.__module__}.RunFailed: ") if lines else type(error).__name__


