"""The Slurm executor: `submitit <https://github.com/facebookincubator/submitit>`_, one job array with a task per
run still to train; a task that reaches its time limit or is preempted is requeued by submitit and its run
resumes from its last checkpoint (:mod:`vaehelpers.train`)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cache import default_cache_dir
from .execute import end_descendants, error_text, execute_run
from .files import locked, write_atomic
from .sweep import Task
from .train import RUN_FOLDER_FILE


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

    def __call__(self, task: Task, threads: int) -> float:
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

    def checkpoint(self, task: Task, threads: int):  # noqa: ANN201 (submitit's DelayedSubmission)
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
        resumes = f"after epoch {epoch} of {epochs}" if epoch else "from its last checkpoint, if any"
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
        run_dir = Path(Path(named_in).read_text().strip()) if named_in else None
        if run_dir is None:
            return None, None
        if not (run_dir / "checkpoint.pt").exists():
            return 0, None
        return int(read_pt(run_dir / "checkpoint.pt")["epoch"]), int(read_json(run_dir / "config.json")["config"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


IN_FLIGHT = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
             "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}
"""Slurm job states in which a task may still finish its run: those submitit counts as unfinished (PREEMPTED
included: submitit requeues a preempted Checkpointable task), and Slurm's other states of a job not yet ended.
UNKNOWN, a job sacct does not list, is in flight only for ``SlurmOptions.lost_after_s`` after its submission."""


class Untrusted(RuntimeError):
    """A Slurm folder or file another user owns or could write: never read, never unpickled."""


def _others_may_write(st: os.stat_result, acl: bool) -> bool:
    """Whether users other than this one may write a file or folder of this ``stat``: anyone, or its group, unless
    that group is this user's own private group (named after the user, no other member, no other account's primary
    group: what RHEL-family systems give each user, with umask 002) and no access list (``acl``) names others (with
    one, the group bits are the list's mask)."""
    if st.st_mode & 0o002:
        return True
    if not st.st_mode & 0o020:
        return False
    import grp
    import pwd

    try:
        user, group = pwd.getpwuid(os.getuid()), grp.getgrgid(st.st_gid)
    except KeyError:
        return True
    own = st.st_gid == user.pw_gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}
    return acl or not own or any(p.pw_gid == st.st_gid and p.pw_name != user.pw_name for p in pwd.getpwall())


def _has_acl(where: Path | int) -> bool:
    """Whether a POSIX access list is set on a path (not followed) or an open file."""
    try:
        names = os.listxattr(where) if isinstance(where, int) else os.listxattr(where, follow_symlinks=False)
    except OSError:  # a filesystem without extended attributes: none
        return False
    return "system.posix_acl_access" in names


def _distrust(st: os.stat_result, where: Path | int) -> str | None:
    """Why a file or folder of this ``stat`` (at ``where``, a path or an open file) is not this user's alone, or None."""
    return ("is a symbolic link" if stat.S_ISLNK(st.st_mode)
            else f"belongs to user id {st.st_uid}, not to you ({os.getuid()})" if st.st_uid != os.getuid()
            else f"can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
            if _others_may_write(st, _has_acl(where)) else None)


def _refuse(path: Path, why: str) -> Untrusted:
    return Untrusted(f"{path} {why}, so it is not read: a file planted there could run code in this process; "
                     f"remove it (or, where you trust it, `chmod go-w` it) and run the command again.")


def check_trusted(path: Path) -> None:
    """Refuse ``path`` (the Slurm folder, a job's folder, its record or a result pickle) unless this user owns it
    and no one else may write it: unpickling a task's result runs code, and a job record names what to wait on."""
    why = _distrust(path.lstat(), path)
    if why:
        raise _refuse(path, why)


def read_trusted(path: Path) -> bytes:
    """The bytes of ``path``, read through one descriptor that is checked as :func:`check_trusted` checks the path:
    a file swapped in between a check and the read (by anyone who may write a folder above it) is never read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse(path, "is a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        why = _distrust(st, f.fileno()) or (None if stat.S_ISREG(st.st_mode) else "is not a regular file")
        if why:
            raise _refuse(path, why)
        return f.read()


def check_folders_above(folder: Path) -> None:
    """Refuse ``folder`` where a folder above it lets another user put a folder of theirs in its place (one that is
    not root's or this user's, or that others may write without the sticky bit of /tmp): the tasks on the nodes
    read their pickles from ``folder`` by path, after any check here."""
    for above in sorted({*Path(os.path.abspath(folder)).parents, *folder.resolve().parents}):
        try:
            st = above.lstat()
        except FileNotFoundError:  # made by _private, after this check
            continue
        if st.st_uid not in (0, os.getuid()):
            why = f"belongs to user id {st.st_uid}"
        elif not stat.S_ISLNK(st.st_mode) and _others_may_write(st, _has_acl(above)) and not st.st_mode & stat.S_ISVTX:
            why = f"can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
        else:
            continue
        raise Untrusted(f"{above} {why}, so another user could put a folder of theirs in the place of {folder}, "
                        "whose pickles the Slurm tasks run: keep the runs folder where only you can write (`chmod "
                        f"go-w {above}`, or --runs-dir under a folder of your own) and run the command again.")


def slurm_dir(runs_dir: Path) -> Path:
    """``<runs>/slurm``: the job record, the tasks' pickles and logs; created private (0700)."""
    return Path(runs_dir) / "slurm"


def _private(folder: Path) -> Path:
    """``folder`` checked (:func:`check_folders_above`, before anything is made there) and made ``0700``, with the
    folders above it that are missing made ``0755`` less the umask (never group-writable)."""
    check_folders_above(folder)
    for missing in reversed([p for p in folder.parents if not p.exists()]):
        missing.mkdir(mode=0o755, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)
    check_folders_above(folder)  # again: a folder another user made in the meantime is theirs
    check_trusted(folder)
    return folder


NO_CAP = 1_000_000
"""submitit's ``max_num_timeout``: never reached; the cap is :attr:`SlurmOptions.max_requeues`, applied by
:meth:`RunTask.checkpoint`, which knows whether a slice made progress."""


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
    try:
        data = json.loads(read_trusted(path))
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


def _write_record(folder: Path, record: dict[str, dict]) -> None:
    write_atomic(folder / "jobs.json", json.dumps({"version": RECORD_VERSION, "jobs": record}, indent=1).encode(),
                 mode=0o600)


def _adopt_old_record(folder: Path, tasks: list[Task], record: dict[str, dict]) -> tuple[Path, dict] | None:
    """Take the tasks still in Slurm from ``submitted.json``, the record of the version before (output notebook ->
    job id), into ``record``: each under the run key of the task of this call it trains, as its own pickle
    (``<job>_submitted.pkl``, read through :func:`read_trusted`) says, never by its notebook's path alone, which
    other settings share. Returns the old file and its entries still in Slurm for no task of this call (named here;
    kept by :func:`_done_with`), or None where there is no such file."""
    import pickle

    import submitit

    path = folder / "submitted.json"
    if not path.exists():
        return None
    try:
        old = json.loads(read_trusted(path))
        if not (isinstance(old, dict) and all(isinstance(v, str) for v in old.values())):
            raise ValueError
    except ValueError:
        raise RecordDamaged(f"The Slurm job record of the version before, {path}, is damaged: check `squeue --me` "
                            "for tasks still running, then remove the file and run the command again.") from None
    by_key = {run_key(task): task for task in tasks}
    recorded = {e["job"] for e in record.values()}
    others = {}
    for notebook, job_id in old.items():
        job = submitit.SlurmJob(folder / "%j", job_id)
        if job_id in recorded or job.state not in IN_FLIGHT | {"UNKNOWN"}:  # UNKNOWN: not yet in sacct, or lost
            continue
        if job.paths.folder.exists():
            check_trusted(job.paths.folder)
        try:
            key = run_key(pickle.loads(read_trusted(job.paths.submitted_pickle)).args[0])
        except (OSError, pickle.UnpicklingError, AttributeError, ImportError, IndexError, EOFError, TypeError,
                ValueError, KeyError):
            key = None  # its pickle gone or unreadable: what it trains is not known
        if key in by_key and key not in record:
            record[key] = {"job": job_id, "notebook": notebook, "label": by_key[key].spec.label,
                           "submitted": path.stat().st_mtime}
        elif key not in by_key and job.state in IN_FLIGHT:
            others[notebook] = job_id
    if others:
        print("== still in Slurm from the version before, for no run of this call (not waited on; a run it shares "
              "waits for its lock): job " + ", ".join(f"{j} ({Path(n).name})" for n, j in others.items()), flush=True)
    return path, others


def _done_with(old_record: tuple[Path, dict] | None) -> None:
    """The record of the version before, once ``jobs.json`` holds what it took: removed, or left with its jobs
    still in Slurm for other runs (a later call may be theirs)."""
    if old_record is None:
        return
    path, others = old_record
    try:
        if others:
            write_atomic(path, json.dumps(others, indent=1).encode(), mode=0o600)
        else:
            path.unlink(missing_ok=True)
    except OSError as e:
        print(f"== warning: {path} could not be updated ({e}); `jobs.json` holds its tasks all the same", flush=True)


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
            old_record = _adopt_old_record(folder, tasks, record)
            jobs: dict[str, tuple[Task, submitit.Job, float]] = {}
            for task in tasks:  # still running from an earlier call: wait for it rather than train it twice
                entry = record.get(run_key(task))
                if entry:
                    job = submitit.SlurmJob(folder=folder / "%j", job_id=entry["job"])
                    if job.paths.folder.exists():  # what lies in it decides what is waited on
                        check_trusted(job.paths.folder)
                    age = time.time() - entry["submitted"]
                    # a task that wrote its result has ended, whatever Slurm says yet: what it left, this call trains
                    state = "ENDED" if job.paths.result_pickle.exists() else job.state
                    if state == "PREEMPTED" and _preempted_for_good(job):
                        print(f"== {task.name}: Slurm job {entry['job']} was preempted and not requeued: submitted "
                              "again, to resume from its last checkpoint", flush=True)
                    elif state in IN_FLIGHT or (state == "UNKNOWN" and not _lost(job, entry["submitted"],
                                                                                 options.lost_after_s)):
                        jobs[run_key(task)] = (task, job, entry["submitted"])
                    elif state == "UNKNOWN":
                        print(f"== {task.name}: Slurm job {entry['job']}, submitted {_duration(age)} ago, is unknown "
                              "to Slurm (neither sacct nor squeue lists it): taken as lost, and submitted again",
                              flush=True)
            new = [task for task in tasks if run_key(task) not in jobs]
            if old_record is not None and not new:  # its tasks are in the record now (else written below)
                _write_record(folder, record)
                _done_with(old_record)
            if jobs:
                print(f"== {len(jobs)} run{'s' if len(jobs) > 1 else ''} still in Slurm from an earlier call: "
                      + ", ".join(f"{t.name} (job {j.job_id})" for t, j, _ in jobs.values()), flush=True)
            if new:
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
                    with _Deferred():  # no signal between the submission and its record
                        submitted = executor.map_array(RunTask(options.time_min, options.max_requeues), new, [options.cpus_per_task] * len(new))
                        now = time.time()
                        for task, job in zip(new, submitted):
                            jobs[run_key(task)] = (task, job, now)
                            record[run_key(task)] = {"job": job.job_id, "notebook": str(task.out),
                                                     "label": task.spec.label, "submitted": now}
                        try:
                            _write_record(folder, record)
                        except BaseException:  # a job no record names would be waited on by nothing: cancelled
                            print(_cancel(submitted, "the job record could not be written"), file=sys.stderr,
                                  flush=True)
                            submitted = []
                            raise
                finally:
                    os.umask(umask)
                _done_with(old_record)
                array = submitted[0].job_id.split("_")[0]
                print(f"== submitted Slurm job {array}: {len(new)} task{'s' if len(new) > 1 else ''} "
                      f"({', '.join(t.name for t in new)}); logs in {submitted[0].paths.folder.parent}/"
                      f"{array + '_<task>' if '_' in submitted[0].job_id else array}/. The tasks read and "
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


def _in_queue(job_id: str) -> bool | None:
    """Whether Slurm's queue (``squeue``: pending, running, requeued, not ended) lists the job; None where squeue
    cannot answer (its controller down, say)."""
    try:
        queue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if queue.returncode == 0:
        return bool(queue.stdout.strip())
    return False if "invalid job id" in queue.stderr.lower() else None


def _lost(job, submitted: float, lost_after_s: float) -> bool:
    """Whether a job sacct does not list is lost: submitted more than ``lost_after_s`` ago, no result written, and
    not in Slurm's queue either (where squeue cannot answer, not lost)."""
    if time.time() - submitted <= lost_after_s or job.paths.result_pickle.exists():
        return False
    return _in_queue(job.job_id) is False


def _preempted_for_good(job) -> bool:
    """A PREEMPTED job that is not coming back: Slurm's queue no longer lists it (a job requeued after its
    preemption is listed again, pending) and it wrote no result."""
    return not job.paths.result_pickle.exists() and _in_queue(job.job_id) is False


PREEMPTED_GRACE_S = 60.0
"""How long a task stays PREEMPTED outside Slurm's queue before it is taken as not requeued."""


def _not_coming_back(job, preempted_s: float, lost_after_s: float) -> bool:
    """Whether a task PREEMPTED for ``preempted_s`` will not run again: out of Slurm's queue after the grace, or,
    where squeue cannot answer, after ``lost_after_s``. One squeue lists is coming back: waited on."""
    if preempted_s <= min(PREEMPTED_GRACE_S, lost_after_s) or job.paths.result_pickle.exists():
        return False
    queued = _in_queue(job.job_id)
    return queued is False or (queued is None and preempted_s > lost_after_s)


def _wait(jobs: list, options: SlurmOptions) -> list[str]:
    """Wait for every (task, job, submitted), printing the counts when they change; the failed ones and the lost
    ones (unknown to Slurm ``options.lost_after_s`` after their submission), one line each. A job's folder and
    result are read through :func:`read_trusted` before they are unpickled (:func:`_task_error`)."""
    failed: dict[int, str] = {}
    pending = dict(enumerate(jobs))
    shown, started = None, time.perf_counter()
    watcher = jobs[0][1].watcher
    requeued: dict[int, dict] = {}  # what each task's <job>_requeues.json said last
    preempted_since: dict[int, float] = {}
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
                error = _task_error(job, state)
                if error is not None:
                    log = job.paths.stderr
                    failed[key] = f"{task.spec.label}: {error} (Slurm job {job.job_id}, log {log})"
                    print(f"== failed: {task.spec.label} (Slurm job {job.job_id}): {error}; log: {log}", flush=True)
            elif state == "UNKNOWN" and _lost(job, submitted, options.lost_after_s):
                del pending[key]
                failed[key] = (f"{task.spec.label}: Slurm job {job.job_id} is unknown to Slurm (neither sacct nor "
                               f"squeue lists it) {_duration(time.time() - submitted)} after its submission: lost; "
                               "the command submits it again when run again")
                print(f"== lost: {failed[key]}", flush=True)
            elif state == "PREEMPTED" and _not_coming_back(job, time.time() - preempted_since.setdefault(key, time.time()),
                                                           options.lost_after_s):
                del pending[key]  # Slurm requeues a task it preempts within seconds, where its partition says so
                failed[key] = (f"{task.spec.label}: Slurm job {job.job_id} was preempted and not requeued "
                               f"({_duration(time.time() - preempted_since[key])} in that state, out of Slurm's "
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
            time.sleep(options.poll_s)
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


def _task_error(job, state: str, patience_s: float = 15.0) -> str | None:
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
    return None if outcome == "success" else _job_error(str(value))


def _job_error(trace: str) -> str:
    """The last line of a task's traceback: the run's own error (a diverged run, a damaged file)."""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix(f"{RunFailed.__module__}.RunFailed: ") if lines else "an error without a message"
