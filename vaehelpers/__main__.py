"""Command line: ``python -m vaehelpers report [--data PATH] [--epochs N] ...``, ``... board``, ``... bench``
and ``... summary``.

``report`` runs notebooks/run.ipynb once per run of its sweep (KL weights × seeds × latent
sizes; training, or reusing finished runs), on this machine several at a time or as a Slurm
job array (``--executor slurm``), executes notebooks/report.ipynb and exports
``<out>/report.html`` and ``<out>/report.pdf``. With no ``--data`` it uses the built-in face
set with a budget sized for a 2-core CPU (``QUICK``); with ``--data``, the assignment's
settings (``ASSIGNMENT``).
``board`` starts TensorBoard on the runs folder (``make board``).
"""

from __future__ import annotations

import argparse
import signal
import typing
import sys
import time
from pathlib import Path

from papermill.exceptions import PapermillExecutionError

from .build import Training, build_report
from .errors import OneSentenceError
from .execute import end_descendants
from .files import NotWritable, explain
from .params import ASSIGNMENT, QUICK, QUICK_EXTRA_SEEDS, REPORT_WEIGHTS, SETTING_TYPES
from .signals import stopping
from .slurm import SlurmOptions
from .speed import native_bf16_told
from .sweep import Sweep, SweepFailed

CLI_SETTINGS = {
    "data": "image folder, .npz/.npy file, or builtin[:N] (default: the quick built-in budget)",
    "epochs": None, "lr": "learning rate of Adam", "batch_size": None, "latent_dim": None, "base_channels": None,
    "image_size": "pixels on a side (a power of two: 32, 64, 128)", "seed": "of the initial weights, the batch order and the noise (default 0)",
    "data_seed": "of the built-in face set and the held-out split, the same for every seed (default 0)",
    "precision": "of training: bf16 autocast, fp32, or auto (the default: the faster here, measured once per machine; "
                 "bf16 on CUDA)",
}
"""The run settings (RunConfig fields) the report command takes as options, with their help."""

def _whole_numbers(option: str, example: str, none: bool = False):
    def parse(text: str) -> list[int]:
        if none and text.strip().lower() == "none":
            return []
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} takes whole numbers separated by commas, e.g. {example}; "
                                             f"got {text!r}.") from None
        if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{option} needs different whole numbers >= 0; got {text!r}.")
        return values
    return parse


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"needs a whole number >= {low}; got {text!r}.")
        return value
    return parse


def _sbatch_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--sbatch takes KEY=VALUE (an sbatch option without its dashes), e.g. "
                                         f"account=mylab; got {text!r}.")
    key = key.strip().lstrip("-")
    if key in OWN_SBATCH:
        raise argparse.ArgumentTypeError(f"--sbatch {key}=... would undo {OWN_SBATCH[key]}; got {text!r}.")
    return key, value


OWN_SBATCH = {"time": "--time-min, by which a task's requeues are decided: give the limit there",
              "t": "--time-min, by which a task's requeues are decided: give the limit there",
              "signal": "submitit's signal before the time limit, by which a task is requeued",
              "open-mode": "the logs that keep every time slice of a task"}
"""sbatch options the Slurm executor sets itself, and why ``--sbatch`` may not set them."""


def _weights(text: str) -> list[float]:
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--kl-weights takes numbers separated by commas, e.g. 1,100,0; got {text!r}.") from None
    if not weights or any(not 0 <= w < float("inf") for w in weights):
        raise argparse.ArgumentTypeError(f"--kl-weights needs finite weights, none negative; got {text!r}.")
    return weights


def run_summaries(runs_dir: str) -> list[str]:
    """What each finished run under ``runs_dir`` cost and reached, one line each."""
    from .explore import finished

    lines, total = [], 0.0
    for run in finished(runs_dir):
        h, images = run.history, run.info["split"]["train"]
        seconds = sum(h["seconds"])
        lines.append(f"{run.label} ({run.config.precision}, {run.info['device']}): {run.epochs_done} epochs of "
                     f"{images:,} images in {seconds:.1f} s, {images * run.epochs_done / seconds:,.0f} images/s, "
                     f"peak GPU memory {max(h['peak_gpu_mib']):,.0f} MiB, final validation -ELBO "
                     f"{h['val_neg_elbo'][-1]:,.1f} nats")
        total += seconds
    lines.append(f"all {len(lines)} runs: {total:.1f} s of training (epochs with their validation and snapshots)")
    return lines


def show_board(runs_dir: str, host: str, port: int) -> int:
    """``board``: write the events runs trained before them lack, start TensorBoard, print its address, wait."""
    from .board import serve, write_missing

    runs = Path(runs_dir).resolve()
    if not runs.is_dir():
        print(f"error: no runs folder {runs}: train runs first (make report), or give --runs-dir.", file=sys.stderr)
        return 2
    for line in write_missing(runs):
        print(line, flush=True)
    try:
        url = serve(runs, host, port)
    except Exception as e:  # TensorBoardPortInUseError, a bad address
        print(f"error: TensorBoard could not start on {host}:{port} ({e}): give another --port.", file=sys.stderr)
        return 2
    print(f"TensorBoard on {runs}: {url} (Ctrl-C stops it). On a cluster, run it on the login node and open "
          f"`ssh -L {port}:localhost:{port} <login node>` from your machine, then {url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def parser() -> argparse.ArgumentParser:
    """The command line: its commands and their options."""
    parser = argparse.ArgumentParser(prog="python -m vaehelpers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="train the KL settings and write reports/report.html and .pdf")
    for name, help_text in CLI_SETTINGS.items():  # derived from RunConfig's fields: names, types, choices
        kind = SETTING_TYPES[name]
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
        report.add_argument(f"--{name.replace('_', '-')}", type=None if choices else kind, choices=choices, help=help_text)
    report.add_argument("--kl-weights", type=_weights, default=list(REPORT_WEIGHTS),
                        help="comma-separated; must include 1, 100 and 0 (default: 1,100,0,0.1,10)")
    report.add_argument("--sigma-vae", action=argparse.BooleanOptionalAction, default=True,
                        help="also train weight 1 with a calibrated decoder variance (default: yes)")
    report.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, ...")
    report.add_argument("--runs-dir", default="runs")
    report.add_argument("--out", default="reports")
    report.add_argument("--pdf", action=argparse.BooleanOptionalAction, default=True,
                        help="also write report.pdf where LaTeX is installed (default: yes); --no-pdf writes the HTML "
                        "alone, without the LaTeX route's time (12 s of a 58 s tiny report on 2 cores)")
    sweep = report.add_argument_group("sweep", "the runs are the product of the KL weights, seeds and latent sizes")
    sweep.add_argument("--seeds", type=_whole_numbers("--seeds", "0,1,2"),
                       help="every setting trains once per seed; Q2-Q7 show the first (default: --seed)")
    sweep.add_argument("--latent-dims", type=_whole_numbers("--latent-dims", "20,50"),
                       help="every setting trains once per latent size; the first is the main one (default: --latent-dim)")
    sweep.add_argument("--extra-seeds", type=_whole_numbers("--extra-seeds", "1,2", none=True),
                       help="more seeds of KL weights 1, 100 and 0 alone (weight 1 at every latent size), so that the "
                            "discussion's comparisons are tested, or none (default: 1,2 on the quick budget, none with --data)")
    sweep.add_argument("--executor", choices=["local", "slurm"], default="local",
                       help="local: concurrent processes on this machine (default); slurm: one Slurm job array")
    sweep.add_argument("--workers", type=_at_least(1), help="local: runs trained at once (default: from the cores and model size)")
    sweep.add_argument("--threads", type=_at_least(1), help="local: threads per run (default: the cores shared among the workers)")
    sweep.add_argument("--compile", choices=["auto", "yes", "no"], default="auto",
                       help="compile the training step with torch.compile: auto (where the speed probe shows it pays, "
                       "compile time included; the default), yes, or no")
    sweep.add_argument("--checkpoint-every", type=_at_least(0),
                       help="seconds between two writes of a run's files (default 30): what a requeued task redoes")
    slurm = report.add_argument_group("slurm", "with --executor slurm; the runs folder, the output folder and the data "
                                      "cache ($VAEHELPERS_CACHE) must be on a filesystem every node shares")
    slurm.add_argument("--partition", help="the partition (default: the cluster's default)")
    slurm.add_argument("--gpus-per-task", type=_at_least(0), default=0)
    slurm.add_argument("--cpus-per-task", type=_at_least(1), default=SlurmOptions.cpus_per_task,
                       help="also each task's PyTorch threads")
    slurm.add_argument("--time-min", type=_at_least(1), default=SlurmOptions.time_min,
                       help="each task's time limit in minutes; a task that reaches it is requeued and resumes")
    slurm.add_argument("--max-requeues", type=_at_least(0),
                       help="requeues at the time limit a task may take (default: no cap, as long as two time "
                       "slices in a row do not end without a newer checkpoint)")
    slurm.add_argument("--array-parallelism", type=_at_least(1), default=SlurmOptions.array_parallelism,
                       help="at most this many tasks run at once")
    slurm.add_argument("--sbatch", type=_sbatch_option, action="append", default=[], metavar="KEY=VALUE",
                       help="any further sbatch option, repeatable: --sbatch account=mylab --sbatch qos=short")
    slurm.add_argument("--no-wait", dest="wait", action="store_false",
                       help="submit, print the job id and return; the same command renders the report once all finished")
    bench = sub.add_parser("bench", help="measure face generation, data loading and training speed")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--images", type=int, default=21551, help="size of the folder and .npz used to time loading")
    bench.add_argument("--compare-precision", action="store_true",
                       help="instead: train the quick budget's weight-1 run in fp32 and in bf16, compare the results")
    bench.add_argument("--compare-compiled", action="store_true",
                       help="instead: train the quick budget's weight-1 run eagerly and compiled, in fp32 and bf16, compare")
    bench.add_argument("--events", action="store_true",
                       help="instead: what writing TensorBoard events costs on the quick budget's weight-1 run")
    bench.add_argument("--homework", action="store_true",
                       help="instead: this project's training against the usual homework loop (ImageFolder, DataLoader, "
                       "plain Adam) on 5,000 PNG faces, base channels 16 and 32")
    bench.add_argument("--data", help="with --compare-precision/--compare-compiled: another data source for the quick budget")
    bench.add_argument("--epochs", type=int, help="with --compare-precision/--compare-compiled: another number of epochs")
    bench.add_argument("--runs-dir", default="runs", help="with --compare-precision/--compare-compiled: where the runs go")
    board = sub.add_parser("board", help="TensorBoard on the runs folder: curves, images and the HParams table")
    board.add_argument("--runs-dir", default="runs")
    board.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    board.add_argument("--port", type=int, default=6006)
    summary = sub.add_parser("summary", help="one line per finished run: device, precision, speed, GPU memory, -ELBO")
    summary.add_argument("--runs-dir", default="runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        native_bf16_told()  # checked before anything trains or measures
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "board":
        return show_board(args.runs_dir, args.host, args.port)
    if args.command == "summary":
        for line in run_summaries(args.runs_dir):
            print(line, flush=True)
        return 0
    if args.command == "bench":
        return bench(args)
    return report(args)


def bench(args: argparse.Namespace) -> int:
    """``bench``: the measurement its options ask for, one line per figure."""
    from .bench import (bench_explore, bench_homework, bench_loading, bench_training, compare_compiled,
                        compare_events, compare_precision)

    quick = {**QUICK, **{k: v for k, v in (("data", args.data), ("epochs", args.epochs)) if v is not None}}
    lines = (compare_precision(quick, args.device, args.runs_dir) if args.compare_precision else
             compare_compiled(quick, args.device, args.runs_dir) if args.compare_compiled else
             compare_events(quick, args.device) if args.events else
             bench_homework(args.device) if args.homework else
             bench_training(args.device) + bench_explore() + bench_loading(args.images))
    for line in lines:
        print(line, flush=True)
    return 0


def report(args: argparse.Namespace) -> int:
    """``report``: train the sweep, render the report; each way it can end said in one line, with its exit status
    (1: some runs failed; 2: bad input, found before any training where it can be; 128 + the signal: stopped)."""
    settings = dict(ASSIGNMENT) if args.data else dict(QUICK)
    settings.update({name: getattr(args, name) for name in CLI_SETTINGS if getattr(args, name) is not None})
    extra_seeds = tuple(args.extra_seeds) if args.extra_seeds is not None else () if args.data else QUICK_EXTRA_SEEDS
    started = time.perf_counter()
    try:
        with stopping():  # Ctrl-C; `timeout`, a batch scheduler, a closing terminal
            sweep, settings = Sweep.of(args.kl_weights, args.sigma_vae, args.seeds, args.latent_dims, extra_seeds,
                                       **settings)
            training = Training(args.executor, args.device, args.workers, args.threads,
                                {"auto": None, "yes": True, "no": False}[args.compile], args.checkpoint_every,
                                SlurmOptions(args.partition, args.gpus_per_task, args.cpus_per_task, args.time_min,
                                             args.array_parallelism, dict(args.sbatch), args.wait,
                                             max_requeues=args.max_requeues))
            written = build_report(sweep, settings, training, args.out, args.runs_dir, args.pdf)
    except PapermillExecutionError as e:  # a notebook stopped: a bad parameter, a damaged run, a diverged run
        print(f"error: {e.evalue}", file=sys.stderr)
        return 2
    except SweepFailed as e:  # some runs failed, each named with its error and log; the others finished
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # what was cancelled has been said; no process this one started outlives it
        end_descendants()
        return 128 + getattr(e, "signum", signal.SIGINT)  # 130 for SIGINT, 143 for SIGTERM
    except OSError as e:  # a full disk or a read-only folder: said in one sentence (files.NotWritable)
        said = explain(e, Path(e.filename).parent if e.filename else Path(args.out), 0, "the report's files")
        if said is e and not isinstance(e, NotWritable):
            raise
        print(f"error: {said}", file=sys.stderr)
        return 2
    except OneSentenceError as e:  # found before any notebook ran (a bad parameter), a Slurm folder refused, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    if written is None:
        print("submitted; run the same command again to wait for the runs and render the report once they finish "
              f"(squeue -u $USER shows them), {time.perf_counter() - started:.0f} s", flush=True)
        return 0
    print(f"report written in {time.perf_counter() - started:.0f} s: "
          + ", ".join(str(p) for p in written.values() if p is not None), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
