"""The report's tables and the text that describes its runs: Q1 from the trained model and its record (how the
images were preprocessed, the architecture, the hyperparameters), and the tables of the measurements (Q8's
results, the seeds behind them, the latent sizes, the probes).

Every number is read from a run or its measurements; where a table holds several seeds of a setting it gives the
mean ± standard deviation over them. The comparisons a table states are tested and listed by
:mod:`vaehelpers.discussion`, as the discussion's are.
"""

from __future__ import annotations

import re

from .data import parse_builtin
from .discussion import Claims, claims_markdown, joined
from .model import layer_table
from .params import ASSIGNMENT_WEIGHTS
from .stats import LEVEL, mean, mean_sd
from .store import Run, Setting
from .sweep import Sweep


def _table(header: list[str], rows: list[list], first_width: int = 1, widths: list[int] | None = None) -> str:
    """A Markdown table. ``first_width``: how many times wider the first column is in the PDF, or ``widths``:
    each column's (pandoc reads relative column widths from the dashes of the separator line)."""
    widths = widths or [first_width] + [1] * (len(header) - 1)
    dashes = ["-" * 4 * w for w in widths]
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
                  f"directly at {size}×{size} from independently sampled factors, seed {run.config.data_seed}), "
                  "so no resizing or cropping was needed.")
    else:
        skipped = (f"; {data['skipped']} entries were skipped: unreadable, corrupt, not images, over 50 megapixels "
                   "or under 8 pixels on a side" if data["skipped"] else "")
        converted = data.get("converted") or {}  # recorded since the loader says what it converted
        done = (" Of them, " + ", ".join(f"{n:,} {note}" for note, n in converted.items()) + "."
                if converted else "")
        origin = (f"The images come from `{data['source']}` ({data['images']:,} images{skipped}). Each image was "
                  "turned upright by its EXIF orientation, taken by its first frame if animated, converted to RGB "
                  "(transparent pixels composited on white, grey expanded to three channels, 16-bit values scaled to "
                  f"8 bits), centre-cropped to the largest square and resized to {size}×{size} with antialiasing."
                  f"{done}")
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


# ---------------------------------------------------------------- the tables of the measurements


RESULT_ROWS = [
    ("−ELBO (nats per image)", "neg_elbo", ",.1f"),
    ("−ELBO (bits per dimension)", "bits_per_dim", ".4f"),
    ("IWAE bound on −log p(x), k = {k}, {n} images (nats)", "iwae_neg_log_px", ",.1f"),
    ("rate: KL(q(z|x) ‖ p(z)) (nats)", "rate", ".2f"),
    ("distortion: Σ(x − x̂)²", "distortion", ".1f"),
    ("PSNR of reconstructions from μ (dB)", "psnr_db", ".2f"),
    ("sharpness of reconstructions (real images: 1)", "sharpness_ratio", ".2f"),
    ("active latent dimensions", "active_units", "d"),
    ("spread of μ over images (prior: 1)", "code_std", ".2f"),
    ("mean σ of q(z|x) (prior: 1)", "posterior_std", ".2f"),
    ("KL of aggregate posterior to prior (nats)", "aggregate_kl", ".1f"),
    ("MMD², prior samples vs real images (16×16, {mmd} each)", "mmd", ".3f"),
    ("diversity of prior samples (real images: {diversity:.3f})", "sample_diversity", ".3f"),
    ("decoder σ at its optimum (√MSE per pixel)", "calibrated_sigma", ".3f"),
    ("−ELBO with that calibrated σ (nats per image)", "calibrated_neg_elbo", ",.1f"),
]
"""Q8's table: a row per measurement (name, key in measurements.json, format)."""


def _stat(values: list[float], fmt: str) -> str:
    """A value, or the mean ± sd of several (whole numbers then with one decimal)."""
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    fmt = ".1f" if fmt == "d" else fmt
    mean, sd = mean_sd(values)
    return f"{mean:{fmt}} ± {sd:{fmt}}"


def _cell(seeds: list[dict], key: str, fmt: str) -> str:
    """One measurement of one setting: the value, or mean ± sd over its seeds."""
    suffix = f" of {len(seeds[0]['kl_per_dim'])}" if key == "active_units" else ""
    return _stat([m[key] for m in seeds], fmt) + suffix


def results_table(measurements: dict[Setting, dict], by_seed: dict[Setting, list[dict]] | None = None,
                  heading: str = "validation set, last epoch") -> str:
    """Q8's table: a column per setting, every number measured on the validation images; where ``by_seed``
    holds several seeds of a setting, mean ± standard deviation over them, with n in the column's name."""
    first = next(iter(measurements.values()))
    seeds = {s: (by_seed or {}).get(s) or [m] for s, m in measurements.items()}
    names = {"k": first["options"]["k"], "n": first["iwae_images"], "mmd": first["mmd_images"],
             "diversity": first["data_diversity"]}
    header = [heading] + [s.label + (f" (n = {len(seeds[s])} seeds, mean ± sd)" if len(seeds[s]) > 1 else "")
                          for s in measurements]
    rows = [[name.format(**names)] + [_cell(seeds[s], key, fmt) for s in measurements] for name, key, fmt in RESULT_ROWS]
    return _table(header, rows, widths=[6] + [4 if len(seeds[s]) > 1 else 3 for s in measurements])


def seeds_markdown(sweep: Sweep, by_seed: dict[Setting, list[dict]]) -> str:
    """Which run Q2-Q7 show, and how many seeds stand behind Q8's numbers."""
    counts = {s.label: len(ms) for s, ms in by_seed.items()}
    several = {label: n for label, n in counts.items() if n > 1}
    single = [label for label, n in counts.items() if n == 1]
    text = (f"Q2–Q7 show the runs with seed {sweep.seed} and {sweep.latent_dim} latent dimensions"
            + (f" (the sweep also trained latent size{'s' if len(sweep.latent_dims) > 2 else ''} "
               f"{', '.join(map(str, sweep.latent_dims[1:]))})"
               if len(sweep.latent_dims) > 1 else "") + "; their curves and pictures are that seed's own. ")
    if not several:
        return text + ("Every number comes from that one seed, so no comparison in Q8 can be tested against the "
                       "spread another seed would give; `--extra-seeds 1,2` trains the assignment's settings three "
                       "times, `--seeds 0,1,2` every setting.")
    return text + (
        "Q8 gives each number as the mean ± standard deviation over the seeds of its setting ("
        + ", ".join(f"{label}: {n} seeds" for label, n in several.items())
        + (f"; {joined(single)}: one seed" if single else "") + "), and the discussion quotes those means. Each "
        f"comparison it makes is tested with Welch's t-test at {LEVEL:.0%}, a setting's spread against its own "
        "seeds only; a setting with one seed is not tested. A seed changes the initial weights, the order of the "
        "batches and the training noise, each an independent random stream; every run holds out the same "
        "validation images, and the measurements' own random draws (the IWAE samples, the prior codes, the "
        "noise of the validation terms) are the same for every run, so the spread is that of training alone.")


LATENT_ROWS = [
    ("−ELBO (nats per image)", "neg_elbo", ",.1f", "−ELBO"),
    (RESULT_ROWS[2][0], "iwae_neg_log_px", ",.1f", "IWAE bound"),
    ("PSNR of reconstructions from μ (dB)", "psnr_db", ".2f", "PSNR"),
    ("rate: KL (nats)", "rate", ".2f", "rate"),
    ("active latent dimensions", "active_units", "d", None),
    ("MMD², prior samples vs real images", "mmd", ".3f", "MMD² of prior samples"),
]
"""The latent-size table: (row, key in measurements.json, format, name in the claims or None)."""


def latent_markdown(by_latent: dict[int, list[dict]]) -> str:
    """The latent sizes side by side (KL weight 1): the measurements that depend on the size of the code, and
    each difference from the first size tested like the discussion's (:func:`claims_markdown`)."""
    if len(by_latent) < 2:
        (d,) = by_latent
        return (f"*One latent size ({d}) in this report; `--latent-dims {d},50` compares {d} with 50 as the "
                "reference report did.*")
    first = next(iter(by_latent.values()))[0]
    names = {"k": first["options"]["k"], "n": first["iwae_images"]}
    table = [[name.format(**names)] + [_cell(ms, key, fmt) for ms in by_latent.values()] for name, key, fmt, _ in LATENT_ROWS]
    table.append(["KL per active dimension (nats)"] + [
        _stat([m["rate"] / max(1, m["active_units"]) for m in ms], ".2f") for ms in by_latent.values()])
    header = ["KL weight 1, validation set"] + [
        f"{d} latent dimensions" + (f" (n = {len(ms)} seeds)" if len(ms) > 1 else "") for d, ms in by_latent.items()]
    (first_d, first_ms), *others = by_latent.items()
    claims = Claims()
    for d, ms in others:
        for _, key, _, short in LATENT_ROWS:
            if short:
                claims.said(f"{short}, {d} against {first_d} latent dimensions", [m[key] for m in ms],
                           [m[key] for m in first_ms])
    return _table(header, table, first_width=2) + "\n\n" + claims_markdown(claims, "this section")


def probe_markdown(by_seed: dict[Setting, list[dict]]) -> str:
    """R² of linear probes from the codes to each built-in face factor: 'from μ / from a sampled z', the mean over
    each setting's seeds (as the discussion quotes them)."""
    measured = {setting.label + (f" (mean of {len(ms)} seeds)" if len(ms) > 1 else ""): ms
                for setting, ms in by_seed.items()
                if ms[0]["probe_r2"] and setting.likelihood == "fixed" and setting.kl_weight in ASSIGNMENT_WEIGHTS}
    if not measured:
        return "*No probe: only the built-in face set comes with the ground-truth factors of its images.*"
    factors = list(next(iter(measured.values()))[0]["probe_r2"])
    rows = [[f] + [f"{mean([m['probe_r2'][f] for m in ms]):.2f} / {mean([m['probe_r2_sampled'][f] for m in ms]):.2f}"
                   for ms in measured.values()] for f in factors]
    return _table(["factor (R², from μ / from z)"] + list(measured), rows, first_width=2)
