"""The report's runs: trained (or reused) for every run of its sweep, and measured, in one call for report.ipynb."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import OneSentenceError
from .measure import measure_run
from .params import check_report, project_path, run_config
from .store import Run, Setting
from .sweep import RunSpec, Sweep
from .lookup import existing_config, existing_precisions, finished_run
from .train import fit


@dataclass
class Report:
    """What report.ipynb shows. ``runs``, ``sigma_run`` and ``measurements``: the main seed at the main latent
    size (Q2-Q8's figures). ``by_seed``: every seed's measurements of each setting at the main latent size,
    the main seed first; ``curves``: their validation −ELBO after each epoch, in the same order. ``by_latent`` and ``latent_runs``: KL weight 1 (fixed decoder) at each latent size,
    every seed's measurements and the main seed's run."""

    sweep: Sweep
    runs: dict[float, Run]
    sigma_run: Run | None
    measurements: dict[Setting, dict]
    by_seed: dict[Setting, list[dict]]
    curves: dict[Setting, list[list[float]]]
    by_latent: dict[int, list[dict]]
    latent_runs: dict[int, Run]

    @property
    def three(self) -> list[Run]:
        """The assignment's runs, in its order: KL weight 1, 100, 0."""
        return [self.runs[1.0], self.runs[100.0], self.runs[0.0]]


class RunsMissing(OneSentenceError, RuntimeError):
    """Runs of the report that the sweep has not trained, where the report may not train them itself."""


def load_report(kl_weights: list[float], sigma_vae: bool = True, runs_dir: str = "runs", device: str = "auto",
                seeds: list[int] | None = None, latent_dims: list[int] | None = None, extra_seeds: list[int] = (),
                train_missing: bool = True, **settings) -> Report:
    """Train or reuse every run of the sweep (:class:`~vaehelpers.sweep.Sweep`) and measure each (a run's stored
    measurements are reused). ``seeds`` and ``latent_dims`` default to ``settings``' seed and latent_dim.

    ``train_missing`` False (the build, after its executor trained the runs): every run is found by its identity
    (a run of precision "auto" in whichever precision it was trained, :func:`~vaehelpers.lookup.finished_run`)
    and none is trained here; missing ones raise :class:`RunsMissing`, naming them."""
    sweep, settings = Sweep.of(kl_weights, sigma_vae, seeds, latent_dims, extra_seeds, **settings)
    check_report(list(sweep.kl_weights), device, seed=sweep.seed, latent_dim=sweep.latent_dim, **settings)
    runs: dict[RunSpec, Run] = {}
    missing: list[str] = []
    for spec in sweep.runs():
        cfg = run_config(kl_weight=spec.kl_weight, likelihood=spec.likelihood, seed=spec.seed,
                         latent_dim=spec.latent_dim, **settings)
        if train_missing:
            runs[spec] = fit(cfg, runs_dir=project_path(runs_dir), device=device, progress="epochs")
        elif (done := finished_run(cfg, project_path(runs_dir), data := cfg.load_images())) is not None:
            runs[spec] = done
        elif cfg.precision == "auto" and existing_config(cfg, project_path(runs_dir), data).precision == "auto" and \
                len(existing_precisions(cfg, project_path(runs_dir), data)) == 2:
            # finished in both precisions (bench --compare-precision trains both): the one "auto" chooses here,
            # which fit finds finished and trains nothing for
            runs[spec] = fit(cfg, runs_dir=project_path(runs_dir), device=device, progress="epochs")
        else:
            missing.append(spec.label)
    if missing:
        raise RunsMissing(f"{len(missing)} of {len(sweep.runs())} runs of the report are not trained under "
                          f"{project_path(runs_dir)} ({'; '.join(missing)}), and the report trains none itself: "
                          "`python -m vaehelpers report` with the same options trains them (here or in Slurm).")
    measured = {spec: measure_run(run, device=device) for spec, run in runs.items()}

    main = {spec: run for spec, run in runs.items() if spec.seed == sweep.seed and spec.latent_dim == sweep.latent_dim}
    by_weight = {spec.kl_weight: run for spec, run in main.items() if spec.likelihood == "fixed"}
    sigma_run = next((run for spec, run in main.items() if spec.likelihood == "sigma-vae"), None)
    ordered = sorted(main, key=lambda spec: (spec.likelihood != "fixed", spec.kl_weight))
    by_seed: dict[Setting, list[dict]] = {}
    curves: dict[Setting, list[list[float]]] = {}
    for spec in [*ordered, *(s for s in runs if s.latent_dim == sweep.latent_dim and s not in main)]:
        by_seed.setdefault(Setting(spec.likelihood, spec.kl_weight), []).append(measured[spec])
        curves.setdefault(Setting(spec.likelihood, spec.kl_weight), []).append(runs[spec].history["val_neg_elbo"])
    weight1 = [spec for spec in runs if spec.likelihood == "fixed" and spec.kl_weight == 1.0]
    by_latent = {d: [measured[s] for s in weight1 if s.latent_dim == d] for d in sweep.latent_dims}
    latent_runs = {d: runs[next(s for s in weight1 if s.latent_dim == d and s.seed == sweep.seed)]
                   for d in sweep.latent_dims}
    return Report(sweep, by_weight, sigma_run, {runs[s].setting: measured[s] for s in ordered}, by_seed, curves, by_latent,
                  latent_runs)
