"""The report's generated text: Q1 from the trained model and its record, Q8 from the measurements.

Every number in these sentences and tables is read from a run or its measurements, and
each sentence that interprets a number is only written where the number supports it.
"""

from __future__ import annotations

import re

from .data import parse_builtin
from .measure import mean_sd
from .model import layer_table
from .params import ASSIGNMENT_WEIGHTS
from .store import Run, Setting
from .sweep import Sweep

FIXED_1 = Setting("fixed", 1.0)
SIGMA_1 = Setting("sigma-vae", 1.0)


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


# ---------------------------------------------------------------- Q8: the discussion, from the runs' numbers


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
    text = (f"Q2–Q7 show the runs with seed {sweep.seed} and {sweep.latent_dim} latent dimensions"
            + (f" (the sweep also trained latent size{'s' if len(sweep.latent_dims) > 2 else ''} "
               f"{', '.join(map(str, sweep.latent_dims[1:]))})"
               if len(sweep.latent_dims) > 1 else "") + ". ")
    if not several:
        return text + ("Every number comes from that one seed, so this report cannot say how much of a difference "
                       "another seed would change; `--seeds 0,1,2` trains each setting three times.")
    return text + ("Q8 gives each number as mean ± standard deviation over the seeds of each setting (" +
                   ", ".join(f"{label}: {n} seeds" for label, n in several.items()) + "; the others one), and says "
                   "which of the differences the discussion relies on exceed that spread. A seed changes the initial "
                   "weights, the order of the batches and the sampled noise; every run holds out the same validation "
                   "images and trains on the same set, so the spread is that of training alone.")


SPREAD_CHECKS = [
    ("KL (rate)", "rate", 100.0, 1.0),
    ("distortion", "distortion", 100.0, 1.0),
    ("sharpness of reconstructions", "sharpness_ratio", 100.0, 1.0),
    ("diversity of prior samples", "sample_diversity", 100.0, 1.0),
    ("distortion", "distortion", 0.0, 1.0),
    ("KL of the aggregate posterior", "aggregate_kl", 0.0, 1.0),
    ("MMD² of prior samples", "mmd", 0.0, 1.0),
    ("−ELBO", "neg_elbo", 100.0, 1.0),
    ("−ELBO", "neg_elbo", 0.0, 1.0),
]
"""The differences the discussion relies on: (what, key, KL weight, against KL weight), fixed decoder."""


def _num(x: float, sign: str = "") -> str:
    """Three significant digits, whole numbers from 1,000 up, and a minus sign (U+2212) that LaTeX keeps with
    its number."""
    text = f"{x:{sign},.0f}" if abs(x) >= 1000 else f"{x:{sign}.3g}"
    return text.replace("-", "−")


def _compare(what: str, a: list[float], b: list[float], pooled_var: float) -> tuple[str, bool]:
    """One line: the difference of the means of ``a`` and ``b`` against twice its standard error,
    sqrt(s_a²/n_a + s_b²/n_b), a sample of one taking the pooled variance; and whether it exceeds it."""
    (mean_a, sd_a), (mean_b, sd_b) = mean_sd(a), mean_sd(b)
    var_a, var_b = (sd_a**2 if len(a) > 1 else pooled_var), (sd_b**2 if len(b) > 1 else pooled_var)
    se = (var_a / len(a) + var_b / len(b)) ** 0.5
    diff = mean_a - mean_b
    exceeds = se > 0 and abs(diff) > 2 * se
    times = f"{abs(diff) / se:,.1f} times its standard error {_num(se)}" if se > 0 else "with no spread measured"
    return (f"- {what}: {_num(mean_a)} (n = {len(a)}) against {_num(mean_b)} (n = {len(b)}), a difference of "
            f"{_num(diff, '+')}, {times}: " + ("**beyond the seed spread**." if exceeds else
                                             "**within the seed spread**; another seed could change its sign.")), exceeds


def _pooled_variance(groups: list[list[float]]) -> float:
    """The variance pooled over the groups of several values (0 where none has several)."""
    several = [g for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in several)
    return sum(mean_sd(g)[1] ** 2 * (len(g) - 1) for g in several) / dof if dof else 0.0


def spread_markdown(by_seed: dict[Setting, list[dict]]) -> str:
    """Whether each difference the discussion relies on exceeds the seed spread: the difference of the means
    against twice its standard error, sqrt(s_a²/n_a + s_b²/n_b). A setting trained with one seed is given the
    standard deviation pooled over the settings with several (said so)."""
    multi = {s: ms for s, ms in by_seed.items() if len(ms) > 1}
    if not multi:
        return ("*One seed per setting: the seed spread is not measured, so no difference below can be said to "
                "exceed it. Train with `--seeds 0,1,2` (or `--extra-seeds 1,2` for weight 1 alone).*")
    lines, beyond, assumed = [], 0, False
    for what, key, w, against in SPREAD_CHECKS:
        a, b = by_seed.get(Setting("fixed", w)), by_seed.get(Setting("fixed", against))
        if not a or not b:
            continue
        assumed |= len(a) == 1 or len(b) == 1
        line, exceeds = _compare(f"{what[0].upper() + what[1:]}, weight {w:g} against weight {against:g}",
                                 [m[key] for m in a], [m[key] for m in b],
                                 _pooled_variance([[m[key] for m in ms] for ms in multi.values()]))
        lines.append(line)
        beyond += exceeds
    n_seeds = ", ".join(f"{s.label} ({len(ms)} seeds)" for s, ms in multi.items())
    head = (f"Of the {len(lines)} differences the discussion above relies on, {beyond} exceed twice their standard "
            f"error over seeds. The spread is measured on {n_seeds}"
            + ("; a setting trained with one seed is given the standard deviation pooled over those, an assumption "
               "that more seeds of it would check." if assumed else "."))
    return head + "\n\n" + "\n".join(lines)


LATENT_ROWS = [
    ("−ELBO (nats per image)", "neg_elbo", ",.1f", "−ELBO"),
    (RESULT_ROWS[2][0], "iwae_neg_log_px", ",.1f", "IWAE bound"),
    ("PSNR of reconstructions from μ (dB)", "psnr_db", ".2f", "PSNR"),
    ("rate: KL (nats)", "rate", ".2f", "Rate"),
    ("active latent dimensions", "active_units", "d", None),
    ("MMD², prior samples vs real images", "mmd", ".3f", "MMD² of prior samples"),
]
"""The latent-size table: (row, key in measurements.json, format, name in the sentences or None)."""


def latent_markdown(by_latent: dict[int, list[dict]]) -> str:
    """The latent sizes side by side (KL weight 1): the measurements that depend on the size of the code, and
    whether each difference from the first size exceeds the seed spread."""
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
    lines = [_compare(f"{short}, {d} against {first_d} latent dimensions", [m[key] for m in ms],
                      [m[key] for m in first_ms], _pooled_variance([[m[key] for m in ms], [m[key] for m in first_ms]]))[0]
             for d, ms in others for _, key, _, short in LATENT_ROWS if short]
    return _table(header, table, first_width=2) + "\n\n" + "\n".join(lines)


def probe_markdown(measurements: dict[Setting, dict]) -> str:
    """R² of linear probes from the codes to each built-in face factor: 'from μ / from a sampled z'."""
    measured = {setting.label: m for setting, m in measurements.items()
                if m["probe_r2"] and setting.likelihood == "fixed" and setting.kl_weight in ASSIGNMENT_WEIGHTS}
    if not measured:
        return "*No probe: only the built-in face set comes with the ground-truth factors of its images.*"
    factors = list(next(iter(measured.values()))["probe_r2"])
    rows = [[f] + [f"{m['probe_r2'][f]:.2f} / {m['probe_r2_sampled'][f]:.2f}" for m in measured.values()]
            for f in factors]
    return _table(["factor (R², from μ / from z)"] + list(measured), rows, first_width=2)


def discussion_markdown(runs: dict[float, Run], measurements: dict[Setting, dict]) -> str:
    """Q8: sentences built from the runs' numbers, so none can contradict the figures."""
    for w in ASSIGNMENT_WEIGHTS:
        if w not in runs:
            raise ValueError(f"The discussion needs runs with KL weights 1, 100 and 0; weight {w:g} is missing.")
    m = {w: measurements[run.setting] for w, run in runs.items()}
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


def sigma_vae_markdown(measurements: dict[Setting, dict]) -> str:
    """How the calibrated decoder compares with the fixed σ² = 1/2 (both trained with KL weight 1)."""
    fixed, sigma = measurements.get(FIXED_1), measurements.get(SIGMA_1)
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
