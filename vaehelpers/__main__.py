"""Command line: ``python -m vaehelpers report [--data PATH] [--epochs N] ...`` and ``... bench``.

Trains (or reuses) one run per KL weight and writes each run's figures to
``<out>/figures/kl<weight>/``. With no ``--data`` it uses the built-in face set with a
budget sized for a 2-core CPU (``QUICK``); with ``--data`` the assignment's settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import figures
from .train import RunConfig, fit

ASSIGNMENT = {"epochs": 100, "lr": 1e-4, "batch_size": 100, "latent_dim": 20, "base_channels": 32}
"""The reference report's settings, used when --data is given."""

QUICK = {"data": "builtin:6000", "epochs": 20, "lr": 1e-3, "batch_size": 100, "latent_dim": 20, "base_channels": 16}
"""The default without --data: the built-in faces, sized so that three runs finish in minutes on a 2-core CPU."""


def _weights(text: str) -> list[float]:
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--kl-weights takes numbers separated by commas, e.g. 1,100,0; got {text!r}.")
    if not weights or any(w < 0 for w in weights):
        raise argparse.ArgumentTypeError(f"--kl-weights needs at least one weight, none negative; got {text!r}.")
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaehelpers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="train the KL settings and write their figures")
    report.add_argument("--data", help="image folder, .npz/.npy file, or builtin[:N] (default: the quick built-in budget)")
    report.add_argument("--epochs", type=int)
    report.add_argument("--kl-weights", type=_weights, default=[1.0, 100.0, 0.0])
    report.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, ...")
    report.add_argument("--lr", type=float)
    report.add_argument("--batch-size", type=int)
    report.add_argument("--latent-dim", type=int)
    report.add_argument("--base-channels", type=int)
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--runs-dir", default="runs")
    report.add_argument("--out", default="reports")
    bench = sub.add_parser("bench", help="measure face generation, data loading and training speed")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--images", type=int, default=21551, help="size of the folder and .npz used to time loading")
    args = parser.parse_args(argv)
    if args.command == "bench":
        from .bench import bench_loading, bench_training

        for line in bench_training(args.device) + bench_loading(args.images):
            print(line, flush=True)
        return 0

    settings = dict(ASSIGNMENT, data=args.data) if args.data else dict(QUICK)
    for name in ("epochs", "lr", "batch_size", "latent_dim", "base_channels"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    out = Path(args.out) / "figures"
    started = time.perf_counter()
    for weight in args.kl_weights:
        print(f"== KL weight {weight:g}: {settings}", flush=True)
        try:
            run = fit(RunConfig(kl_weight=weight, seed=args.seed, **settings), runs_dir=args.runs_dir, device=args.device)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        folder = out / f"kl{weight:g}"
        figures.save(figures.learning_curve(run), folder / "learning_curve.png")
        figures.save(figures.reconstructions(run), folder / "reconstructions.png")
        figures.save(figures.prior_samples(run), folder / "prior_samples.png")
        figures.save(figures.interpolation(run), folder / "interpolation.png")
        last = {k: v[-1] for k, v in run.history.items()}
        print(f"   {run.dir}: validation −ELBO {last['val_neg_elbo']:.1f} nats/image "
              f"({last['val_bits_per_dim']:.4f} bits/dim), reconstruction {last['val_recon']:.1f}, KL {last['val_kl']:.1f}; "
              f"figures in {folder}", flush=True)
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
