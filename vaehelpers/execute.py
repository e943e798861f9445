"""One run notebook executed: papermill with a local kernel of its own, what it prints streamed with the run's
name, its error in one line. Both executors (:mod:`vaehelpers.local`, :mod:`vaehelpers.slurm`) call
:func:`execute_run`; the build executes report.ipynb with :func:`execute_notebook`."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

from .sweep import RunNotebook

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




def execute_run(task: RunNotebook, prefix: str = "", threads: int | None = None,
                kernel_ignores: tuple[int, ...] = ()) -> float:
    """Execute ``run.ipynb`` for one task (its kernel with ``threads`` CPU threads, ignoring the signals
    ``kernel_ignores``); returns the seconds it took. A failed notebook raises papermill's
    ``PapermillExecutionError``, whose ``evalue`` is the run's error."""
    if threads:  # the kernel is a child process: PyTorch and the BLAS read these when they start
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)
    show_notebook_output(prefix)
    started = time.perf_counter()
    ignore = "".join(f"; signal.signal({int(s)}, signal.SIG_IGN)" for s in kernel_ignores)
    execute_notebook(task.source, task.out, log_output=True, progress_bar=False, parameters=task.parameters,
                     **({"extra_arguments": [f"--IPKernelApp.exec_lines=import signal{ignore}"]} if ignore else {}))
    return time.perf_counter() - started


def error_text(error: BaseException) -> str:
    """A failed run's error in one line: the notebook's exception, as ``RunDamaged: ...``."""
    if hasattr(error, "ename"):  # papermill's PapermillExecutionError
        return f"{error.ename}: {error.evalue}"
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def end_descendants(grace_s: float = 5.0) -> int:
    """End every process this one started, and theirs (pool workers, their kernels, which run in sessions of their
    own, multiprocessing's resource tracker): SIGTERM, then SIGKILL after ``grace_s``. Returns how many there were."""
    import psutil

    ended: set[int] = set()
    for _ in range(5):  # again, for what a worker started while the others ended (a kernel in its own session)
        procs = [p for p in psutil.Process().children(recursive=True) if p.pid not in ended]
        if not procs:
            break
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=max(grace_s, 5.0))  # gone, not only signalled (a write to NFS ends first)
        ended.update(p.pid for p in procs)
    return len(ended)
