"""The Slurm executor: `submitit <https://github.com/facebookincubator/submitit>`_, one job array with a task per
run still to train; a task that reaches its time limit or is preempted is requeued by submitit and its run
resumes from its last checkpoint (:mod:`vaehelpers.train`)."""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cache import default_cache_dir
from .execute import error_text, execute_run
from .files import write_atomic
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
        try:
            return execute_run(task, threads=threads)
        except Exception as e:
            if not hasattr(e, "ename"):
                raise
            raise RunFailed(error_text(e)) from None


IN_FLIGHT = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
             "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "UNKNOWN"}
"""Slurm job states in which a task may still finish its run (UNKNOWN: submitted, not yet seen by sacct)."""


def _submitted_file(runs_dir: Path) -> Path:
    return runs_dir / "slurm" / "submitted.json"


def _slurm_folder(runs_dir: Path) -> Path:
    return runs_dir / "slurm" / "%j"


def run_slurm(tasks: list[Task], runs_dir: Path, options: SlurmOptions) -> tuple[list[str], bool]:
    """Send ``tasks`` to Slurm as one job array, except those a task submitted earlier still trains; wait for
    them all (showing finished / running / pending), unless ``options.wait`` is False.

    Returns the failed runs (error and log, one line each) and whether every task ended. Interrupting the
    wait cancels every task this call submitted and says so.
    """
    import submitit

    record_file = _submitted_file(runs_dir)
    try:
        record = json.loads(record_file.read_text()) if record_file.exists() else {}
    except ValueError:
        record = {}
    jobs: dict[str, tuple[Task, submitit.Job]] = {}
    for task in tasks:  # still running from an earlier call: wait for it rather than train it twice
        job_id = record.get(str(task.out))
        if job_id:
            job = submitit.SlurmJob(folder=_slurm_folder(runs_dir), job_id=job_id)
            if job.state in IN_FLIGHT:
                jobs[task.name] = (task, job)
    new = [task for task in tasks if task.name not in jobs]
    if jobs:
        print(f"== {len(jobs)} run{'s' if len(jobs) > 1 else ''} still in Slurm from an earlier call: "
              + ", ".join(f"{t.name} (job {j.job_id})" for t, j in jobs.values()), flush=True)
    submitted: list = []
    if new:
        executor = submitit.AutoExecutor(folder=_slurm_folder(runs_dir), cluster="slurm")
        executor.update_parameters(
            name="vae-sweep", timeout_min=options.time_min, cpus_per_task=options.cpus_per_task,
            slurm_array_parallelism=options.array_parallelism,
            **({"slurm_partition": options.partition} if options.partition else {}),
            **({"slurm_gpus_per_task": options.gpus_per_task} if options.gpus_per_task else {}),
            **({"slurm_additional_parameters": dict(options.sbatch)} if options.sbatch else {}))
        submitted = executor.map_array(RunTask(), new, [options.cpus_per_task] * len(new))
        for task, job in zip(new, submitted):
            jobs[task.name] = (task, job)
            record[str(task.out)] = job.job_id
        record_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(record_file, json.dumps(record, indent=1).encode())
        array = submitted[0].job_id.split("_")[0]
        print(f"== submitted Slurm job {array}: {len(new)} task{'s' if len(new) > 1 else ''} "
              f"({', '.join(t.name for t in new)}); logs in {runs_dir / 'slurm' / array}_<task>/. The tasks read and "
              f"write {runs_dir}, {new[0].out.parent} and the data cache {default_cache_dir()}: every node must see "
              "them at these paths (a shared filesystem)", flush=True)
    if not options.wait:
        return [], False
    try:
        return _wait(list(jobs.values()), options.poll_s), True
    except KeyboardInterrupt:
        for job in submitted:
            job.cancel(check=False)
        ids = sorted({job.job_id.split("_")[0] for job in submitted})
        print(f"interrupted: cancelled Slurm job {', '.join(ids)} ({len(submitted)} tasks); finished runs stay, "
              "and the others resume from their last checkpoints when the command runs again"
              if submitted else "interrupted: nothing this call submitted was running", file=sys.stderr, flush=True)
        raise


def _wait(jobs: list, poll_s: float) -> list[str]:
    """Wait for every (task, job), printing the counts when they change; the failed ones, one line each."""
    failed: dict[int, str] = {}
    pending = dict(enumerate(jobs))
    shown, started = None, time.perf_counter()
    while pending:
        jobs[0][1].watcher.update()  # one sacct call for every task (submitit's own refresh slows to 10 min)
        for key, (task, job) in list(pending.items()):
            if job.done():
                del pending[key]
                error = job.exception()
                if error is not None:
                    log = job.paths.stderr
                    failed[key] = f"{task.spec.label}: {_job_error(error)} (Slurm job {job.job_id}, log {log})"
                    print(f"== failed: {task.spec.label} (Slurm job {job.job_id}): {_job_error(error)}; log: {log}",
                          flush=True)
        states = [job.state for _, job in pending.values()]
        running = sum(s in ("RUNNING", "COMPLETING") for s in states)
        counts = (len(jobs) - len(pending), running, len(pending) - running)
        if counts != shown:
            shown = counts
            print(f"== Slurm, {time.perf_counter() - started:.0f} s: {counts[0]} of {len(jobs)} finished, "
                  f"{counts[1]} running, {counts[2]} pending", flush=True)
        if pending:
            time.sleep(poll_s)
    print(f"== {len(jobs) - len(failed)} of {len(jobs)} runs trained in Slurm in {time.perf_counter() - started:.0f} s",
          flush=True)
    return [failed[key] for key in sorted(failed)]  # in the sweep's order


def _job_error(error: BaseException) -> str:
    """The last line of a task's traceback: the run's own error (a diverged run, a damaged file)."""
    text = str(error)
    trace = text.split("-" * 22)
    lines = [line.strip() for line in (trace[1] if len(trace) > 2 else text).strip().splitlines() if line.strip()]
    return lines[-1].removeprefix(f"{RunFailed.__module__}.RunFailed: ") if lines else type(error).__name__


