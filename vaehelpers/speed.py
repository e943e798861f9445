"""The fastest way to train on the machine at hand: the precision and a compiled step, chosen by measurement.

``precision="auto"`` and ``compiled=None`` are decided here, once per machine and model shape: a short probe
times a few training steps of the run's own model on the device for each candidate — fp32, and bf16 where
the device does it natively; each eager and, where a compiler is present and the run is long enough for it to
matter, compiled by ``torch.compile`` (:mod:`vaehelpers.step`) — and the rates are recorded in the cache
folder, keyed by the CPU model or GPU name, PyTorch's version, the threads and the model's shape. A later
command reuses the record, so that measurement noise never flips the choice between two commands (the
precision is part of a run's name) and the probe's cost is paid once.

The rule (:meth:`Probe.choose`): a run's expected time is its images over the measured rate, plus, compiled,
the compile time a new process pays with the kernels cached. bf16 is chosen on a CPU only where it trains the
run at least ``BF16_GAIN`` times faster than fp32, since it reaches a slightly worse −ELBO; on a CUDA GPU
wherever it is supported; never on Apple MPS. The faster of eager and compiled is used for that precision.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .files import locked, write_atomic
from .step import batch_terms, compiled_terms, compiler_missing, model_for_timing, timed_steps

Precision = Literal["bf16", "fp32"]
BF16_GAIN = 1.15
"""How much faster bf16 must train a run on a CPU to be chosen over fp32."""
COMPILE_WORTH_S = 20.0
"""Runs whose eager training takes less than this are not worth a compile: the probe does not compile for them."""
PROBE_VERSION = 1


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX), not by emulation."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


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
    and the seconds a compile costs a new process with its kernels cached, by precision (with "import": the part
    that imports the compiler)."""

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
        """The fastest candidate for a run of ``images`` training images, within what the caller fixed."""
        precisions = [p for p in self.key["precisions"] if precision in ("auto", p)] or [precision]
        best: dict[str, str] = {}
        for p in precisions:
            options = [c for c in (p, f"{p} compiled") if c in self.rates and (compiled is None or
                                                                              compiled == ("compiled" in c))]
            if options:
                best[p] = min(options, key=lambda c: self.seconds(c, images))
        if not best:  # what the caller fixed was not measured (e.g. compiled where no compiler is)
            p = precisions[0]
            return Choice(p, bool(compiled), "as asked; not measured here")  # type: ignore[arg-type]
        if precision != "auto":
            chosen = best[precision]
        elif device.type == "cuda" and "bf16" in best:
            chosen = best["bf16"]
        elif "bf16" in best and self.seconds(best["fp32"], images) >= BF16_GAIN * self.seconds(best["bf16"], images):
            chosen = best["bf16"]
        else:
            chosen = best["fp32"]
        return Choice(chosen.split()[0], "compiled" in chosen, self.why(chosen, best, images, device),  # type: ignore
                      self.rates[chosen])

    def why(self, chosen: str, best: dict[str, str], images: float, device: torch.device) -> str:
        """What the choice rests on: the rates measured, the compile's cost, the rule."""
        where = "this GPU" if device.type == "cuda" else f"this {device.type.upper()}"
        parts = [f"{self.rates[chosen]:,.0f} images/s"]
        other_precision = [best[p] for p in best if p != chosen.split()[0]]
        parts += [f"against {self.rates[c]:,.0f} in {c}" for c in other_precision]
        eager, compiled = chosen.split()[0], f"{chosen.split()[0]} compiled"
        if "compiled" in chosen:
            parts.append(f"{self.rates[eager]:,.0f} eager; the compile costs a run {self.compile_s[eager]:.1f} s")
        elif compiled in self.rates:
            parts.append(f"eager: {self.rates[compiled]:,.0f} compiled does not repay its "
                         f"{self.compile_s[eager]:.1f} s compile over the run's {images:,.0f} images")
        elif self.no_compile:
            parts.append(f"eager: {self.no_compile}")
        else:
            parts.append(f"eager: a run of {images / self.rates[chosen]:.0f} s is too short for a compile to pay")
        note = ""
        if chosen.startswith("fp32") and "bf16" in best and device.type != "cuda":
            note = f"; bf16 is chosen only where at least {BF16_GAIN:g}x faster"
        threads = self.key["threads"]
        return (", ".join(parts) + f" on {where} ({self.key['device']}, {threads} thread{'s' if threads > 1 else ''},"
                f" {self.key['shape']}){note}")


def probe_key(device: torch.device, shape: Shape) -> dict:
    return {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "shape": shape.describe(), "precisions": list(precisions_here(device)),
            "compiler": compiler_missing(device) is None, "version": PROBE_VERSION}


def measure(device: torch.device, shape: Shape, candidates: list[str], cache_dir: Path, rounds: int = 3,
            seconds: float = 0.5, probe: Probe | None = None) -> Probe:
    """Time each candidate ("fp32", "bf16 compiled", ...) on the shape's model, interleaved over ``rounds`` rounds
    of about ``seconds`` each (the median kept), into ``probe`` (a new one by default)."""
    probe = probe or Probe(probe_key(device, shape))
    setups = {}
    for candidate in candidates:
        precision = candidate.split()[0]
        model, optimizer, x = model_for_timing(device, shape.base_channels, shape.image_size, shape.latent_dim,
                                               shape.batch_size)
        timed_steps(model, optimizer, x, precision, 2)  # warm-up: oneDNN's kernels chosen, memory allocated
        step_s = timed_steps(model, optimizer, x, precision, 1)
        terms = None
        if "compiled" in candidate:
            try:
                terms = _compile(model, optimizer, x, precision, step_s, cache_dir, probe)
            except Exception as e:  # noqa: BLE001 - a compiler that fails here: eager, and the reason said
                probe.no_compile = f"torch.compile failed here ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                continue
        steps = max(2, math.ceil(seconds / max(step_s, 1e-4)))
        setups[candidate] = (model, optimizer, x, precision, terms or batch_terms, steps)
    samples: dict[str, list[float]] = {c: [] for c in setups}
    for _ in range(rounds):
        for candidate, (model, optimizer, x, precision, terms, steps) in setups.items():
            samples[candidate].append(steps * len(x) / timed_steps(model, optimizer, x, precision, steps, terms))
    probe.rates.update({c: statistics.median(s) for c, s in samples.items()})
    probe.measured = time.strftime("%Y-%m-%d %H:%M:%S")
    return probe


def _compile(model, optimizer, x, precision: str, step_s: float, cache_dir: Path, probe: Probe):
    """Compile the step for ``precision`` and time what a new process pays for it once the kernels are cached:
    importing the compiler (timed where this process has not imported it yet) and compiling again from the cache."""
    if "torch._inductor.compile_fx" not in sys.modules:
        started = time.perf_counter()
        importlib.import_module("torch._inductor.compile_fx")  # what a new process imports at its first compile

        probe.compile_s["import"] = time.perf_counter() - started
    terms = compiled_terms(cache_dir)
    timed_steps(model, optimizer, x, precision, 2, terms)  # compiles, or loads the cached kernels
    torch._dynamo.reset()  # forget the compiled code in this process; the cache on disk stays
    again = timed_steps(model, optimizer, x, precision, 1, terms)
    probe.compile_s[precision] = probe.compile_s.get("import", 0.0) + max(0.0, again - step_s)
    return terms


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
    if cfg.precision != "auto" and compiled is not None:
        return Choice(cfg.precision, compiled, "as asked")
    shape, cache = Shape.of(cfg), Path(cache_dir or default_cache_dir())
    key = probe_key(device, shape)
    record = cache / "speed" / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
    with locked(cache / "speed" / ".lock", "the training-speed probe"):  # two probes at once would time each other
        probe = _read(record, key)
        precisions = [p for p in key["precisions"] if cfg.precision in ("auto", p)] or [cfg.precision]
        changed = [p for p in precisions if p not in probe.rates]
        if changed:
            measure(device, shape, changed, cache / "inductor", probe=probe)
        eager_s = min(images / probe.rates[p] for p in precisions)
        if compiled is not False and key["compiler"] and probe.no_compile is None and eager_s >= COMPILE_WORTH_S:
            wanted = [f"{p} compiled" for p in precisions if f"{p} compiled" not in probe.rates]
            if wanted:  # measured again with the eager candidates, side by side
                measure(device, shape, list(precisions) + wanted, cache / "inductor", probe=probe)
                changed += wanted
        if changed:
            try:
                write_atomic(record, json.dumps(asdict(probe), indent=1).encode())
            except OSError:
                pass  # a cache that cannot be written: the choice holds for this command, and is measured again
        if compiled is None and not key["compiler"]:
            probe.no_compile = compiler_missing(device)
        return probe.choose(images, device, cfg.precision, compiled)


def _read(record: Path, key: dict) -> Probe:
    """The recorded probe for ``key``, or a new empty one (a damaged or foreign record is measured again)."""
    try:
        data = json.loads(record.read_text())
        if data.get("key") == key:
            return Probe(**data)
    except (OSError, ValueError, TypeError):
        pass
    return Probe(key)
