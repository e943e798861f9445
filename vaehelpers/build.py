"""The one-command build: ``build_report`` runs ``notebooks/run.ipynb`` once per run of the report's
sweep with papermill (:mod:`vaehelpers.sweep`; :mod:`vaehelpers.local` here or :mod:`vaehelpers.slurm` in Slurm), then ``notebooks/report.ipynb``, and exports the executed report to a self-contained
HTML file (figures embedded, mathematics as MathML, no script from a CDN) and, where LaTeX is
installed, to PDF through nbconvert's LaTeX route. Code is hidden in both. Only the command line
imports this module; the notebooks it runs import :mod:`vaehelpers.params`, :mod:`vaehelpers.report`,
:mod:`vaehelpers.tables` and :mod:`vaehelpers.discussion`.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .data import parse_builtin
from .files import locked, write_atomic
from .params import ParameterError, check_report, check_space, run_config
from .speed import Choice
from .step import training_rate
from .store import RunConfig
from .execute import execute_notebook, show_notebook_output
from .local import local_workers, run_local
from .slurm import SlurmOptions, run_slurm
from .sweep import NOTEBOOKS, Executor, RunSpec, Sweep, SweepFailed, RunNotebook, estimate_seconds, up_to_date
from .devices import resolve_device
from .lookup import finished_run
from .train import decide_step
TEMPLATES = Path(__file__).resolve().parent / "templates"


RUN_NOTEBOOK_BYTES = 2_000_000
REPORT_BYTES = 30_000_000
"""Room kept for each executed run notebook and for report.ipynb, .html and .pdf together: about 4× what a
report writes (measured on the tests' tiny report: 0.41-0.42 MB a run notebook, 6.7 MB the three report files),
as figures vary with the data."""


@dataclass
class Training:
    """How a report's runs train: where (``executor``, ``device``), how many at once, how often they write their
    files and whether their step is compiled. The sweep (:class:`~vaehelpers.sweep.Sweep`) says which runs."""

    executor: Executor = "local"  # local: worker processes here; slurm: one Slurm job array
    device: str = "auto"
    workers: int | None = None  # local: runs trained at once (None: from the cores and the model's size)
    threads: int | None = None  # local: threads per run (None: the cores shared among the workers)
    compiled: bool | None = None  # compile every run's step (True), never (False), or where it pays (None)
    checkpoint_every: float | None = None  # seconds between two writes of a run's files (None: 30)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    @property
    def here(self) -> str:
        """The device this machine checks and plans on: with Slurm a login node, which trains nothing, its CPU."""
        return "cpu" if self.executor == "slurm" else self.device

    @property
    def on_task(self) -> str:
        """The device a run notebook trains on: with Slurm, tasks given no GPU train on their node's CPU (not
        "auto", which would stop at a GPU the task may not use)."""
        return ("cpu" if self.executor == "slurm" and self.device == "auto" and not self.slurm.gpus_per_task
                else self.device)

    def share(self, runs: int, cfg: RunConfig) -> tuple[int, int]:
        """Local: how many of ``runs`` notebooks execute at once, and with how many threads each (0: all)."""
        auto_workers, auto_threads = local_workers(max(1, runs), cfg.base_channels, cfg.image_size, self.device)
        workers = min(self.workers or auto_workers, max(1, runs))
        return workers, self.threads or (auto_threads if workers > 1 else 0)


def build_report(sweep: Sweep, settings: dict, training: Training | None = None, out_dir: str | Path = "reports",
                 runs_dir: str | Path = "runs", pdf: bool = True,
                 notebooks: Path = NOTEBOOKS) -> dict[str, Path | None] | None:
    """Train the sweep's runs (``run.ipynb`` once per run, as ``training`` says), execute ``report.ipynb``, export
    HTML and, with ``pdf`` and where LaTeX is installed, PDF.

    ``settings`` are :class:`RunConfig` fields every run shares (data, epochs, lr, ...; :meth:`Sweep.of`). Here the
    precision ("auto") and the step are decided once (:func:`~vaehelpers.train.decide_step`) and passed to each run
    notebook; with Slurm, each task decides on its node, and the report finds the runs the tasks trained.
    Returns the paths written (``pdf`` None where LaTeX is missing or not asked for), or None where Slurm tasks were
    submitted without waiting. Raises :class:`~vaehelpers.sweep.SweepFailed` naming the runs that failed.
    """
    training = training or Training()
    out, runs_path = Path(out_dir).resolve(), Path(runs_dir).resolve()
    settings = _data_resolved(settings)
    for d in sweep.latent_dims:  # everything checked before any training: the settings, device and data
        check_report(list(sweep.kl_weights), training.here, seed=sweep.seed, latent_dim=d, **settings)
    specs = sweep.runs()
    configs = {spec: run_config(kl_weight=spec.kl_weight, likelihood=spec.likelihood, seed=spec.seed,
                                latent_dim=spec.latent_dim, **settings) for spec in specs}
    main = configs[specs[0]]
    dev = resolve_device(training.here)  # checked by check_report; resolved once, here
    data = main.load_images()
    to_train = [spec for spec in specs if finished_run(configs[spec], runs_path, data) is None]
    workers, threads = training.share(len(to_train), main) if training.executor == "local" else (1, 0)
    choices = _decided(configs, dev, runs_path, threads, training)
    configs = {spec: replace(cfg, precision=choices[spec].precision) if choices else cfg
               for spec, cfg in configs.items()}
    check_space(list(configs.values()), runs_path, out, len(configs) * RUN_NOTEBOOK_BYTES + REPORT_BYTES)
    common = dict(settings, device=training.on_task, runs_dir=str(runs_path))
    common.update({} if training.checkpoint_every is None else {"checkpoint_every": float(training.checkpoint_every)})
    tasks = [RunNotebook(spec, out / sweep.notebook_name(spec),
                         dict(common, kl_weight=spec.kl_weight, likelihood=spec.likelihood, seed=spec.seed,
                              latent_dim=spec.latent_dim, **_passed(spec, choices, training)), notebooks / "run.ipynb")
             for spec in specs]
    if len({c.precision for c in choices.values()}) == 1:  # the report finds the runs in the precision decided
        common["precision"] = choices[specs[0]].precision
    todo = [t for t in tasks if not up_to_date(t.out, t.source, t.parameters)]
    for t in tasks:
        if t not in todo:
            print(f"== {t.spec.label}: {t.out} is up to date", flush=True)
    show_notebook_output()
    if training.executor == "local" and todo and not to_train:  # notebooks to execute again, nothing to train
        workers, threads = training.share(len(todo), main)
    trained = [t for t in todo if t.spec in to_train]
    choice = next((choices[t.spec] for t in trained if t.spec in choices), None)
    print(plan(sweep, tasks, todo, main, training.executor, workers, threads, dev, choice, len(trained)), flush=True)
    if todo and not _execute(todo, training, runs_path, workers, threads):
        return None
    return render(out, notebooks, dict(common, device=training.here, train_missing=False,
                                       kl_weights=list(sweep.kl_weights), sigma_vae=sweep.sigma_vae,
                                       seeds=list(sweep.seeds), latent_dims=list(sweep.latent_dims),
                                       extra_seeds=list(sweep.extra_seeds)), pdf)


def _data_resolved(settings: dict) -> dict:
    """``settings`` with a data path made absolute: relative to the caller, not the project the notebooks run in."""
    try:
        if "data" in settings and parse_builtin(settings["data"]) is None:
            return dict(settings, data=str(Path(settings["data"]).expanduser().resolve()))
    except ValueError as e:
        raise ParameterError(str(e)) from None
    return settings


def _decided(configs: dict[RunSpec, RunConfig], dev: torch.device, runs_dir: Path, threads: int,
             training: Training) -> dict[RunSpec, Choice]:
    """Local: each run's precision and step (:func:`decide_steps`); with Slurm each task decides on its node."""
    if training.executor != "local":
        return {}
    try:
        return decide_steps(configs, dev, runs_dir, threads, training.compiled)
    except ValueError as e:  # compiled asked for where no compiler is
        raise ParameterError(str(e)) from None


def _passed(spec: RunSpec, choices: dict[RunSpec, Choice], training: Training) -> dict:
    """What a run notebook is told of how to train, beyond its settings: the decision made here, or with Slurm
    only a ``compiled`` asked for (each task decides the rest on its node)."""
    if spec in choices:
        return {"precision": choices[spec].precision, "compiled": choices[spec].compiled}
    return {"compiled": training.compiled} if training.executor == "slurm" and training.compiled is not None else {}


def _execute(todo: list[RunNotebook], training: Training, runs_dir: Path, workers: int, threads: int) -> bool:
    """Execute the run notebooks of ``todo`` where ``training`` says; False where Slurm tasks were submitted without
    waiting. Raises :class:`SweepFailed` naming each run that failed."""
    if training.executor == "slurm":
        failures, ended = run_slurm(todo, runs_dir, training.slurm)
        if not ended:
            return False
    else:
        failures = run_local(todo, workers, threads)
    if failures:
        others = ", the others finished" if len(failures) < len(todo) else ""
        raise SweepFailed(f"{len(failures)} of {len(todo)} runs failed{others}: " + "; ".join(failures))
    return True


def render(out: Path, notebooks: Path, parameters: dict, pdf: bool) -> dict[str, Path | None]:
    """Execute ``report.ipynb`` into ``out`` and export it. It trains nothing (every run was trained before: a
    missing one is an error) and measures nothing a run notebook measured; after Slurm it needs no GPU.

    One command renders into ``out`` at a time. One that waited for another's render of the same parameters (two
    identical commands sharing one Slurm job array, say) reuses what that one wrote, as its stamp
    (``.report.done``, written last) says, exporting the PDF itself where that one did not."""
    paths = {"html": out / "report.html", "pdf": out / "report.pdf", "notebook": out / "report.ipynb"}
    stamp, asked = out / ".report.done", time.time()
    with locked(out / ".report.lock", f"the report in {out}") as waited:
        done = _rendered_since(stamp, notebooks / "report.ipynb", parameters, asked) if waited else None
        if done is not None:
            print(f"== report: another command rendered {paths['notebook']} from the same runs while this one "
                  "waited: reused", flush=True)
            written = None if not pdf else paths["pdf"] if done["pdf"] else export_pdf(paths["notebook"], paths["pdf"])
            return dict(paths, pdf=written)
        stamp.unlink(missing_ok=True)
        print(f"== report: notebooks/report.ipynb -> {paths['notebook']}", flush=True)
        execute_notebook(notebooks / "report.ipynb", paths["notebook"], progress_bar=False, parameters=parameters)
        export_html(paths["notebook"], paths["html"])
        written = export_pdf(paths["notebook"], paths["pdf"]) if pdf else None
        if not pdf and paths["pdf"].exists():  # an earlier build's, which no longer matches the HTML
            paths["pdf"].unlink()
            print(f"PDF not written (--no-pdf); {paths['pdf']} of an earlier build removed", flush=True)
        elif not pdf:
            print("PDF not written (--no-pdf)", flush=True)
        write_atomic(stamp, json.dumps({"parameters": parameters, "pdf": written is not None, "at": time.time()},
                                       default=str).encode())
    return dict(paths, pdf=written)


def _rendered_since(stamp: Path, source: Path, parameters: dict, since: float) -> dict | None:
    """What the render ``stamp`` says, where a render of the current ``source`` with ``parameters`` ended after
    ``since`` (its notebook and HTML still there); else None."""
    try:
        done = json.loads(stamp.read_text())
        fresh = done["at"] >= max(since, source.stat().st_mtime)
        same = done["parameters"] == json.loads(json.dumps(parameters, default=str))
        there = all((stamp.parent / name).exists() for name in ("report.ipynb", "report.html"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return done if fresh and same and there else None


def decide_steps(configs: dict[RunSpec, RunConfig], dev: torch.device, runs_dir: Path, threads: int,
                 compiled: bool | None) -> dict[RunSpec, Choice]:
    """Each run's precision and step, decided once for the command with the threads each run will have (the
    speed probe measures at most once per machine and shape; :func:`~vaehelpers.train.decide_step`)."""
    data = next(iter(configs.values())).load_images()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return {spec: decide_step(cfg, dev, data, runs_dir, compiled=compiled) for spec, cfg in configs.items()}
    finally:
        torch.set_num_threads(previous)


def plan(sweep: Sweep, tasks: list[RunNotebook], todo: list[RunNotebook], cfg: RunConfig, executor: Executor,
         workers: int, threads: int, dev: torch.device, choice: Choice | None = None, training: int | None = None) -> str:
    """What a sweep will do, before it does it: its runs, how many are finished, how they train (``choice``, the
    decision the runs get) and how long the others take at the rate measured here. ``training``: how many of the
    ``todo`` notebooks have a run to train (default all); the others only execute again for a finished run."""
    training = len(todo) if training is None else training
    again = len(todo) - training
    text = (f"== plan: {len(tasks)} runs ({sweep.describe()}); {len(tasks) - training} finished, {training} to train"
            + (f" ({again} notebook{'s' if again > 1 else ''} of finished runs executed again, here or with the "
               "others)" if again else ""))
    if not training:
        return text + "." + _seeds_said(sweep)
    images = round(len(cfg.load_images()) * (1 - cfg.val_fraction))
    if executor == "slurm" or choice is None or not choice.rate:
        precision = choice.precision if choice else cfg.precision if cfg.precision != "auto" else "fp32"
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or previous)
        try:
            rate = training_rate(dev, cfg.base_channels, precision, min(cfg.batch_size, 100), steps=3, warmup=1,
                                 image_size=cfg.image_size, latent_dim=cfg.latent_dim)
        finally:
            torch.set_num_threads(previous)
    else:
        precision, rate = choice.precision, choice.rate
    if executor == "slurm":
        seconds = estimate_seconds(1, cfg.epochs, images, rate, 1)
        return (text + f" in Slurm, each task choosing its precision and step on its node; {precision} training "
                f"measured {rate:,.0f} images/s on this machine's {dev}, so about {seconds / 60:.0f} min per task at "
                "its speed (the nodes' may differ)." + _seeds_said(sweep))
    where = (f"{workers} at a time with {threads} thread{'s' if threads > 1 else ''} each" if workers > 1
             else "one at a time")
    seconds = estimate_seconds(training, cfg.epochs, images, rate, workers) + math.ceil(again / workers) * 15
    how = f"training step {choice.describe()}" if choice else f"{precision} training measured {rate:,.0f} images/s"
    return text + f" here, {where}; {how}; so about {seconds / 60:.0f} min." + _seeds_said(sweep)


def _seeds_said(sweep: Sweep) -> str:
    """The plan's sentence on what the discussion's comparisons will rest on: the seeds of weights 1, 100 and 0
    (the main seeds and the extra ones), and with one seed, that its comparisons go untested and what fixes it."""
    n, others = len(sweep.all_seeds()), len(sweep.seeds)
    if n == 1:
        two = ",".join(str(s) for s in range(sweep.seed + 1, sweep.seed + 3))
        return (" Each setting has one seed, so the discussion's comparisons will read 'one seed: not tested' "
                f"(--extra-seeds {two} trains two more seeds of weights 1, 100 and 0).")
    more = [w for w in sweep.kl_weights if w not in (1.0, 100.0, 0.0)] or sweep.sigma_vae
    return (f" The discussion compares weights 1, 100 and 0 on {n} seeds each"
            + (f", the other settings on {others}" + (" (theirs will read 'one seed: not tested')" if others == 1 else "")
               if more and others != n else "") + ".")


def _to_mathml(markdown: str) -> str:
    """Replace $$…$$ and $…$ in Markdown with MathML, which browsers render without any script."""
    from latex2mathml.converter import convert

    markdown = re.sub(r"\$\$(.+?)\$\$", lambda m: convert(m.group(1), display="block"), markdown, flags=re.S)
    return re.sub(r"(?<![\\$])\$([^$\n]+?)\$", lambda m: convert(m.group(1)), markdown)


def _clean(nb, mathml: bool):
    """Drop parameter cells and stderr streams, and widgets in favour of their still images
    (a static page has no kernel to drive them). For HTML turn LaTeX maths into MathML; for
    LaTeX drop the opening "# title" line, which LaTeX's own title page shows."""
    nb.metadata.pop("widgets", None)
    cells = []
    first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    if first is not None and not mathml and first.source.startswith("# "):
        first.source = first.source.split("\n", 1)[1] if "\n" in first.source else ""
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if {"parameters", "injected-parameters", "remove-cell"} & set(tags):
            continue
        if cell.cell_type == "markdown" and mathml:
            cell.source = _to_mathml(cell.source)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
            for o in cell.outputs:
                o.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
                if mathml and "text/markdown" in o.get("data", {}):
                    o.data["text/markdown"] = _to_mathml(o.data["text/markdown"])
        cells.append(cell)
    nb.cells = cells
    return nb


def export_html(notebook: Path, html: Path) -> Path:
    """A self-contained HTML report: code hidden, figures embedded, no CDN scripts."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = _clean(nbformat.read(notebook, as_version=4), mathml=True)
    exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(TEMPLATES)])
    exporter.exclude_input = exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    write_atomic(html, body.encode("utf-8"))
    return html


def export_pdf(notebook: Path, pdf: Path) -> Path | None:
    """The report as PDF through nbconvert's LaTeX route, or None (with one line saying why)."""
    missing = [tool for tool in ("xelatex", "pandoc") if shutil.which(tool) is None]
    if missing:
        print(f"PDF skipped: {' and '.join(missing)} not found; `make latex` installs LaTeX (the packages are "
              "listed in the Makefile). The HTML report is complete.", flush=True)
        return None
    import nbformat
    from nbconvert import PDFExporter

    nb = _clean(nbformat.read(notebook, as_version=4), mathml=False)
    exporter = PDFExporter(template_name="report_latex", extra_template_basedirs=[str(TEMPLATES)])
    exporter.exclude_input = exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": nb.metadata.get("title", "report")}})
    write_atomic(pdf, body)
    return pdf
