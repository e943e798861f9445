"""The assignment report: notebook parameters, generated text, and the one-command build.

``build_report`` runs ``notebooks/run.ipynb`` once per KL weight with papermill, then
``notebooks/report.ipynb``, and exports the executed report to a self-contained HTML
file (figures embedded, mathematics as MathML, no script from a CDN) and, where LaTeX is
installed, to PDF through nbconvert's LaTeX route. Code is hidden in both.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import fields
from pathlib import Path

import torch

from .data import load_images, parse_builtin
from .measure import measure_run
from .model import layer_table
from .store import Run, RunConfig
from .train import check_split, fit, resolve_device

PROJECT = Path(__file__).resolve().parent.parent
NOTEBOOKS = PROJECT / "notebooks"
TEMPLATES = Path(__file__).resolve().parent / "templates"
ASSIGNMENT_WEIGHTS = (1.0, 100.0, 0.0)
REPORT_WEIGHTS = (1.0, 100.0, 0.0, 0.1, 10.0)
"""The assignment's three weights, then two more for the rate–distortion curve."""
LATEX_PACKAGES = "texlive-xetex texlive-fonts-recommended texlive-plain-generic pandoc fonts-dejavu-core"


def project_path(path: str | Path) -> Path:
    """A notebook's relative path taken from the project folder, not from the kernel's folder.

    JupyterLab starts a kernel in the notebook's own folder (notebooks/), papermill in the
    caller's; anchoring relative paths at the project makes "runs" mean the same in both.
    """
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT / path


class ParameterError(ValueError):
    """A bad notebook parameter. IPython shows it as its one sentence, without a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"ParameterError: {self}"]


_KINDS = {"int": (int, "a whole number"), "float": ((int, float), "a number"), "str": (str, "a string")}


def run_config(**params) -> RunConfig:
    """A :class:`RunConfig` from notebook parameters, or a :class:`ParameterError` naming the bad one."""
    known = {f.name: f for f in fields(RunConfig)}
    for name, value in params.items():
        if name not in known:
            raise ParameterError(f"Unknown parameter {name!r}; the parameters are {', '.join(known)}.")
        wanted = _KINDS.get(known[name].type)  # the field's annotation, as a string
        if wanted and (isinstance(value, bool) or not isinstance(value, wanted[0])):
            raise ParameterError(f"Parameter {name} = {value!r} should be {wanted[1]}.")
    data = str(params.get("data", "builtin"))
    try:
        builtin = parse_builtin(data) is not None
        if not builtin:
            params = dict(params, data=str(project_path(data)))
        config = RunConfig(**params)
    except ValueError as e:
        raise ParameterError(f"Parameter {e}") from None
    if not builtin and not Path(config.data).exists():
        raise ParameterError(f"Parameter data = {data!r} does not exist: give an image folder, an .npz/.npy file, or 'builtin'.")
    return config


def check_device(device: str) -> torch.device:
    """The device a notebook parameter names, or a :class:`ParameterError`."""
    try:
        dev = resolve_device(device)
    except (RuntimeError, TypeError):
        raise ParameterError(f"Parameter device = {device!r} is not a device: use 'auto', 'cpu', 'cuda' or 'mps'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"Parameter device = {device!r} asks for CUDA, but no CUDA GPU is visible: use 'auto' or 'cpu'.")
    return dev


def check_report(kl_weights: list[float], device: str = "auto", likelihood: str = "fixed",
                 **settings) -> dict[float, RunConfig]:
    """Every check a report's runs need, before any of them trains: the weights (1, 100 and 0 with the
    assignment's fixed likelihood), each run's settings, the device, and the data (present, readable, and
    large enough for the validation split). Returns the run configurations by weight, or raises
    :class:`ParameterError` with one sentence."""
    weights = [float(w) for w in kl_weights]
    missing = [f"{w:g}" for w in ASSIGNMENT_WEIGHTS if w not in weights] if likelihood == "fixed" else []
    if missing:
        raise ParameterError(f"Parameter kl_weights = {kl_weights!r} lacks {', '.join(missing)}: the report needs 1, 100 and 0.")
    configs = {w: run_config(kl_weight=w, likelihood=likelihood, **settings) for w in weights}
    check_device(device)
    first = next(iter(configs.values()))
    try:
        check_split(load_images(first.data, first.image_size, seed=first.seed), first)
    except (OSError, ValueError) as e:
        raise ParameterError(str(e)) from None
    return configs


def report_runs(kl_weights: list[float], runs_dir: str = "runs", device: str = "auto", likelihood: str = "fixed",
                **settings) -> dict[float, Run]:
    """The report's runs, one per KL weight (trained only where no finished run exists), after :func:`check_report`."""
    configs = check_report(kl_weights, device, likelihood, **settings)
    return {w: fit(cfg, runs_dir=project_path(runs_dir), device=device, progress="epochs") for w, cfg in configs.items()}


# ---------------------------------------------------------------- generated text for Q1


def _table(header: list[str], rows: list[list], first_width: int = 1) -> str:
    """A Markdown table. ``first_width``: how many times wider the first column is in the PDF
    (pandoc reads relative column widths from the dashes of the separator line)."""
    dashes = ["-" * 4 * first_width] + ["-" * 4] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(dashes) + "|"]
    # Pipes escaped; a minus sign (U+2212), not a hyphen, so that LaTeX does not break "−7,633" after it.
    lines += ["| " + " | ".join(re.sub(r"^-(?=\d)", "−", str(c)).replace("|", "\\|") for c in row) + " |"
              for row in rows]
    return "\n".join(lines)


def preprocessing_markdown(run: Run) -> str:
    """Q1: how the images were obtained and preprocessed, from the run's own record."""
    data, split, size = run.info["data"], run.info["split"], run.config.image_size
    if parse_builtin(run.config.data) is not None:
        origin = (f"The images are the project's built-in procedural face set ({data['images']:,} faces drawn "
                  f"directly at {size}×{size} from independently sampled factors, seed {run.config.seed}), "
                  "so no resizing or cropping was needed.")
    else:
        skipped = (f"; {data['skipped']} entries were skipped: unreadable, corrupt, not images, over 50 megapixels "
                   "or under 8 pixels on a side" if data["skipped"] else "")
        origin = (f"The images come from `{data['source']}` ({data['images']:,} images{skipped}). Each image was "
                  "converted to RGB (transparent pixels composited on white, grey expanded to three channels), "
                  f"centre-cropped to the largest square and resized to {size}×{size} with antialiasing.")
    return (f"{origin} Pixel values were scaled from 0–255 to [0, 1]; the decoder's sigmoid output lies in the "
            f"same range. A seeded random {split['val_fraction']:.0%} of the images ({split['val']:,}) is held out "
            f"for validation; the model trains on the other {split['train']:,}. The whole set is kept in memory "
            "as 8-bit integers and converted to floats one batch at a time.")


def architecture_markdown(run: Run) -> str:
    """Q1: a table of the layers of the trained model with output shapes and parameter counts."""
    rows = [[r["part"], r["layer"], "×".join(map(str, r["output"])), f"{r['parameters']:,}"]
            for r in layer_table(run.model)]
    total = sum(p.numel() for p in run.model.parameters())
    latent = run.config.latent_dim
    return (f"The encoder's last layer outputs {2 * latent} numbers per image: the mean μ and the log-variance "
            f"log σ² of q(z|x), a diagonal Gaussian over {latent} latent dimensions. A code is sampled as "
            "$z = \\mu + \\sigma \\odot \\epsilon$ with $\\epsilon \\sim \\mathcal{N}(0, I)$ and decoded.\n\n"
            + _table(["part", "layer", "output shape", "parameters"], rows)
            + f"\n\nTotal: {total:,} parameters.")


PRECISION_TEXT = {"bf16": "bf16 autocast (weights, optimiser, losses and validation in fp32)", "fp32": "fp32"}


def hyperparameters_markdown(run: Run) -> str:
    cfg, h = run.config, run.history
    rows = [["optimiser", f"Adam, learning rate {cfg.lr:g}"], ["batch size", cfg.batch_size],
            ["epochs", cfg.epochs], ["latent dimensions", cfg.latent_dim], ["image size", f"{cfg.image_size}×{cfg.image_size}"],
            ["channels", f"{run.model.config.channels}"], ["seed", cfg.seed],
            ["device", run.info["device"]], ["precision of training", PRECISION_TEXT[cfg.precision]],
            ["training time (this run)", f"{sum(h['seconds']):.1f} s"]]
    return _table(["setting", "value"], rows)


# ---------------------------------------------------------------- Q8: the discussion, from the runs' numbers


def measure_runs(runs: list[Run], device: str = "cpu") -> dict[str, dict]:
    """:func:`measure_run` for each run (reused from the run folders where stored), by label."""
    return {run.label: measure_run(run, device=device) for run in runs}


def results_table(measurements: dict[str, dict]) -> str:
    """Q8's table: a column per run, every number measured on the validation images."""
    first = next(iter(measurements.values()))
    k, n = first["options"]["k"], first["iwae_images"]
    rows = [
        ("−ELBO (nats per image)", lambda m: f"{m['neg_elbo']:,.1f}"),
        ("−ELBO (bits per dimension)", lambda m: f"{m['bits_per_dim']:.4f}"),
        (f"IWAE bound on −log p(x), k = {k}, {n} images (nats)", lambda m: f"{m['iwae_neg_log_px']:,.1f}"),
        ("rate: KL(q(z|x) ‖ p(z)) (nats)", lambda m: f"{m['rate']:.2f}"),
        ("distortion: Σ(x − x̂)²", lambda m: f"{m['distortion']:.1f}"),
        ("PSNR of reconstructions from μ (dB)", lambda m: f"{m['psnr_db']:.2f}"),
        ("sharpness of reconstructions (real images: 1)", lambda m: f"{m['sharpness_ratio']:.2f}"),
        ("active latent dimensions", lambda m: f"{m['active_units']} of {len(m['kl_per_dim'])}"),
        ("spread of μ over images (prior: 1)", lambda m: f"{m['code_std']:.2f}"),
        ("mean σ of q(z|x) (prior: 1)", lambda m: f"{m['posterior_std']:.2f}"),
        ("KL of aggregate posterior to prior (nats)", lambda m: f"{m['aggregate_kl']:.1f}"),
        (f"MMD², prior samples vs real images (16×16, {first['mmd_images']} each)", lambda m: f"{m['mmd']:.3f}"),
        (f"diversity of prior samples (real images: {first['data_diversity']:.3f})", lambda m: f"{m['sample_diversity']:.3f}"),
        ("decoder σ at its optimum (√MSE per pixel)", lambda m: f"{m['calibrated_sigma']:.3f}"),
        ("−ELBO with that calibrated σ (nats per image)", lambda m: f"{m['calibrated_neg_elbo']:,.1f}"),
    ]
    return _table(["validation set, last epoch"] + list(measurements),
                  [[name] + [cell(m) for m in measurements.values()] for name, cell in rows], first_width=3)


def probe_markdown(measurements: dict[str, dict]) -> str:
    """R² of linear probes from the codes to each built-in face factor: 'from μ / from a sampled z'."""
    measured = {name: m for name, m in measurements.items()
                if m["probe_r2"] and m["likelihood"] == "fixed" and m["kl_weight"] in ASSIGNMENT_WEIGHTS}
    if not measured:
        return "*No probe: only the built-in face set comes with the ground-truth factors of its images.*"
    factors = list(next(iter(measured.values()))["probe_r2"])
    rows = [[f] + [f"{m['probe_r2'][f]:.2f} / {m['probe_r2_sampled'][f]:.2f}" for m in measured.values()]
            for f in factors]
    return _table(["factor (R², from μ / from z)"] + list(measured), rows, first_width=2)


def discussion_markdown(runs: dict[float, Run], measurements: dict[str, dict]) -> str:
    """Q8: sentences built from the runs' numbers, so none can contradict the figures."""
    for w in ASSIGNMENT_WEIGHTS:
        if w not in runs:
            raise ValueError(f"The discussion needs runs with KL weights 1, 100 and 0; weight {w:g} is missing.")
    m = {w: measurements[run.label] for w, run in runs.items()}
    r, kl, nelbo, au = ({w: m[w][k] for w in runs} for k in ("distortion", "rate", "neg_elbo", "active_units"))
    d = runs[1.0].config.latent_dim
    curve = runs[1.0].history["val_neg_elbo"]
    falls = sum(b < a for a, b in zip(curve, curve[1:]))
    diversity = {w: m[w]["sample_diversity"] / m[w]["data_diversity"] for w in runs}
    best = min(nelbo, key=nelbo.get)

    text = [f"**Weight 1 (the ELBO).** Over {len(curve)} epochs the validation −ELBO went from {curve[0]:,.1f} to "
            f"{curve[-1]:,.1f} nats per image, falling in {falls} of {len(curve) - 1} epochs. At the end the "
            f"reconstruction term is {r[1.0]:.1f} and the KL {kl[1.0]:.1f} nats, spread over {au[1.0]} active "
            f"latent dimensions of {d}. The importance-weighted bound ({m[1.0]['iwae_neg_log_px']:,.1f} nats) is "
            f"{m[1.0]['neg_elbo'] - m[1.0]['iwae_neg_log_px']:.1f} nats tighter than the ELBO."]

    collapsed = kl[100.0] < 1
    text.append(
        f"**Weight 100.** Paying 100 times more for each nat of KL brings the KL to {kl[100.0]:.2f} nats "
        f"(weight 1: {kl[1.0]:.1f})"
        + (": q(z|x) is nearly the prior for every image — *posterior collapse* — so the code says almost nothing "
           "about the image. " if collapsed else ". ")
        + f"The reconstruction error is {r[100.0]:.1f} against {r[1.0]:.1f} at weight 1 ({r[100.0] / r[1.0]:.2f}×)"
        + (", which is the blur in the figures" if r[100.0] > 1.1 * r[1.0] else "")
        + f"; reconstructions keep {m[100.0]['sharpness_ratio']:.0%} of the real images' sharpness "
        f"(weight 1: {m[1.0]['sharpness_ratio']:.0%}). Prior samples vary {diversity[100.0]:.0%} as much as real "
        f"images do (weight 1: {diversity[1.0]:.0%})"
        + (", so they are nearly one average face." if diversity[100.0] < 0.5 * diversity[1.0] else "."))

    recon_0 = ("better than" if r[0.0] < 0.97 * r[1.0] else "worse than" if r[0.0] > 1.03 * r[1.0] else "about as good as")
    holes = m[0.0]["aggregate_kl"] > 2 * m[1.0]["aggregate_kl"] + 1 and m[0.0]["mmd"] > 2 * m[1.0]["mmd"]
    text.append(
        f"**Weight 0 (a plain autoencoder).** Nothing ties q(z|x) to the prior: its KL, measured but not "
        f"trained, is {kl[0.0]:,.1f} nats; the codes of real images spread with a standard deviation of "
        f"{m[0.0]['code_std']:.2f} per dimension where the prior has 1, with posterior σ of "
        f"{m[0.0]['posterior_std']:.2f}. Reconstructions are {recon_0} at weight 1 ({r[0.0]:.1f} against "
        f"{r[1.0]:.1f}). The Gaussian fitted to all the codes sits {m[0.0]['aggregate_kl']:,.1f} nats from N(0, I) "
        f"(weight 1: {m[1.0]['aggregate_kl']:.1f}), and decoded prior samples are {m[0.0]['mmd']:.3f} (MMD²) from "
        f"real images (weight 1: {m[1.0]['mmd']:.3f})"
        + (": most codes drawn from the prior fall where the decoder was never trained, which is why the prior "
           "samples are poor although the reconstructions are not." if holes else "."))

    if m[1.0]["probe_r2_sampled"] and m[100.0]["probe_r2_sampled"]:
        probe = {w: m[w]["probe_r2_sampled"] for w in ASSIGNMENT_WEIGHTS}
        best_factor = max(probe[1.0], key=probe[1.0].get)
        mean = {w: sum(p.values()) / len(p) for w, p in probe.items()}
        text.append(
            f"**What the codes keep.** Read from a sampled z, as the decoder receives it, a linear probe recovers "
            f"the built-in factors with a mean R² of {mean[1.0]:.2f} at weight 1, {mean[0.0]:.2f} at weight 0 and "
            f"{mean[100.0]:.2f} at weight 100; the best-kept factor at weight 1, {best_factor.replace('_', ' ')}, "
            f"scores {probe[1.0][best_factor]:.2f} there and {probe[100.0][best_factor]:.2f} at weight 100.")

    order = sorted(runs)
    text.append(
        f"**The KL term's effect.** The −ELBO, an upper bound on −log p(x), is lowest for weight {best:g} "
        f"({nelbo[best]:,.1f} nats; " + ", ".join(f"{nelbo[w]:,.1f} at weight {w:g}" for w in order if w != best)
        + "). "
        + ("That is expected: weight 1 is the only setting that optimises the bound itself. " if best == 1.0 else
           "Weight 1 is the only setting that optimises the bound itself, so the run was likely too short. ")
        + "Raising the weight from " + " to ".join(f"{w:g}" for w in order) + " moved the rate (KL) from "
        + " to ".join(f"{kl[w]:,.1f}" for w in order) + " nats and the distortion from "
        + " to ".join(f"{r[w]:.1f}" for w in order) + ": the rate–distortion curve above. The KL weight sets how "
        "many nats the encoder may spend describing each image: a larger weight buys codes that match the prior, "
        "so that prior samples decode to images like the training set, at the price of detail; a smaller one "
        "buys detail at the price of codes the prior does not describe.")
    return "\n\n".join(text)


def sigma_vae_markdown(measurements: dict[str, dict]) -> str:
    """How the calibrated decoder compares with the fixed σ² = 1/2 (both trained with KL weight 1)."""
    fixed, sigma = measurements.get("KL weight 1"), measurements.get("σ-VAE, KL weight 1")
    if fixed is None or sigma is None:
        return "*No σ-VAE run in this report (parameter sigma_vae = False).*"
    beta = 2 * sigma["calibrated_sigma"] ** 2
    return (
        f"The fixed decoder variance σ² = 1/2 is a choice, and it acts as a KL weight: the loss "
        f"$\\sum (x - \\hat{{x}})^2 / (2\\sigma^2) + \\mathrm{{KL}}$ is proportional to "
        f"$\\sum (x - \\hat{{x}})^2 + 2\\sigma^2 \\, \\mathrm{{KL}}$, so KL weight β with σ² = 1/2 is the same as "
        f"weight 1 with σ² = β/2. The σ-VAE (Rybkin et al. 2021) sets σ² to its optimum, the mean squared "
        f"error, which here settled at σ = {sigma['calibrated_sigma']:.3f}: an effective KL weight of "
        f"2σ² = {beta:.3f} against the assignment's 1. Its own −ELBO, under the calibrated decoder, is "
        f"{sigma['neg_elbo']:,.1f} nats per image against {fixed['neg_elbo']:,.1f} for the fixed decoder "
        f"({fixed['calibrated_neg_elbo']:,.1f} once the fixed model's σ is calibrated after training); "
        f"its rate is {sigma['rate']:.1f} nats against {fixed['rate']:.1f}, its reconstruction PSNR "
        f"{sigma['psnr_db']:.2f} dB against {fixed['psnr_db']:.2f} dB, and its reconstructions keep "
        f"{sigma['sharpness_ratio']:.0%} of the real images' sharpness against {fixed['sharpness_ratio']:.0%}. "
        "A −ELBO in nats per image can be negative: it is a density of continuous pixel values, above 1 where "
        "the decoder's σ is small.")


# ---------------------------------------------------------------- the build


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
    import papermill

    out, runs_path = Path(out_dir).resolve(), Path(runs_dir).resolve()
    try:
        if "data" in settings and parse_builtin(settings["data"]) is None:  # relative to the caller, not the project
            settings = dict(settings, data=str(Path(settings["data"]).expanduser().resolve()))
    except ValueError as e:
        raise ParameterError(str(e)) from None
    check_report(list(kl_weights), device, **settings)  # everything, before the first run trains
    if sigma_vae:
        check_report([1.0], device, likelihood="sigma-vae", **settings)
    out.mkdir(parents=True, exist_ok=True)
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
        papermill.execute_notebook(notebooks / "run.ipynb", out / name, log_output=True, progress_bar=False,
                                   parameters=parameters)
    print(f"== report: notebooks/report.ipynb -> {out / 'report.ipynb'}", flush=True)
    papermill.execute_notebook(notebooks / "report.ipynb", out / "report.ipynb", progress_bar=False,
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
    html.write_text(body, encoding="utf-8")
    return html


def export_pdf(notebook: Path, pdf: Path) -> Path | None:
    """The report as PDF through nbconvert's LaTeX route, or None (with one line saying why)."""
    missing = [tool for tool in ("xelatex", "pandoc") if shutil.which(tool) is None]
    if missing:
        print(f"PDF skipped: {' and '.join(missing)} not found; install {LATEX_PACKAGES} "
              f"(Debian/Ubuntu: apt-get install {LATEX_PACKAGES}). The HTML report is complete.", flush=True)
        return None
    import nbformat
    from nbconvert import PDFExporter

    nb = _clean(nbformat.read(notebook, as_version=4), mathml=False)
    exporter = PDFExporter(template_name="report_latex", extra_template_basedirs=[str(TEMPLATES)])
    exporter.exclude_input = exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": nb.metadata.get("title", "report")}})
    pdf.write_bytes(body)
    return pdf
