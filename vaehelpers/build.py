"""The one-command build: ``build_report`` runs ``notebooks/run.ipynb`` once per KL weight with
papermill, then ``notebooks/report.ipynb``, and exports the executed report to a self-contained
HTML file (figures embedded, mathematics as MathML, no script from a CDN) and, where LaTeX is
installed, to PDF through nbconvert's LaTeX route. Code is hidden in both. Only the command line
imports this module; the notebooks it runs import :mod:`vaehelpers.params`, :mod:`vaehelpers.report`
and :mod:`vaehelpers.text`.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from .data import parse_builtin
from .files import write_atomic
from .params import PROJECT, REPORT_WEIGHTS, ParameterError, check_report, check_space

NOTEBOOKS = PROJECT / "notebooks"
TEMPLATES = Path(__file__).resolve().parent / "templates"


RUN_NOTEBOOK_BYTES = 2_000_000
REPORT_BYTES = 30_000_000
"""Room kept for each executed run notebook and for report.ipynb, .html and .pdf together: about 4× what a
report writes (measured on the tests' tiny report: 0.41-0.42 MB a run notebook, 6.7 MB the three report files),
as figures vary with the data."""

LOCAL_KERNEL = {"KernelManager": {"transport": "ipc"}}
"""The notebooks' kernels talk to papermill over Unix sockets in Jupyter's private runtime folder, not over TCP
ports: on one machine there is no network to encrypt, and ipykernel's warning that a TCP kernel runs without
encryption does not apply (``make lab`` starts JupyterLab's kernels the same way)."""


def execute_notebook(source: Path, out: Path, **kwargs):
    """``papermill.execute_notebook`` with a local (IPC) kernel."""
    import papermill
    from traitlets.config import Config

    return papermill.execute_notebook(source, out, config=Config(LOCAL_KERNEL), **kwargs)


_PAPERMILL_CHATTER = re.compile(r"^(Executing|Ending) Cell|^<Figure size|^(Input|Output) Notebook|^Executing notebook")


def _show_notebook_output() -> None:
    """Let papermill stream what the notebooks print (epochs and losses), without its own chatter."""
    logger = logging.getLogger("papermill")
    if not any(getattr(h, "_vaehelpers", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(lambda record: not _PAPERMILL_CHATTER.search(record.getMessage().strip()))
        handler._vaehelpers = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)


def build_report(out_dir: str | Path = "reports", runs_dir: str | Path = "runs", device: str = "auto",
                 kl_weights: tuple[float, ...] = REPORT_WEIGHTS, sigma_vae: bool = True, notebooks: Path = NOTEBOOKS,
                 **settings) -> dict[str, Path | None]:
    """Run ``run.ipynb`` per KL weight (and once as a σ-VAE), execute ``report.ipynb``, export HTML and PDF.

    ``settings`` are :class:`RunConfig` fields shared by every run (data, epochs, lr, ...).
    Returns the paths written; ``pdf`` is None where LaTeX is missing.
    """
    out, runs_path = Path(out_dir).resolve(), Path(runs_dir).resolve()
    try:
        if "data" in settings and parse_builtin(settings["data"]) is None:  # relative to the caller, not the project
            settings = dict(settings, data=str(Path(settings["data"]).expanduser().resolve()))
    except ValueError as e:
        raise ParameterError(str(e)) from None
    configs = list(check_report(list(kl_weights), device, **settings).values())  # everything, before any training
    if sigma_vae:
        configs += check_report([1.0], device, likelihood="sigma-vae", **settings).values()
    check_space(configs, device, runs_path, out, len(configs) * RUN_NOTEBOOK_BYTES + REPORT_BYTES)
    _show_notebook_output()
    common = dict(settings, device=device, runs_dir=str(runs_path))
    weights = [float(w) for w in kl_weights]
    jobs = [(w, "fixed", f"run-kl{w:g}.ipynb") for w in weights]
    jobs += [(1.0, "sigma-vae", "run-kl1-sigma-vae.ipynb")] if sigma_vae else []
    for i, (w, likelihood, name) in enumerate(jobs, 1):
        what = f"KL weight {w:g}" + (", σ-VAE" if likelihood == "sigma-vae" else "")
        parameters = dict(common, kl_weight=w, likelihood=likelihood)
        if _up_to_date(out / name, notebooks / "run.ipynb", parameters):
            print(f"== run {i} of {len(jobs)}, {what}: {out / name} is up to date", flush=True)
            continue
        print(f"== run {i} of {len(jobs)}, {what}: notebooks/run.ipynb -> {out / name}", flush=True)
        execute_notebook(notebooks / "run.ipynb", out / name, log_output=True, progress_bar=False,
                         parameters=parameters)
    print(f"== report: notebooks/report.ipynb -> {out / 'report.ipynb'}", flush=True)
    execute_notebook(notebooks / "report.ipynb", out / "report.ipynb", progress_bar=False,
                     parameters=dict(common, kl_weights=weights, sigma_vae=sigma_vae))
    html = export_html(out / "report.ipynb", out / "report.html")
    pdf = export_pdf(out / "report.ipynb", out / "report.pdf")
    return {"html": html, "pdf": pdf, "notebook": out / "report.ipynb"}


def _up_to_date(executed: Path, source: Path, parameters: dict) -> bool:
    """Whether ``executed`` ran the current ``source`` with these parameters, without error, to a finished run.

    Such a notebook would only reload its finished run and redraw the same figures.
    """
    import nbformat

    if not executed.exists() or executed.stat().st_mtime < source.stat().st_mtime:
        return False
    nb = nbformat.read(executed, as_version=4)
    papermill_info = nb.metadata.get("papermill", {})
    if papermill_info.get("parameters") != parameters or papermill_info.get("exception"):
        return False
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    folder = re.search(r"^run folder: (.+)$", printed, re.M)  # the run it drew must still be there
    return folder is not None and (Path(folder.group(1)) / "checkpoint.pt").exists()


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
