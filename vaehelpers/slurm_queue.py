"""What Slurm says of the tasks of a sweep, and waiting for them: their states (one ``sacct`` call for all, through
submitit's watcher; ``squeue`` where sacct does not know a job), the lost and the preempted ones, and each ended
task's error in one line, read from its result pickle through :mod:`vaehelpers.trust`."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import time

from .trust import Untrusted, check_trusted, read_trusted


class RunFailed(RuntimeError):
    """A Slurm task's run notebook failed: its error in one line, which submitit passes on."""


IN_FLIGHT = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
             "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
"""Slurm job states in which a task may still finish its run: those submitit counts as unfinished (PREEMPTED
included: submitit requeues a preempted Checkpointable task), and Slurm's other states of a job not yet ended.
UNKNOWN, a job sacct does not list, is in flight only for ``SlurmOptions.lost_after_s`` after its submission."""

@functools.cache
def slurm_job():
    """submitit's ``SlurmJob`` with a watcher that asks ``sacct`` about a job until its state is an end: one outside
    :data:`IN_FLIGHT` (submitit's own list of unfinished states is shorter: it would take CONFIGURING, SUSPENDED,
    REQUEUE_HOLD, ... as ends and stop asking). ``slurm_job()(folder / "%j", job_id)``: one such job."""
    import submitit
    from submitit.slurm.slurm import SlurmInfoWatcher

    class InFlightWatcher(SlurmInfoWatcher):
        def is_done(self, job_id: str, mode: str = "standard") -> bool:
            return self.get_state(job_id, mode=mode).upper() not in IN_FLIGHT | {"UNKNOWN", "READY"}

    class SlurmJob(submitit.SlurmJob):
        watcher = InFlightWatcher(delay_s=600)  # refreshed by wait_for every poll_s: one sacct call for all

    return SlurmJob


def duration_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"

def in_queue(job_id: str) -> bool | None:
    """Whether Slurm's queue (``squeue``: pending, running, requeued, not ended) lists the job; None where squeue
    cannot answer (its controller down, say)."""
    try:
        queue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if queue.returncode == 0:
        return bool(queue.stdout.strip())
    return False if "invalid job id" in queue.stderr.lower() else None


def lost(job, submitted: float, lost_after_s: float) -> bool:
    """Whether a job sacct does not list is lost: submitted more than ``lost_after_s`` ago, no result written, and
    not in Slurm's queue either (where squeue cannot answer, not lost)."""
    if time.time() - submitted <= lost_after_s or job.paths.result_pickle.exists():
        return False
    return in_queue(job.job_id) is False


def preempted_for_good(job) -> bool:
    """A PREEMPTED job that is not coming back: Slurm's queue no longer lists it (a job requeued after its
    preemption is listed again, pending) and it wrote no result."""
    return not job.paths.result_pickle.exists() and in_queue(job.job_id) is False


PREEMPTED_GRACE_S = 60.0
"""How long a task stays PREEMPTED outside Slurm's queue before it is taken as not requeued."""


def not_coming_back(job, preempted_s: float, lost_after_s: float) -> bool:
    """Whether a task PREEMPTED for ``preempted_s`` will not run again: out of Slurm's queue after the grace, or,
    where squeue cannot answer, after ``lost_after_s``. One squeue lists is coming back: waited on."""
    if preempted_s <= min(PREEMPTED_GRACE_S, lost_after_s) or job.paths.result_pickle.exists():
        return False
    queued = in_queue(job.job_id)
    return queued is False or (queued is None and preempted_s > lost_after_s)


def wait_for(jobs: list, poll_s: float, lost_after_s: float) -> list[str]:
    """Wait for every (task, job, submitted), looking every ``poll_s`` seconds and printing the counts when they
    change; the failed ones and the lost ones (unknown to Slurm ``lost_after_s`` after their submission), one line
    each. The jobs are :func:`slurm_job`'s. A job's folder and result are read through :func:`read_trusted` before
    they are unpickled (:func:`task_error`)."""
    failed: dict[int, str] = {}
    pending = dict(enumerate(jobs))
    shown, started = None, time.perf_counter()
    watcher = jobs[0][1].watcher
    requeued: dict[int, dict] = {}  # what each task's <job>_requeues.json said last
    preempted_since: dict[int, float] = {}
    while pending:
        watcher.update()  # one sacct call for every task (submitit's own refresh slows to 10 min)
        for key, (task, job, submitted) in list(pending.items()):
            state = job.state
            if job.paths.result_pickle.exists() or state not in IN_FLIGHT | {"UNKNOWN"}:
                del pending[key]
                error = task_error(job, state)
                if error is not None:
                    log = job.paths.stderr
                    failed[key] = f"{task.spec.label}: {error} (Slurm job {job.job_id}, log {log})"
                    print(f"== failed: {task.spec.label} (Slurm job {job.job_id}): {error}; log: {log}", flush=True)
            elif state == "UNKNOWN" and lost(job, submitted, lost_after_s):
                del pending[key]
                failed[key] = (f"{task.spec.label}: Slurm job {job.job_id} is unknown to Slurm (neither sacct nor "
                               f"squeue lists it) {duration_text(time.time() - submitted)} after its submission: lost; "
                               "the command submits it again when run again")
                print(f"== lost: {failed[key]}", flush=True)
            elif state == "PREEMPTED" and not_coming_back(job, time.time() - preempted_since.setdefault(key, time.time()),
                                                           lost_after_s):
                del pending[key]  # Slurm requeues a task it preempts within seconds, where its partition says so
                failed[key] = (f"{task.spec.label}: Slurm job {job.job_id} was preempted and not requeued "
                               f"({duration_text(time.time() - preempted_since[key])} in that state, out of Slurm's "
                               "queue: its partition's PreemptMode cancels); the command submits it again when run "
                               "again, and its run resumes from its last checkpoint")
                print(f"== preempted: {failed[key]}", flush=True)
            if state != "PREEMPTED":
                preempted_since.pop(key, None)
            said = _requeues(job)
            if said and said != requeued.get(key):
                before = requeued.get(key, {"time_limit": 0})
                print(f"== {task.name} (Slurm job {job.job_id}): " + (
                    f"requeued at the time limit ({said['time_limit']} time{'s' if said['time_limit'] > 1 else ''})"
                    if said["time_limit"] > before["time_limit"] else "preempted and requeued") + (
                    f", resumes after epoch {said['epoch']}" if said["epoch"] else ", resumes from the start"), flush=True)
                requeued[key] = said
        states = [job.state for _, job, _ in pending.values()]
        running = sum(s in ("RUNNING", "COMPLETING") for s in states)
        counts = (len(jobs) - len(pending), running, len(pending) - running,
                  sum(said["time_limit"] for said in requeued.values()))
        if counts != shown:
            shown = counts
            print(f"== Slurm, {time.perf_counter() - started:.0f} s: {counts[0]} of {len(jobs)} finished, "
                  f"{counts[1]} running, {counts[2]} pending" + (f"; {counts[3]} requeue{'s' if counts[3] > 1 else ''} "
                  "at the time limit so far" if counts[3] else ""), flush=True)
        if pending:
            time.sleep(poll_s)
    print(f"== {len(jobs) - len(failed)} of {len(jobs)} runs trained in Slurm in {time.perf_counter() - started:.0f} s",
          flush=True)
    return [failed[key] for key in sorted(failed)]  # in the sweep's order


def _requeues(job) -> dict | None:
    """What the task of ``job`` said at its last requeue (:meth:`RunTask.checkpoint`): {"time_limit", "preempted",
    "epoch"}, or None where it has not been requeued (or the file is not what it writes)."""
    try:
        said = json.loads(read_trusted(job.paths.folder / f"{job.job_id}_requeues.json"))
    except (OSError, ValueError, Untrusted):  # only counts: a file not this user's alone is not read, not fatal
        return None
    fields = ("time_limit", "preempted", "epoch")
    if not (isinstance(said, dict) and all(isinstance(said.get(k), int) for k in fields)):
        return None
    return {k: said[k] for k in fields}


def task_error(job, state: str, patience_s: float = 15.0) -> str | None:
    """The error of an ended task in one line, or None where its run finished. Its result pickle (submitit's
    ``("success", seconds)`` or ``("error", traceback)``) is read through :func:`read_trusted` and only then
    unpickled; a task that ended without one (cancelled, killed, out of memory) is said with its Slurm state and
    the last line of its log. A shared filesystem may show the pickle late: where the task ran to its end (COMPLETED,
    FAILED) it is waited for ``patience_s``."""
    import pickle

    if job.paths.folder.exists():
        check_trusted(job.paths.folder)
    # a task that ran to its end wrote one (submitit: before it exits); one killed, cancelled or preempted did not
    deadline = time.monotonic() + (patience_s if state in ("COMPLETED", "FAILED") else 0)
    while True:
        try:
            outcome, value = pickle.loads(read_trusted(job.paths.result_pickle))
            break
        except FileNotFoundError:
            if time.monotonic() > deadline:
                log = job.paths.stderr.read_text(errors="replace").strip().splitlines() if job.paths.stderr.exists() else []
                return (f"the task ended ({state}) without a result" + (f": {log[-1].strip()}" if log else "")
                        + " (killed, out of memory or its node lost?)")
            time.sleep(1)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            return f"its result {job.paths.result_pickle} cannot be read ({type(e).__name__}: {e})"
    return None if outcome == "success" else job_error(str(value))


def job_error(trace: str) -> str:
    """The last line of a task's traceback: the run's own error (a diverged run, a damaged file)."""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    # RunFailed's own name (vaehelpers.slurm_queue.RunFailed, or vaehelpers.slurm.RunFailed from a task of the
    # version before) is not part of the run's error
    return re.sub(r"^(?:vaehelpers\.\w+\.)?RunFailed: ", "", lines[-1]) if lines else "an error without a message"
