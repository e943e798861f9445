"""The device that trains: ``"auto"`` picks CUDA, then Apple MPS, then the CPU, and stops with
:class:`GPUUnusable` where an NVIDIA driver is loaded but PyTorch cannot use its GPU.

It knows nothing of runs or training (it imports nothing of the package), so that the parameter checks, the
measurements, the benchmarks and the training all ask it alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import OneSentenceError

NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")
"""Where the loaded NVIDIA kernel driver states its version (replaced in tests by a file of their own)."""


class GPUUnusable(OneSentenceError, RuntimeError):
    """An NVIDIA driver is here but this PyTorch cannot use its GPU: ``auto`` stops rather than train on the CPU."""


def nvidia_driver() -> str | None:
    """The version of the NVIDIA driver loaded here (its /proc file, else ``nvidia-smi``), or None where none is."""
    import re
    import shutil
    import subprocess

    try:
        text = NVIDIA_DRIVER.read_text()
    except OSError:
        text = ""
    if text:
        found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text) or re.search(r"\d+\.\d+(?:\.\d+)?", text)
        return found.group(found.lastindex or 0) if found else text.splitlines()[0].strip()
    if NVIDIA_DRIVER == Path("/proc/driver/nvidia/version") and shutil.which("nvidia-smi"):  # (tests: no fallback)
        try:  # the tools without a loaded driver fail, printing their error on stdout: no driver then
            done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)+)\s*(?:\n.*)?", done.stdout, re.S) if done.returncode == 0 else None
        return found.group(1) if found else None
    return None


def _gpu_hidden() -> bool:
    """Whether CUDA_VISIBLE_DEVICES hides every GPU on purpose (empty, -1, or Slurm's NoDevFiles)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return value is not None and value.strip() in ("", "-1", "NoDevFiles")


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; but where an NVIDIA driver is loaded and PyTorch
    cannot use its GPU (a wheel built for a newer CUDA than the driver serves, or a CPU build), it raises
    :class:`GPUUnusable` with the driver's version, the wheel's CUDA version and the fix, rather than train on
    the CPU for hours without a word. ``"cpu"`` always works."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        driver = None if _gpu_hidden() else nvidia_driver()
        if driver:
            try:
                torch.cuda.init()
                reason = "it sees no GPU"
            except (RuntimeError, AssertionError) as e:
                reason = str(e).split(". ")[0].strip().rstrip(".")
            wheel = (f"PyTorch {torch.__version__} is built for CUDA {torch.version.cuda}" if torch.version.cuda
                     else f"PyTorch {torch.__version__} is a CPU build")
            wheel_at_fault = not torch.version.cuda or any(w in reason.lower() for w in ("too old", "insufficient"))
            fix = ("install a PyTorch build for this driver (docs/gpu.md, \"A GPU PyTorch cannot use\")" if wheel_at_fault
                   else "where the driver is older than the wheel's CUDA needs, install a PyTorch build for it (docs/gpu.md, "
                        "\"A GPU PyTorch cannot use\"); where this process may not use the GPU (a job given none), "
                        "ask for one")
            raise GPUUnusable(f"device 'auto' found NVIDIA driver {driver} but PyTorch cannot use its GPU ({wheel}; "
                              f"PyTorch says: {reason}): {fix}, or pass device 'cpu' (--device cpu) to train on the "
                              "CPU.")
        return torch.device("cpu")
    return torch.device(device)
