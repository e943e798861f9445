"""The README's picture: the assignment's three settings side by side, from a finished runs folder.

    .venv/bin/python scripts/picture.py [RUNS_DIR] [OUT.png]        (make picture: runs -> docs/three-settings.png)

For KL weights 1, 100 and 0 (the assignment's fixed decoder variance), one column each: the validation images with
their reconstructions at the last epoch, and samples decoded from the prior p(z) = N(0, I). Everything shown is
what the runs stored (their snapshots), drawn with the package's own grid; nothing is trained or decoded here.
Of several runs of a setting (seeds, latent sizes, other reports), it takes the group of runs that share every
other setting and has all three, preferring the longest training, then the first seed. Only runs on the built-in
faces are drawn unless --any-data is given: a data set of your own may not be yours to publish in docs/.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from matplotlib.figure import Figure
from PIL import Image

from vaehelpers import load_run
from vaehelpers.figures import grid_image

WEIGHTS = (1.0, 100.0, 0.0)
SHOWN = 6  # images a row


def three_runs(runs_dir: Path, any_data: bool = False) -> list:
    """The finished runs of KL weights 1, 100 and 0 (fixed likelihood) that share every other setting, on the
    built-in faces unless ``any_data``."""
    if not runs_dir.is_dir():
        raise SystemExit(f"{runs_dir} is not a runs folder: run `make report` first (it trains into runs/), or give "
                         "the runs folder to draw from.")
    groups: dict[tuple, dict] = {}
    for folder in sorted(p for p in runs_dir.iterdir() if (p / "checkpoint.pt").exists()):
        try:
            run = load_run(folder)
        except ValueError as e:  # a damaged run folder (RunDamaged): said, and left out
            print(f"left out: {e}", file=sys.stderr)
            continue
        if not run.finished or run.config.likelihood != "fixed" or run.config.kl_weight not in WEIGHTS:
            continue
        if not any_data and not run.config.data.startswith("builtin"):
            continue
        shared = asdict(run.config)
        for name in ("kl_weight", "precision", "snapshot_epochs"):
            shared.pop(name)
        key = tuple(sorted((k, str(v)) for k, v in shared.items()))
        groups.setdefault(key, {}).setdefault(run.config.kl_weight, run)
    complete = [g for g in groups.values() if len(g) == len(WEIGHTS)]
    if not complete:
        found = sorted({w for g in groups.values() for w in g}, reverse=True)
        raise SystemExit(f"{runs_dir} holds no finished runs of KL weights 1, 100 and 0 with the same other settings"
                         + (f" (only of weight {', '.join(f'{w:g}' for w in found)})" if found else "")
                         + ("" if any_data else " on the built-in faces") + ": run `make report` first (it trains them "
                         "into runs/).")
    best = max(complete, key=lambda g: (g[1.0].config.epochs, -g[1.0].config.seed))
    return [best[w] for w in WEIGHTS]


def picture(runs: list) -> Figure:
    """Two rows a setting's column: reconstructions (real above reconstructed) and prior samples."""
    fig = Figure(figsize=(12.6, 3.45), layout="constrained")
    axes = fig.subplots(2, len(runs))
    for column, run in zip(axes.T, runs):
        last = max(run.snapshots["epochs"])
        shot = run.snapshots["epochs"][last]
        real_and_recon = [run.snapshots["panel"][:SHOWN], shot["recon"][:SHOWN]]
        for ax, images, title in ((column[0], real_and_recon, run.label),
                                  (column[1], [shot["samples"][: 2 * SHOWN]], None)):
            ax.imshow(grid_image(torch.cat(images), SHOWN).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if title:
                ax.set_title(title, fontsize=11)
    axes[0, 0].set_ylabel("real (top),\nreconstructed", fontsize=10)
    axes[1, 0].set_ylabel("samples\nfrom p(z)", fontsize=10)
    first = runs[0].config
    fig.suptitle(f"Validation images reconstructed, and prior samples, after {first.epochs} epochs "
                 f"({Path(first.data).name}, latent size {first.latent_dim})", fontsize=11)
    return fig


def save_small(fig: Figure, out: Path) -> int:
    """The figure as a PNG of at most 256 colours (the faces lose nothing visible; the file a third the size)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    image = Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    return out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", nargs="?", default="runs", type=Path)
    parser.add_argument("out", nargs="?", default="docs/three-settings.png", type=Path)
    parser.add_argument("--any-data", action="store_true",
                        help="also runs on data other than the built-in faces (not yours to publish, perhaps)")
    args = parser.parse_args(argv)
    runs = three_runs(args.runs_dir, args.any_data)
    size = save_small(picture(runs), args.out)
    print(f"{args.out}: {size / 1000:.0f} kB, from " + ", ".join(r.dir.name for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
