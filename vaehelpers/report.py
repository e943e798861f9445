"""The report's runs: trained (or reused) for every setting, and measured, in one call for report.ipynb."""

from __future__ import annotations

from dataclasses import dataclass

from .measure import measure_run
from .objective import Likelihood
from .params import check_report, project_path
from .store import Run, Setting
from .train import fit


def report_runs(kl_weights: list[float], runs_dir: str = "runs", device: str = "auto", likelihood: Likelihood = "fixed",
                **settings) -> dict[float, Run]:
    """The report's runs, one per KL weight (trained only where no finished run exists), after :func:`check_report`."""
    configs = check_report(kl_weights, device, likelihood, **settings)
    return {w: fit(cfg, runs_dir=project_path(runs_dir), device=device, progress="epochs") for w, cfg in configs.items()}


def measure_runs(runs: list[Run], device: str = "cpu") -> dict[Setting, dict]:
    """:func:`measure_run` for each run (reused from the run folders where stored), by setting."""
    return {run.setting: measure_run(run, device=device) for run in runs}


@dataclass
class Report:
    """What report.ipynb shows: the runs by KL weight, the σ-VAE run (or None), and every measurement."""

    runs: dict[float, Run]
    sigma_run: Run | None
    measurements: dict[Setting, dict]

    @property
    def three(self) -> list[Run]:
        """The assignment's runs, in its order: KL weight 1, 100, 0."""
        return [self.runs[1.0], self.runs[100.0], self.runs[0.0]]


def load_report(kl_weights: list[float], sigma_vae: bool = True, runs_dir: str = "runs", device: str = "auto",
                **settings) -> Report:
    """Train or reuse every run of the report and measure each."""
    runs = report_runs(kl_weights, runs_dir, device, **settings)
    sigma_run = report_runs([1.0], runs_dir, device, likelihood="sigma-vae", **settings)[1.0] if sigma_vae else None
    ordered = [runs[w] for w in sorted(runs)] + ([sigma_run] if sigma_run else [])
    return Report(runs, sigma_run, measure_runs(ordered, device))
