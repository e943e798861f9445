"""The parameters of the notebooks and of the command line, and every check they get before anything trains.

The settings of a run are :class:`~vaehelpers.store.RunConfig`'s fields (:data:`SETTING_TYPES`); a
bad one is a :class:`ParameterError`, one sentence that IPython shows without a traceback.
"""

from __future__ import annotations

import typing
import warnings
from pathlib import Path

import torch

from .data import parse_builtin
from .errors import OneSentenceError
from .files import ensure_writable, free_bytes, no_room
from .objective import Likelihood
from .store import RunConfig, run_bytes
from .devices import GPUUnusable, resolve_device
from .lookup import existing_config, existing_precisions
from .train import check_split

PROJECT = Path(__file__).resolve().parent.parent
ASSIGNMENT_WEIGHTS = (1.0, 100.0, 0.0)
REPORT_WEIGHTS = (1.0, 100.0, 0.0, 0.1, 10.0)
"""The assignment's three weights, then two more for the rate–distortion curve."""

ASSIGNMENT = {"epochs": 100, "lr": 1e-4, "batch_size": 100, "latent_dim": 20, "base_channels": 32}
"""The reference report's settings, used when --data is given."""

QUICK = {"data": "builtin:6000", "epochs": 16, "lr": 1e-3, "batch_size": 50, "latent_dim": 20, "base_channels": 16}
"""The default without --data: the built-in faces, sized so that the whole report (twelve runs) fits in minutes on
a 2-core CPU. lr 1e-3 instead of the assignment's 1e-4, which learns too little in so few epochs; batch 50, whose
twice as many steps reconstruct better in less time than 20 epochs of batch 100 (docs/speed.md, "The budget")."""

QUICK_EXTRA_SEEDS = (1, 2)
"""With the quick budget, two more seeds of each of the assignment's settings (KL weights 1, 100 and 0), trained
beside the other runs by the local executor: three seeds each, so that Welch's test of the comparisons the
discussion makes has the degrees of freedom to show them (two seeds leave it about one; docs/statistics.md, "Measured")."""


def project_path(path: str | Path) -> Path:
    """A notebook's relative path taken from the project folder, not from the kernel's folder.

    JupyterLab starts a kernel in the notebook's own folder (notebooks/), papermill in the
    caller's; anchoring relative paths at the project makes "runs" mean the same in both.
    """
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT / path


class ParameterError(OneSentenceError, ValueError):
    """A bad notebook parameter. IPython shows it as its one sentence, without a traceback."""


SETTING_TYPES: dict[str, object] = typing.get_type_hints(RunConfig)
"""The settings of a run, with their types: :class:`~vaehelpers.store.RunConfig`'s fields, the one source
from which the notebooks' parameter checks and the command line's options are derived."""
KINDS = {int: ((int,), "a whole number"), float: ((int, float), "a number"), str: ((str,), "a string")}


def notebook_settings(namespace: dict) -> dict:
    """The run settings among a notebook's variables (its parameters cell, after papermill's injections)."""
    return {name: namespace[name] for name in SETTING_TYPES if name in namespace}


def run_config(**params) -> RunConfig:
    """A :class:`RunConfig` from notebook parameters, or a :class:`ParameterError` naming the bad one."""
    for name, value in params.items():
        if name not in SETTING_TYPES:
            raise ParameterError(f"Unknown parameter {name!r}; the parameters are {', '.join(SETTING_TYPES)}.")
        wanted = KINDS.get(SETTING_TYPES[name])  # type: ignore[call-overload]
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
    except GPUUnusable as e:
        raise ParameterError(str(e)) from None
    except (RuntimeError, TypeError):
        raise ParameterError(f"Parameter device = {device!r} is not a device: use 'auto', 'cpu', 'cuda' or 'mps'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"Parameter device = {device!r} asks for CUDA, but no CUDA GPU is visible: use 'auto' or 'cpu'.")
    return dev


def check_report(kl_weights: list[float], device: str = "auto", likelihood: Likelihood = "fixed",
                 require: bool = True, **settings) -> dict[float, RunConfig]:
    """Every check a report's runs need, before any of them trains: the weights (1, 100 and 0 with the
    assignment's fixed likelihood, unless ``require`` is False: a seed that trains weight 1 alone), each
    run's settings, the device, and the data (present, readable, and large enough for the validation split).
    Returns the run configurations by weight, or raises :class:`ParameterError` with one sentence."""
    weights = [float(w) for w in kl_weights]
    missing = [f"{w:g}" for w in ASSIGNMENT_WEIGHTS if w not in weights] if likelihood == "fixed" and require else []
    if missing:
        raise ParameterError(f"Parameter kl_weights = {kl_weights!r} lacks {', '.join(missing)}: the report needs 1, 100 and 0.")
    configs = {w: run_config(kl_weight=w, likelihood=likelihood, **settings) for w in weights}
    check_device(device)
    first = next(iter(configs.values()))
    try:
        check_split(first.load_images(), first)
    except (OSError, ValueError) as e:
        raise ParameterError(str(e)) from None
    return configs


def check_space(configs: list[RunConfig], runs_dir: Path, out_dir: Path, report_bytes: int) -> int:
    """Check, before anything trains, that ``runs_dir`` and ``out_dir`` take files and that their disks hold
    the runs not yet trained (:func:`~vaehelpers.store.run_bytes` each; a config of precision "auto" is trained
    where a run of its settings exists in either) and ``report_bytes`` of report; the sum where both are on one
    filesystem. Raises :class:`~vaehelpers.files.NotWritable` in one sentence; returns the number of runs still
    to train."""
    with warnings.catch_warnings():  # the data's skip and conversion lines were said by check_report
        warnings.simplefilter("ignore")
        data = configs[0].load_images()
    def trained(cfg: RunConfig) -> bool:
        found = existing_precisions(existing_config(cfg, runs_dir, data), runs_dir, data)
        return bool(found) if cfg.precision == "auto" else cfg.precision in found

    todo = [cfg for cfg in configs if not trained(cfg)]
    runs_need = sum(run_bytes(cfg, len(data)) for cfg in todo)
    runs_what = f"the {len(todo)} run{'s' if len(todo) != 1 else ''} still to train"
    ensure_writable(runs_dir, runs_what)
    ensure_writable(out_dir, "the report")
    if runs_dir.stat().st_dev == out_dir.stat().st_dev:
        checks = [(runs_dir, runs_need + report_bytes, f"{runs_what} and the report")]
    else:
        checks = [(runs_dir, runs_need, runs_what), (out_dir, report_bytes, "the report")]
    for folder, need, what in checks:
        if free_bytes(folder) < need:
            raise no_room(folder, need, what)
    return len(todo)
