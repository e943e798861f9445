"""The Slurm job record, ``<runs>/slurm/jobs.json``: which job trains which run (by :func:`run_key`), so that a
command run again waits on the tasks still in Slurm rather than submitting a run twice. It is read and written
through :mod:`vaehelpers.trust`; the record of the version before (``submitted.json``) is taken over once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import OneSentenceError
from .files import write_atomic
from .slurm_queue import IN_FLIGHT, slurm_job
from .sweep import RunNotebook
from .trust import check_trusted, read_trusted


NOT_IDENTITY = ("device", "checkpoint_every", "compiled")
"""Task parameters that do not change what a run is (where it trains, how often it writes, eager or compiled)."""


def run_key(task: RunNotebook) -> str:
    """A run's identity in the job record: its notebook's parameters (the run's settings, data, precision and runs
    folder) less :data:`NOT_IDENTITY`, so that a call with other epochs, rate or data never waits on an array trained
    for another, and one with another ``--checkpoint-every`` never submits a run still in Slurm a second time."""
    identity = {k: v for k, v in task.parameters.items() if k not in NOT_IDENTITY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


RECORD_VERSION = 1


class RecordDamaged(OneSentenceError, ValueError):
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


def write_record(folder: Path, record: dict[str, dict]) -> None:
    write_atomic(folder / "jobs.json", json.dumps({"version": RECORD_VERSION, "jobs": record}, indent=1).encode(),
                 mode=0o600)


def adopt_old_record(folder: Path, tasks: list[RunNotebook], record: dict[str, dict]) -> tuple[Path, dict] | None:
    """Take the tasks still in Slurm from ``submitted.json``, the record of the version before (output notebook ->
    job id), into ``record``: each under the run key of the task of this call it trains, as its own pickle
    (``<job>_submitted.pkl``, read through :func:`read_trusted`) says, never by its notebook's path alone, which
    other settings share. Returns the old file and its entries still in Slurm for no task of this call (named here;
    kept by :func:`done_with_old_record`), or None where there is no such file."""
    import pickle

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
        job = slurm_job()(folder / "%j", job_id)
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


def done_with_old_record(old_record: tuple[Path, dict] | None) -> None:
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
