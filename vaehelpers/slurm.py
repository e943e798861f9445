"""The Slurm executor: `submitit <https://github.com/facebookincubator/submitit>`_, one job array with a task per
run still to train; a task that reaches its time limit or is preempted is requeued by submitit and its run
resumes from its last checkpoint (:mod:`vaehelpers.train`). Which job trains which run: :mod:`vaehelpers.slurm_record`;
what Slurm says of them and waiting for them: :mod:`vaehelpers.slurm_queue`; who may write the files that hold them:
:mod:`vaehelpers.trust`."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cache import default_cache_dir
from .execute import end_descendants, error_text, execute_run
from .files import locked, write_atomic
from .signals import deferred, stopping
from .slurm_queue import IN_FLIGHT, RunFailed, duration_text, lost, preempted_for_good, slurm_job, task_error, wait_for
from .slurm_record import adopt_old_record, done_with_old_record, read_record, run_key, write_record
from .sweep import RunNotebook
from .train import RUN_FOLDER_FILE
from .trust import Untrusted, check_trusted, make_private, read_trusted

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
    # requeues at the time limit a task may take; None: no cap, as long as the run makes progress (two slices in a
    # row without a newer checkpoint would go on ending the same way: the task fails, naming the fix)
    max_requeues: int | None = None


try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # submitit is needed only to submit; the local executor runs without it
    _Checkpointable = object  # type: ignore[assignment,misc]


class RunTask(_Checkpointable):  # type: ignore[misc,valid-type]
    """A Slurm task: one run notebook. Checkpointable: at the time limit or on preemption (Slurm's SIGUSR2, 90 s
    before) submitit calls :meth:`checkpoint` and requeues the task with the same arguments, and the run resumes
    from its last checkpoint. The instance is pickled with the requeue: :attr:`requeues` counts across slices."""

    time_min: int | None = None  # the tasks' time limit (None: a task submitted by the version before)
    max_requeues: int | None = None
    requeues = 0  # at the time limit, so far
    preemptions = 0
    last_epoch = 0  # the run's last checkpoint at the requeue before
    stalled = 0  # time slices in a row that ended without a newer checkpoint
    refused: str | None = None  # why checkpoint() refused a requeue

    def __init__(self, time_min: int, max_requeues: int | None = None) -> None:
        self.time_min, self.max_requeues = time_min, max_requeues

    def __call__(self, task: RunNotebook, threads: int) -> float:
        # Slurm requeues or preempts a task with SIGTERM to every process of the job, then SIGKILL after its
        # KillWait. submitit ignores the SIGTERM; the notebook's kernel, which inherits this, must too: otherwise
        # it dies first, and the task records a failure ("Kernel died") instead of being started again. The
        # kernel ignores SIGUSR2 as well, which Slurm sends to every process of the task: it is submitit's to act on.
        import submitit

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.umask(0o077)  # the result pickle submitit writes after this call: private
        env = submitit.JobEnvironment()  # where fit() names the run folder it trains, for checkpoint()
        os.environ[RUN_FOLDER_FILE] = str(env.paths.folder / f"{env.job_id}_run_folder.txt")
        try:
            return execute_run(task, threads=threads, kernel_ignores=(signal.SIGUSR2,))
        except Exception as e:
            if self.refused:  # raised in the signal handler, it may reach here as the kernel's death instead
                raise RunFailed(self.refused) from None
            if not hasattr(e, "ename"):
                raise
            raise RunFailed(error_text(e)) from None

    def checkpoint(self, task: RunNotebook, threads: int):  # noqa: ANN201 (submitit's DelayedSubmission)
        """Called by submitit on SIGUSR2, before it requeues the task: says why and where the run resumes, in the
        task's log and in ``<job>_requeues.json`` beside it (read by the waiting command); refuses (:class:`RunFailed`,
        the task's error) a requeue at the time limit past ``max_requeues``, or after the second slice in a row that
        ended with no newer checkpoint of the run (another slice would end the same way)."""
        import psutil
        import submitit

        end_descendants(grace_s=0)  # the kernel (which ignores the signals) at once: it writes nothing more, and
        # its last checkpoint, read below, is where the run resumes
        if self.time_min is None:  # submitted by the version before: submitit's count of timeouts applies
            print("== requeued (time limit or preemption), resumes from its last checkpoint", flush=True)
            return super().checkpoint(task, threads)
        limit = self.time_min * 60
        # submitit's rule (job_environment.py), its clock started with the process: under 10 min every signal counts
        timed_out = time.time() - psutil.Process().create_time() >= min(0.8 * limit, limit - 600)
        found, epochs = _last_checkpoint(os.environ.get(RUN_FOLDER_FILE))
        epoch = found or 0  # None: no run folder named yet (the slice ended loading the data, say)
        resumes = (f"after epoch {epoch} of {epochs}" if epoch else "from the start: it has no checkpoint yet"
                   if found == 0 else "from its last checkpoint, if any")
        stalled = self.stalled + 1 if found is None or found <= self.last_epoch else 0
        if timed_out and stalled >= 2:  # one slice may go to the speed probe, or to measuring a finished run
            self.refused = (f"{task.name} reached its time limit of {self.time_min} min twice in a row without "
                            f"writing a checkpoint (its run resumes {resumes}): another slice would end the same way, "
                            "so it is not requeued; give the tasks more time (--time-min) or write checkpoints more "
                            "often (--checkpoint-every) and run the command again")
        elif timed_out and self.max_requeues is not None and self.requeues >= self.max_requeues:
            self.refused = (f"{task.name} reached its time limit of {self.time_min} min after {self.requeues} "
                            f"requeue{'' if self.requeues == 1 else 's'} at it, the most --max-requeues allows: not "
                            f"requeued; its run resumes {resumes} when the command runs again (or raise "
                            "--max-requeues or --time-min)")
        if self.refused:
            print(f"== not requeued: {self.refused}", flush=True)
            raise RunFailed(self.refused)
        self.requeues += timed_out
        self.preemptions += not timed_out
        self.last_epoch, self.stalled = max(epoch, self.last_epoch), stalled if timed_out else 0
        why = (f"requeued at the time limit ({self.requeues} time{'s' if self.requeues > 1 else ''})" if timed_out
               else "preempted: requeued")
        print(f"== {why}, resumes {resumes}", flush=True)
        # submitit ends this process once it has requeued the task; the cell the notebook was running, cut off with
        # its kernel, is then reported by asyncio as "Task exception was never retrieved": not an error of this run
        logging.getLogger("asyncio").disabled = True
        env = submitit.JobEnvironment()
        write_atomic(env.paths.folder / f"{env.job_id}_requeues.json", json.dumps(
            {"time_limit": self.requeues, "preempted": self.preemptions, "epoch": epoch}).encode(), mode=0o600)
        return super().checkpoint(task, threads)


def _last_checkpoint(named_in: str | None) -> tuple[int | None, int | None]:
    """The epoch of the last checkpoint of the run whose folder ``fit`` wrote into the file ``named_in`` (0 where it
    has none yet; None where no folder is named or nothing can be read), and the run's epochs. Reads small files,
    no data: it runs in a signal handler."""
    from .store import read_json, read_pt

    try:
        run_dir = Path(read_trusted(Path(named_in)).decode().strip()) if named_in else None
        if run_dir is None:
            return None, None
        if not (run_dir / "checkpoint.pt").exists():
            return 0, None
        return int(read_pt(run_dir / "checkpoint.pt")["epoch"]), int(read_json(run_dir / "config.json")["config"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError, Untrusted):
        return None, None


def slurm_dir(runs_dir: Path) -> Path:
    """``<runs>/slurm``: the job record, the tasks' pickles and logs; created private (0700)."""
    return Path(runs_dir) / "slurm"


NO_CAP = 1_000_000
"""submitit's ``max_num_timeout``: never reached; the cap is :attr:`SlurmOptions.max_requeues`, applied by
:meth:`RunTask.checkpoint`, which knows whether a slice made progress."""


def run_slurm(tasks: list[RunNotebook], runs_dir: Path, options: SlurmOptions) -> tuple[list[str], bool]:
    """Send ``tasks`` to Slurm as one job array, except those a task submitted earlier (by this command or another
    one) still trains; wait for them all (showing finished / running / pending), unless ``options.wait`` is False.

    The job record (``<runs>/slurm/jobs.json``, keyed by :func:`~vaehelpers.slurm_record.run_key`) is read, updated
    and written under a lock, with SIGINT and SIGTERM deferred from the submission until it is written, so no job
    is lost or recorded twice. Returns the failed or lost runs (one line each) and whether every task ended. A
    SIGINT or SIGTERM while waiting cancels every task this call submitted, once, and says where each run resumes.
    """
    folder = make_private(slurm_dir(runs_dir))
    submitted: list[tuple[RunNotebook, object]] = []
    with stopping():
        try:
            with locked(folder / "jobs.lock", f"the Slurm job record of {runs_dir}"):
                record = read_record(folder)
                old_record = adopt_old_record(folder, tasks, record)
                jobs = _in_slurm_already(folder, tasks, record, options.lost_after_s)
                new = [task for task in tasks if run_key(task) not in jobs]
                if old_record is not None and not new:  # its tasks are in the record now (else written below)
                    write_record(folder, record)
                    done_with_old_record(old_record)
                if new:
                    _submit(new, folder, options, record, submitted)
                    jobs.update({run_key(task): (task, job, record[run_key(task)]["submitted"])
                                 for task, job in submitted})
                    done_with_old_record(old_record)
                    _say_submitted(submitted, runs_dir)
            return (wait_for(list(jobs.values()), options.poll_s, options.lost_after_s), True) if options.wait \
                else ([], False)
        except KeyboardInterrupt:
            print(_cancel(submitted), file=sys.stderr, flush=True)
            raise


def _in_slurm_already(folder: Path, tasks: list[RunNotebook], record: dict[str, dict],
                      lost_after_s: float) -> dict[str, tuple]:
    """The tasks the record names whose Slurm job may still train their run: waited on rather than trained twice.
    Said in one line, with when each was submitted (an earlier command's, or one started beside this one)."""
    jobs = {}
    for task in tasks:
        entry = record.get(run_key(task))
        if not entry:
            continue
        job = slurm_job()(folder / "%j", entry["job"])
        if job.paths.folder.exists():  # what lies in it decides what is waited on
            check_trusted(job.paths.folder)
        # a task that wrote its result has ended, whatever Slurm says yet: what it left, this call trains
        state = "ENDED" if job.paths.result_pickle.exists() else job.state
        if state == "PREEMPTED" and preempted_for_good(job):
            print(f"== {task.name}: Slurm job {entry['job']} was preempted and not requeued: submitted again, to "
                  "resume from its last checkpoint", flush=True)
        elif state in IN_FLIGHT or (state == "UNKNOWN" and not lost(job, entry["submitted"], lost_after_s)):
            jobs[run_key(task)] = (task, job, entry["submitted"])
        elif state == "UNKNOWN":
            print(f"== {task.name}: Slurm job {entry['job']}, submitted {duration_text(time.time() - entry['submitted'])}"
                  " ago, is unknown to Slurm (neither sacct nor squeue lists it): taken as lost, and submitted again",
                  flush=True)
    if jobs:
        print(f"== {len(jobs)} run{'s' if len(jobs) > 1 else ''} already in Slurm, submitted by another command: "
              + ", ".join(f"{t.name} (job {j.job_id}, {duration_text(time.time() - at)} ago)"
                          for t, j, at in jobs.values()), flush=True)
    return jobs


def _submit(new: list[RunNotebook], folder: Path, options: SlurmOptions, record: dict[str, dict],
            submitted: list[tuple[RunNotebook, object]]) -> None:
    """Submit ``new`` as one job array and write it into the record (``jobs.json``), with SIGINT and SIGTERM
    deferred between the two; a submission whose record cannot be written is cancelled. Its (task, job) pairs go
    into ``submitted`` as soon as they exist: what a signal noted meanwhile cancels."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm",
                                     slurm_max_num_timeout=NO_CAP)  # RunTask.checkpoint caps
    executor.update_parameters(
        name="vae-sweep", timeout_min=options.time_min, cpus_per_task=options.cpus_per_task,
        slurm_array_parallelism=options.array_parallelism,
        **({"slurm_partition": options.partition} if options.partition else {}),
        **({"slurm_gpus_per_task": options.gpus_per_task} if options.gpus_per_task else {}),
        **({"slurm_additional_parameters": dict(options.sbatch)} if options.sbatch else {}))
    umask = os.umask(0o077)  # the job folders and pickles private; sbatch passes the umask to the tasks
    try:
        with deferred():  # no signal between the submission and its record
            jobs = executor.map_array(RunTask(options.time_min, options.max_requeues), new,
                                      [options.cpus_per_task] * len(new))
            submitted += [(task, slurm_job()(folder / "%j", job.job_id)) for task, job in zip(new, jobs)]
            now = time.time()
            for task, job in submitted:
                record[run_key(task)] = {"job": job.job_id, "notebook": str(task.out), "label": task.spec.label,
                                         "submitted": now}
            try:
                write_record(folder, record)
            except BaseException:  # a job no record names would be waited on by nothing: cancelled
                print(_cancel(submitted, "the job record could not be written"), file=sys.stderr, flush=True)
                submitted.clear()
                raise
    finally:
        os.umask(umask)


def _say_submitted(submitted: list[tuple[RunNotebook, object]], runs_dir: Path) -> None:
    tasks, first = [task for task, _ in submitted], submitted[0][1]
    array = first.job_id.split("_")[0]
    print(f"== submitted Slurm job {array}: {len(tasks)} task{'s' if len(tasks) > 1 else ''} "
          f"({', '.join(t.name for t in tasks)}); logs in {first.paths.folder.parent}/"
          f"{array + '_<task>' if '_' in first.job_id else array}/. The tasks read and write {runs_dir}, "
          f"{tasks[0].out.parent} and the data cache {default_cache_dir()}: every node must see them at these paths "
          "(a shared filesystem)", flush=True)


def _cancel(submitted: list[tuple[RunNotebook, object]], why: str = "interrupted") -> str:
    """Cancel every task of ``submitted`` with one scancel call; what was cancelled and where each run goes on when
    the command runs again (read before the cancel: a cancelled task writes its own end), in one line."""
    if not submitted:
        return f"{why}: nothing this call submitted was running (tasks another command submitted go on)"
    goes_on = [f"{task.spec.label} {_goes_on(job)}" for task, job in submitted]
    arrays = sorted({job.job_id.split("_")[0] for _, job in submitted})
    try:
        done = subprocess.run(["scancel", *arrays], capture_output=True, text=True, timeout=60)
        failed = done.stderr.strip() or str(done.returncode) if done.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        failed = str(e)
    if failed:
        return (f"{why}: scancel {' '.join(arrays)} failed ({failed}): cancel those jobs yourself (`scancel "
                + " ".join(arrays) + "`)")
    return (f"{why}: cancelled Slurm job {', '.join(arrays)} ({len(submitted)} tasks); when the command runs again, "
            + "; ".join(goes_on))


def _goes_on(job) -> str:
    """Where the run of a task about to be cancelled goes on: its result, or the last checkpoint of the run folder
    its task named (:data:`RUN_FOLDER_FILE`)."""
    if job.paths.result_pickle.exists():
        try:
            error = task_error(job, "ENDED", patience_s=0)
        except Untrusted as e:
            return f"has ended ({e})"
        return "had finished: it is reused" if error is None else f"had failed ({error}): it is trained again"
    epoch, epochs = _last_checkpoint(str(job.paths.folder / f"{job.job_id}_run_folder.txt"))
    if epoch is None:
        return "had not begun training: it starts from its last checkpoint, if it has one"
    if epoch == 0:
        return "had no checkpoint yet: it starts over"
    if epochs and epoch >= epochs:
        return "had finished training: only its notebook runs again"
    return f"resumes after epoch {epoch}" + (f" of {epochs}" if epochs else "")
