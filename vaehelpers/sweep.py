"""What a sweep trains: the report's runs (KL weights × seeds × latent sizes, and the σ-VAE), each one execution
of ``notebooks/run.ipynb``, and when a run is finished. Where they run: :mod:`vaehelpers.local` (worker processes
here) or :mod:`vaehelpers.slurm` (a Slurm job array); how one executes: :mod:`vaehelpers.execute`.

Whichever ran it, a run is finished when its executed notebook ran the current ``run.ipynb`` with
the same parameters, without error, to a run folder holding its checkpoint (:func:`up_to_date`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import OneSentenceError
from .objective import Likelihood
from .params import ASSIGNMENT_WEIGHTS, REPORT_WEIGHTS, PROJECT, ParameterError

NOTEBOOKS = PROJECT / "notebooks"
Executor = Literal["local", "slurm"]


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

    @classmethod
    def of(cls, kl_weights, sigma_vae: bool = True, seeds=None, latent_dims=None, extra_seeds=(),
           **settings) -> tuple[Sweep, dict]:
        """The sweep of a report's parameters (``seeds`` and ``latent_dims`` default to ``settings``' seed and
        latent_dim), and the settings every run shares (``settings`` without those two)."""
        sweep = cls(tuple(float(w) for w in kl_weights), tuple(seeds or (settings.get("seed", 0),)),
                    tuple(latent_dims or (settings.get("latent_dim", 20),)), sigma_vae, tuple(extra_seeds))
        return sweep, {k: v for k, v in settings.items() if k not in ("seed", "latent_dim")}

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
        three = [f"{w:g}" for w in ASSIGNMENT_WEIGHTS if w in self.kl_weights]
        assignment = " and ".join([", ".join(three[:-1]), three[-1]] if len(three) > 1 else three)
        more = (f", and seed{'s' if len(extra) > 1 else ''} {', '.join(map(str, extra))} of weight"
                f"{'s' if len(three) > 1 else ''} {assignment}" if extra else "")
        dims = f"latent size{'s' if len(self.latent_dims) > 1 else ''} {', '.join(map(str, self.latent_dims))}"
        return f"KL weights {weights}; {seeds}{more}; {dims}"


@dataclass
class RunNotebook:
    """One run still to train: its notebook's parameters and where the executed notebook goes."""

    spec: RunSpec
    out: Path
    parameters: dict
    source: Path = NOTEBOOKS / "run.ipynb"

    @property
    def name(self) -> str:
        return self.out.name


Task = RunNotebook
""":class:`RunNotebook`'s name in earlier versions, kept: the Slurm pickles they queued name ``vaehelpers.sweep.Task``."""


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


class SweepFailed(OneSentenceError, RuntimeError):
    """Some runs of a sweep failed; the others finished. The message names each with its error and log."""


def estimate_seconds(tasks: int, epochs: int, train_images: int, rate: float, workers: int) -> float:
    """Wall seconds to train ``tasks`` runs ``workers`` at a time at ``rate`` images/s each: training steps,
    plus a fifth for validation, snapshots and measurements, plus 15 s per run to start its kernel."""
    per_run = epochs * train_images / rate * 1.2 + 15
    return math.ceil(tasks / workers) * per_run
