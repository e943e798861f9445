"""The fastest way to train on the machine at hand: the precision and a compiled step, chosen by measurement.

``precision="auto"`` and ``compiled=None`` are decided here, once per machine and model shape: a short probe
times a few training steps of the run's own model on the device — fp32, and bf16 where the device does it
natively, eagerly; then, where a compiler is present and the run is long enough for it to matter, the chosen
precision compiled by ``torch.compile`` (:mod:`vaehelpers.step`) — and the rates are recorded in the cache
folder, keyed by the CPU model or GPU name, PyTorch's version, the threads and the model's shape. A later
command reuses the record, and a rate once recorded is never measured again, so that noise never flips the
choice between two commands (the precision is part of a run's name) and the probe's cost is paid once.

The rule (:meth:`Probe.choose`): the precision from the eager rates — bf16 on a CPU only where it trains at
least ``BF16_GAIN`` times faster than fp32, since it reaches a slightly worse −ELBO; on a CUDA GPU wherever it
is supported; never on Apple MPS — so that it never depends on the run's length or on the compile. Then the
step is compiled where the run's images at the compiled rate, plus what a new process pays to compile (timed
in a new process, with the kernels cached), finish the run at least ``COMPILE_GAIN`` times sooner than eagerly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .files import locked, write_atomic
from .step import compiled_encode_decode, compiler_missing, encode_decode, model_for_timing, timed_steps
from .torch_private import cpu_has_amx_tile, cpu_has_avx512_bf16

Precision = Literal["bf16", "fp32"]
BF16_GAIN = 1.15
"""How much faster bf16 must train a run on a CPU to be chosen over fp32."""
COMPILE_GAIN = 1.10
"""How much sooner a compiled step must finish the run (its compile included) to be chosen. The probe times one
process alone; with two runs training at once on the 2-core development CPU a compiled step measured 1.08x faster
alone ran 0.92x as fast (4.81 against 4.42 s an epoch), so a smaller gain is not one to count on."""
COMPILE_WORTH_S = 20.0
"""Runs whose eager training takes less than this are not worth a compile: the probe does not compile for them."""
PROBE_VERSION = 1


NATIVE_BF16_ENV = "VAEHELPERS_NATIVE_BF16"
"""Set to 1 or 0, it overrides what :func:`cpu_has_native_bf16` reads off the CPU: the tests view every CPU both
ways with it (docs/testing.md), and 0 keeps bf16 out of ``auto``'s probe on a CPU where it is native."""


def native_bf16_told() -> bool | None:
    """What ``VAEHELPERS_NATIVE_BF16`` says of this CPU's bf16 (1: native, 0: none), or None where it is unset;
    a ValueError, in one sentence, for any other value."""
    view = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if view in ("0", "1"):
        return view == "1"
    if view:
        raise ValueError(f"{NATIVE_BF16_ENV} = {view!r} should be 1 (native bf16) or 0 (none), or unset to read "
                         "the CPU's own flags.")
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX), not by emulation; where the
    environment variable ``VAEHELPERS_NATIVE_BF16`` is 1 or 0, what it says instead."""
    told = native_bf16_told()
    return cpu_flags_native_bf16() if told is None else told


def cpu_flags_native_bf16() -> bool:
    """What the CPU's own flags say of bf16 (AVX512-BF16 or AMX), whatever ``VAEHELPERS_NATIVE_BF16`` says."""
    return cpu_has_avx512_bf16() or cpu_has_amx_tile()


def device_name(device: torch.device) -> str:
    """The processor that trains: the GPU's name, or the CPU's model (from /proc/cpuinfo on Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return device.type


def precisions_here(device: torch.device) -> tuple[Precision, ...]:
    """The precisions worth measuring on ``device``: fp32, and bf16 where it runs natively."""
    if device.type == "cuda":
        return ("fp32", "bf16") if torch.cuda.is_bf16_supported() else ("fp32",)
    if device.type == "cpu" and cpu_has_native_bf16():
        return ("fp32", "bf16")
    return ("fp32",)


@dataclass(frozen=True)
class Shape:
    """What a step's speed depends on besides the machine: the model and the batch."""

    base_channels: int
    image_size: int
    latent_dim: int
    batch_size: int

    @classmethod
    def of(cls, cfg) -> "Shape":
        return cls(cfg.base_channels, cfg.image_size, cfg.latent_dim, cfg.batch_size)

    def describe(self) -> str:
        return f"base {self.base_channels}, {self.image_size}×{self.image_size}, batch {self.batch_size}"


@dataclass(frozen=True)
class Choice:
    """How a run trains: its precision, eager or compiled, and why (one phrase, for the plan)."""

    precision: Precision
    compiled: bool
    why: str
    rate: float = 0.0  # images/s of the chosen step, as measured (0: not measured)

    def describe(self) -> str:
        return f"{self.precision}{', compiled' if self.compiled else ''} ({self.why})"


@dataclass
class Probe:
    """Measured training rates (images/s) of one shape on one machine, by candidate ("fp32", "bf16 compiled"),
    and the seconds a compile costs a new process with its kernels cached, by precision."""

    key: dict
    rates: dict[str, float] = field(default_factory=dict)
    compile_s: dict[str, float] = field(default_factory=dict)
    no_compile: str | None = None  # why no candidate is compiled (no compiler, or it failed here)
    measured: str = ""

    def seconds(self, candidate: str, images: float) -> float:
        """Expected seconds of a run of ``images`` training images with ``candidate``."""
        precision = candidate.split()[0]
        return images / self.rates[candidate] + (self.compile_s[precision] if "compiled" in candidate else 0.0)

    def choose(self, images: float, device: torch.device, precision: str = "auto",
               compiled: bool | None = None) -> Choice:
        """The precision (``precision``, or from the eager rates where "auto") and eager or compiled (``compiled``,
        or the faster over a run of ``images`` training images), with the reasons in one phrase."""
        other = {"fp32": "bf16", "bf16": "fp32"}
        if precision != "auto":
            p, why = precision, [f"{precision} as asked"]
        elif "bf16" not in self.rates:
            p, why = "fp32", [f"{self.rates['fp32']:,.0f} images/s, eager; no native bf16 here"]
        else:
            fast = self.rates["bf16"] >= BF16_GAIN * self.rates["fp32"] or device.type == "cuda"
            p = "bf16" if fast else "fp32"
            rule = "bf16 on CUDA where supported" if device.type == "cuda" else f"bf16 only where {BF16_GAIN:g}x faster"
            why = [f"{self.rates[p]:,.0f} images/s against {self.rates[other[p]]:,.0f} in {other[p]}, eager ({rule})"]
        c = f"{p} compiled"
        if compiled is not None:
            use = compiled
            why.append(f"{'compiled' if compiled else 'eager'} as asked")
        elif c in self.rates:
            use = self.seconds(p, images) >= COMPILE_GAIN * self.seconds(c, images)
            why.append(f"{'compiled' if use else 'eager'}: compiled {self.rates[c]:,.0f} images/s after a "
                       f"{self.compile_s[p]:.1f} s compile {'finishes' if use else 'would not finish'} the run's "
                       f"{images:,.0f} images {COMPILE_GAIN:g}x sooner")
        elif self.no_compile:
            use = False
            why.append(f"eager: {self.no_compile}")
        else:
            use = False
            why.append(f"eager: a run of {images / self.rates[p]:.0f} s is too short for a compile to pay"
                       if p in self.rates else "eager")
        threads = self.key["threads"]
        where = f"{'GPU' if device.type == 'cuda' else device.type.upper()} {self.key['device']}"
        return Choice(p, use, "; ".join(why) + f" (on this {where}, {threads} thread{'s' if threads > 1 else ''}, "  # type: ignore[arg-type]
                      f"{self.key['shape']})", self.rates.get(c if use else p, 0.0))


def probe_key(device: torch.device, shape: Shape) -> dict:
    return {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "shape": shape.describe(), "precisions": list(precisions_here(device)),
            "compiler": compiler_missing(device) is None, "version": PROBE_VERSION}


def measure_rates(device: torch.device, shape: Shape, candidates: list[str], cache_dir: Path, rounds: int = 3,
            seconds: float = 0.5) -> Probe:
    """Time each candidate ("fp32", "bf16 compiled", ...) on the shape's model, interleaved over ``rounds`` rounds
    of about ``seconds`` each (the median kept); a compiled candidate's compile is timed in a new process."""
    probe = Probe(probe_key(device, shape))
    setups = {}
    for candidate in candidates:
        precision = candidate.split()[0]
        model, optimizer, x = model_for_timing(device, shape.base_channels, shape.image_size, shape.latent_dim,
                                               shape.batch_size)
        passes = encode_decode
        if "compiled" in candidate:
            try:
                passes = compiled_encode_decode(cache_dir)
                timed_steps(model, optimizer, x, precision, 2, passes)  # compiles, and caches the kernels
                probe.compile_s[precision] = _new_process_compile_s(device, shape, precision, cache_dir)
            except Exception as e:  # noqa: BLE001 - a compiler that fails here: eager, and the reason said
                probe.no_compile = f"torch.compile failed here ({type(e).__name__}: {str(e).strip()[:160]})"
                continue
        timed_steps(model, optimizer, x, precision, 2, passes)  # warm-up: kernels chosen, memory allocated
        step_s = timed_steps(model, optimizer, x, precision, 1, passes)
        setups[candidate] = (model, optimizer, x, precision, passes, max(2, math.ceil(seconds / max(step_s, 1e-4))))
    samples: dict[str, list[float]] = {c: [] for c in setups}
    for _ in range(rounds):
        for candidate, (model, optimizer, x, precision, passes, steps) in setups.items():
            samples[candidate].append(steps * len(x) / timed_steps(model, optimizer, x, precision, steps, passes))
    probe.rates.update({c: statistics.median(s) for c, s in samples.items()})
    probe.measured = time.strftime("%Y-%m-%d %H:%M:%S")
    return probe


_NEW_PROCESS = """
import sys, time, torch
from vaehelpers.step import compiled_encode_decode, model_for_timing, timed_steps
device, precision, cache = torch.device(sys.argv[1]), sys.argv[2], sys.argv[3]
base, size, latent, batch, threads = map(int, sys.argv[4:9])
torch.set_num_threads(threads)
model, optimizer, x = model_for_timing(device, base, size, latent, batch)
timed_steps(model, optimizer, x, precision, 2)
eager = timed_steps(model, optimizer, x, precision, 3) / 3
passes = compiled_encode_decode(cache)
print(timed_steps(model, optimizer, x, precision, 1, passes) - eager)
"""


def _new_process_compile_s(device: torch.device, shape: Shape, precision: str, cache_dir: Path) -> float:
    """Seconds a new process (a run's notebook) adds to its first compiled step, the kernels being cached: importing
    the compiler, tracing, loading the kernels. Raises RuntimeError with the process's last line if it fails."""
    args = [str(device), precision, str(cache_dir), *map(str, (shape.base_channels, shape.image_size,
                                                            shape.latent_dim, shape.batch_size,
                                                            torch.get_num_threads()))]
    done = subprocess.run([sys.executable, "-c", _NEW_PROCESS, *args], capture_output=True, text=True, timeout=900)
    lines = (done.stdout + done.stderr).strip().splitlines()
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"a new process could not compile: {lines[-1] if lines else done.returncode}")
    return max(0.0, float(done.stdout.strip().splitlines()[-1]))


def choose_step(cfg, device: torch.device, train_images: int, cache_dir: str | os.PathLike | None = None,
                compiled: bool | None = None) -> Choice:
    """How ``cfg`` trains on ``device`` with this process's threads: its precision (``cfg.precision``, or measured
    where "auto") and whether its step is compiled (``compiled``, or measured where None), for a run of
    ``cfg.epochs`` epochs of ``train_images`` images. The measurements are recorded and reused (module docstring)."""
    from .cache import default_cache_dir

    images = cfg.epochs * train_images
    if device.type not in ("cpu", "cuda"):
        return Choice("fp32" if cfg.precision == "auto" else cfg.precision, False,
                      f"{device.type}: fp32 and eager, nothing measured")
    shape, cache = Shape.of(cfg), Path(cache_dir or default_cache_dir())
    key = probe_key(device, shape)
    if cfg.precision != "auto" and (compiled is not None or cfg.precision not in key["precisions"]):
        native = cfg.precision in key["precisions"]
        return Choice(cfg.precision, bool(compiled), "as asked" + ("" if native else f"; {cfg.precision} is not "
                                                                   "native here, not measured"))
    record = cache / "speed" / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
    with _locked_if_writable(cache / "speed" / ".lock"):  # two probes at once would time each other
        probe = _read(record, key)
        precisions = [p for p in key["precisions"] if cfg.precision in ("auto", p)]
        missing = [p for p in precisions if p not in probe.rates]
        changed = _keep_new(probe, measure_rates(device, shape, missing, cache / "inductor")) if missing else False
        p = probe.choose(images, device, cfg.precision, compiled=False).precision  # from the eager rates
        if compiled is not False and f"{p} compiled" not in probe.rates and key["compiler"] and \
                probe.no_compile is None and images / probe.rates[p] >= COMPILE_WORTH_S:
            # the chosen precision compiled, side by side with its eager step; only the new rate is kept
            changed = _keep_new(probe, measure_rates(device, shape, [p, f"{p} compiled"], cache / "inductor")) or changed
        if changed:
            try:
                write_atomic(record, json.dumps(asdict(probe), indent=1).encode())
            except OSError:
                pass  # a cache that cannot be written: the choice holds for this command, and is measured again
        if not key["compiler"]:
            probe.no_compile = compiler_missing(device)
        elif probe.no_compile and not changed:
            probe.no_compile += f" (recorded in {record}: delete it to try again)"
        return probe.choose(images, device, cfg.precision, compiled)


def _keep_new(probe: Probe, measured: Probe) -> bool:
    """Add ``measured``'s rates that ``probe`` lacks (a recorded rate is never replaced); whether anything was added."""
    new = {c: r for c, r in measured.rates.items() if c not in probe.rates}
    probe.rates.update(new)
    probe.compile_s.update({p: s for p, s in measured.compile_s.items() if p not in probe.compile_s})
    probe.no_compile = probe.no_compile or measured.no_compile
    probe.measured = measured.measured
    return bool(new) or measured.no_compile is not None


def _locked_if_writable(lock_file: Path):
    """The probe's lock, or none where the cache folder cannot be written (then nothing is recorded either)."""
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_file, "a"):
            pass
    except OSError:
        return contextlib.nullcontext()
    return locked(lock_file, "the training-speed probe")


def _read(record: Path, key: dict) -> Probe:
    """The recorded probe for ``key``, or a new empty one (a damaged or foreign record is measured again)."""
    try:
        probe = Probe(**json.loads(record.read_text()))
        if probe.key == key and all(isinstance(r, float) and r > 0 for r in probe.rates.values()) \
                and all(isinstance(s, float) for s in probe.compile_s.values()):
            return probe
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return Probe(key)
