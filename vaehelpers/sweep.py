"""Sweeps: the report's runs (KL weights × seeds × latent sizes, and the σ-VAE), each one execution of
``notebooks/run.ipynb`` with papermill, trained concurrently on this machine or as one Slurm job array.

Two existing engines run them; nothing here schedules by itself:

* ``local``: :class:`concurrent.futures.ProcessPoolExecutor` (the standard library's bounded pool of
  worker processes), each worker executing one run notebook at a time with its share of the cores;
* ``slurm``: `submitit <https://github.com/facebookincubator/submitit>`_, one job array with a task per
  run still to train; a task that reaches its time limit or is preempted is requeued by submitit and
  its run resumes from its last checkpoint (:mod:`vaehelpers.train`).

Whichever ran it, a run is finished when its executed notebook ran the current ``run.ipynb`` with
the same parameters, without error, to a run folder holding its checkpoint (:func:`up_to_date`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .cache import default_cache_dir
from .files import write_atomic
from .objective import Likelihood
from .params import ASSIGNMENT_WEIGHTS, REPORT_WEIGHTS, PROJECT, ParameterError

NOTEBOOKS = PROJECT / "notebooks"
Executor = Literal["local", "slurm"]

LOCAL_KERNEL = {"KernelManager": {"transport": "ipc"}}
"""The notebooks' kernels talk to papermill over Unix sockets in Jupyter's private runtime folder, not over TCP
ports: on one machine there is no network to encrypt, and ipykernel's warning that a TCP kernel runs without
encryption does not apply (``make lab`` starts JupyterLab's kernels the same way)."""


def execute_notebook(source: Path, out: Path, **kwargs):
    """``papermill.execute_notebook`` with a local (IPC) kernel whose sockets are this execution's own: left to
    itself, jupyter_client names them ``kernel-ipc-<n>`` in the current folder, and two notebooks executed at once
    from one folder would take the same sockets."""
    import uuid

    import papermill
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets.config import Config

    runtime = Path(jupyter_runtime_dir())
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    sockets = {"ip": str(runtime / f"vaehelpers-{uuid.uuid4().hex[:12]}-ipc")}
    config = Config({"KernelManager": {**LOCAL_KERNEL["KernelManager"], **sockets}})
    return papermill.execute_notebook(source, out, config=config, **kwargs)


_PAPERMILL_CHATTER = re.compile(r"^(Executing|Ending) Cell|^<Figure size|^(Input|Output) Notebook|^Executing notebook")


def show_notebook_output(prefix: str = "") -> None:
    """Let papermill stream what the notebooks print (epochs and losses), without its own chatter; each line
    starts with ``prefix`` (which run it comes from, where several train at once)."""
    logger = logging.getLogger("papermill")
    for handler in [h for h in logger.handlers if getattr(h, "_vaehelpers", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(prefix.replace("%", "%%") + "%(message)s"))

    def keep(record: logging.LogRecord) -> bool:  # a printed line, without papermill's trailing newline
        record.msg, record.args = record.getMessage().rstrip(), ()
        return bool(record.msg) and not _PAPERMILL_CHATTER.search(record.msg.strip())

    handler.addFilter(keep)
    handler._vaehelpers = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)


# ---------------------------------------------------------------- what a sweep trains


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: what differs between the runs of a report."""

    kl_weight: float
    likelihood: Likelihood
    seed: int
    latent_dim: int

    @property
    def label(self) -> str:
        return (f"KL weight {self.kl_weight:g}" + (", σ-VAE" if self.likelihood == "sigma-vae" else "")
                + f", latent size {self.latent_dim}, seed {self.seed}")


@dataclass(frozen=True)
class Sweep:
    """The runs of a report: every KL weight (and the σ-VAE at weight 1) for every seed and latent size, and
    ``extra_seeds`` of the assignment's settings alone (KL weights 1, 100 and 0, fixed decoder, at the main latent
    size; weight 1 at every latent size), so that even a quick report tests the comparisons its discussion makes
    against a spread of their own."""

    kl_weights: tuple[float, ...] = REPORT_WEIGHTS
    seeds: tuple[int, ...] = (0,)  # every setting trains once per seed; the first is the one Q2-Q7 show
    latent_dims: tuple[int, ...] = (20,)  # every setting trains once per latent size; the first is the main one
    sigma_vae: bool = True  # also weight 1 with a calibrated decoder variance
    extra_seeds: tuple[int, ...] = ()  # further seeds of KL weights 1, 100 and 0 (fixed decoder) alone

    def __post_init__(self) -> None:
        for name, values in (("seeds", self.seeds), ("latent_dims", self.latent_dims)):
            if not values or len(set(values)) != len(values):
                raise ParameterError(f"Parameter {name} = {list(values)!r} needs at least one value, each once.")
        if any(s < 0 for s in self.seeds + self.extra_seeds):
            raise ParameterError(f"Seeds must be whole numbers >= 0; got {list(self.seeds + self.extra_seeds)!r}.")

    @property
    def seed(self) -> int:
        return self.seeds[0]

    @property
    def latent_dim(self) -> int:
        return self.latent_dims[0]

    def all_seeds(self) -> tuple[int, ...]:
        """The sweep's seeds, then the extra ones."""
        return self.seeds + tuple(s for s in self.extra_seeds if s not in self.seeds)

    def runs(self) -> list[RunSpec]:
        """Every run, the main ones (first seed, first latent size) first, so that they finish first."""
        specs = []
        for d in self.latent_dims:
            for s in self.all_seeds():
                extra = s not in self.seeds
                specs += [RunSpec(float(w), "fixed", s, d) for w in self.kl_weights
                          if not extra or w == 1.0 or (w in ASSIGNMENT_WEIGHTS and d == self.latent_dim)]
                specs += [RunSpec(1.0, "sigma-vae", s, d)] if self.sigma_vae and not extra else []
        main = [r for r in specs if r.seed == self.seed and r.latent_dim == self.latent_dim]
        return main + [r for r in specs if r not in main]

    def notebook_name(self, spec: RunSpec) -> str:
        """The executed notebook's file name: ``run-kl1.ipynb`` for a main run, ``run-kl1-z50-seed2.ipynb``."""
        return (f"run-kl{spec.kl_weight:g}" + ("-sigma-vae" if spec.likelihood == "sigma-vae" else "")
                + (f"-z{spec.latent_dim}" if spec.latent_dim != self.latent_dim else "")
                + (f"-seed{spec.seed}" if spec.seed != self.seed else "") + ".ipynb")

    def describe(self) -> str:
        """One phrase: what the runs are."""
        weights = ", ".join(f"{w:g}" for w in self.kl_weights) + (" and the σ-VAE" if self.sigma_vae else "")
        seeds = f"seed{'s' if len(self.seeds) > 1 else ''} {', '.join(map(str, self.seeds))}"
        extra = [s for s in self.extra_seeds if s not in self.seeds]
        assignment = " and ".join(f"{w:g}" for w in ASSIGNMENT_WEIGHTS if w in self.kl_weights)
        more = (f", and seed{'s' if len(extra) > 1 else ''} {', '.join(map(str, extra))} of weight"
                f"{'s' if ' and ' in assignment else ''} {assignment}" if extra else "")
        dims = f"latent size{'s' if len(self.latent_dims) > 1 else ''} {', '.join(map(str, self.latent_dims))}"
        return f"KL weights {weights}; {seeds}{more}; {dims}"


@dataclass
class Task:
    """One run still to train: its notebook's parameters and where the executed notebook goes."""

    spec: RunSpec
    out: Path
    parameters: dict
    source: Path = NOTEBOOKS / "run.ipynb"

    @property
    def name(self) -> str:
        return self.out.name


def up_to_date(executed: Path, source: Path, parameters: dict) -> bool:
    """Whether ``executed`` ran the current ``source`` with these parameters, without error, to a finished run.

    Such a notebook would only reload its finished run and redraw the same figures.
    """
    import nbformat

    if not executed.exists() or executed.stat().st_mtime < source.stat().st_mtime:
        return False
    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # a notebook cut short (a killed task): not finished
        return False
    papermill_info = nb.metadata.get("papermill", {})
    if papermill_info.get("parameters") != parameters or papermill_info.get("exception"):
        return False
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    folder = re.search(r"^run folder: (.+)$", printed, re.M)  # the run it drew must still be there
    return folder is not None and (Path(folder.group(1)) / "checkpoint.pt").exists()


class SweepFailed(RuntimeError):
    """Some runs of a sweep failed; the others finished. The message names each with its error and log."""


# ---------------------------------------------------------------- one run, in whichever process runs it


def execute_run(task: Task, prefix: str = "", threads: int | None = None) -> float:
    """Execute ``run.ipynb`` for one task (its kernel with ``threads`` CPU threads); returns the seconds it took.
    A failed notebook raises papermill's ``PapermillExecutionError``, whose ``evalue`` is the run's error."""
    if threads:  # the kernel is a child process: PyTorch and the BLAS read these when they start
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)
    show_notebook_output(prefix)
    started = time.perf_counter()
    execute_notebook(task.source, task.out, log_output=True, progress_bar=False, parameters=task.parameters)
    return time.perf_counter() - started


def _error_text(error: BaseException) -> str:
    """A failed run's error in one line: the notebook's exception, as ``RunDamaged: ...``."""
    if hasattr(error, "ename"):  # papermill's PapermillExecutionError
        return f"{error.ename}: {error.evalue}"
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


class RunFailed(RuntimeError):
    """A Slurm task's run notebook failed: its error in one line, which submitit passes on."""


# ---------------------------------------------------------------- local: worker processes on this machine


def cpu_count() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def local_workers(runs: int, base_channels: int, image_size: int, device: str, cores: int | None = None) -> tuple[int, int]:
    """How many runs train at once here, and with how many threads each.

    A run of the quick budget's size (base 16 at 64×64) keeps one core busy and gains little from a second:
    on the 2-core CPU two such runs at once, one thread each, trained 1.26× more images per second than one
    run with two threads; a run of base 32 scales better by itself (two at once gained 1.07×). So a run
    gets about one thread per 16 base channels at 64×64 (scaled with the pixels), and the cores are shared
    among as many runs as that leaves room for. On a GPU the runs share it one at a time.
    """
    if device not in ("cpu", "auto") or _has_accelerator(device):
        return 1, 0
    cores = cores or cpu_count()
    per_run = max(1, min(cores, round(base_channels / 16 * (image_size / 64) ** 2)))
    workers = max(1, min(runs, cores // per_run))
    return workers, max(1, cores // workers)


def _has_accelerator(device: str) -> bool:
    import torch

    return device == "auto" and (torch.cuda.is_available() or torch.backends.mps.is_available())


def tail_threads(threads: int, workers: int, tail: int) -> int:
    """The threads of each of the ``tail`` runs of a last round that trains fewer runs than there are workers:
    the cores the idle workers leave. (On the 2-core AMD EPYC the ninth run of the default report trained alone
    on one thread for 84 s while the other core idled.)"""
    return max(threads, threads * workers // tail) if tail else threads


def run_local(tasks: list[Task], workers: int, threads: int) -> list[str]:
    """Train ``tasks`` on ``workers`` processes of ``threads`` threads each; one worker trains in this process,
    as a single run always did. Returns one line per failed run (its error and its notebook); the others finish."""
    failures: list[str] = []
    started = time.perf_counter()
    if workers <= 1:
        for i, task in enumerate(tasks, 1):
            print(f"== run {i} of {len(tasks)}, {task.spec.label}: notebooks/run.ipynb -> {task.out}", flush=True)
            try:
                execute_run(task)
            except Exception as e:
                if not hasattr(e, "evalue"):
                    raise
                failures.append(f"{task.spec.label}: {_error_text(e)} (notebook {task.out})")
                print(f"== run {task.spec.label} failed: {_error_text(e)}", flush=True)
        return failures
    import multiprocessing

    tail = len(tasks) % workers if len(tasks) > workers else 0
    print(f"== training {len(tasks)} runs, {workers} at a time with {threads} thread{'s' if threads > 1 else ''} "
          "each" + (f" (the last {tail}, trained once the others end, with {tail_threads(threads, workers, tail)} "
                    "threads)" if tail else "") + "; each line starts with its run", flush=True)
    failed: dict[int, str] = {}
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(execute_run, task, f"[{task.name.removesuffix('.ipynb')}] ",
                               tail_threads(threads, workers, tail) if i >= len(tasks) - tail else threads): task
                   for i, task in enumerate(tasks)}
        for done, future in enumerate(as_completed(futures), 1):
            task = futures[future]
            try:
                seconds = future.result()
                print(f"== {done} of {len(tasks)} finished: {task.spec.label} in {seconds:.0f} s -> {task.out}",
                      flush=True)
            except Exception as e:  # a failed notebook (PapermillExecutionError), or a worker that died
                failed[tasks.index(task)] = f"{task.spec.label}: {_error_text(e)} (notebook {task.out})"
                print(f"== {done} of {len(tasks)} failed: {task.spec.label}: {_error_text(e)}", flush=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        print("interrupted: the runs being trained stop; their last checkpoints stay and resume next time",
              file=sys.stderr, flush=True)
        raise
    pool.shutdown()
    failures += [failed[i] for i in sorted(failed)]  # in the sweep's order
    print(f"== {len(tasks) - len(failures)} of {len(tasks)} runs trained in {time.perf_counter() - started:.0f} s",
          flush=True)
    return failures


# ---------------------------------------------------------------- slurm: one job array through submitit


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
            raise RunFailed(_error_text(e)) from None


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


def estimate_seconds(tasks: int, epochs: int, train_images: int, rate: float, workers: int) -> float:
    """Wall seconds to train ``tasks`` runs ``workers`` at a time at ``rate`` images/s each: training steps,
    plus a fifth for validation, snapshots and measurements, plus 15 s per run to start its kernel."""
    per_run = epochs * train_images / rate * 1.2 + 15
    return math.ceil(tasks / workers) * per_run
