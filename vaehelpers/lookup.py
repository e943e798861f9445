"""Looking up the runs already under a runs folder: which run of a setting is there, in which precision, and
whether it is finished.

A setting asked for with precision "auto" is the run of its settings already there, in whatever precision that
one was started (:func:`existing_config`), so that no run trains twice because two machines or commands would
choose differently; and a run is found under the names it had before runs were named by their data's content,
or before its data was renamed.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import replace
from pathlib import Path

from .data import ImageSet
from .store import Run, RunConfig, load_run


def existing_precisions(cfg: RunConfig, runs_dir: str | os.PathLike, data: ImageSet | str) -> list[str]:
    """The precisions in which a run of ``cfg``'s other settings has a checkpoint under ``runs_dir``."""
    return [p for p in ("bf16", "fp32")
            if (Path(runs_dir) / replace(cfg, precision=p).run_name(data) / "checkpoint.pt").exists()]


def existing_config(cfg: RunConfig, runs_dir: str | os.PathLike, data: ImageSet | str) -> RunConfig:
    """``cfg`` as the run of its settings under ``runs_dir`` is, wherever that was decided. Precision "auto" is
    the precision of the one there is (finished or interrupted), or of two the finished one. A run named by its
    data's path (trained before runs were named by their data's content) is found under its old name, where no
    run is under the new one: ``data_identity`` 1."""
    if isinstance(data, ImageSet) and cfg.data_identity == 2 and not cfg.data.startswith("builtin"):
        old = replace(cfg, data_identity=1)
        wanted = ("bf16", "fp32") if cfg.precision == "auto" else (cfg.precision,)
        exists = lambda c: any((Path(runs_dir) / replace(c, precision=p).run_name(data) / "checkpoint.pt").exists()
                               for p in wanted)  # noqa: E731
        cfg = old if not exists(cfg) and exists(old) else cfg
        if cfg.data_identity == 2 and not exists(cfg):  # the data renamed since: the run's name starts with its old name
            cfg = _renamed(cfg, Path(runs_dir), data, wanted) or cfg
    found = existing_precisions(cfg, runs_dir, data) if cfg.precision == "auto" else []
    if len(found) == 2:
        found = [p for p in found if _finished_in(Path(runs_dir) / replace(cfg, precision=p).run_name(data)) is not None]
    return replace(cfg, precision=found[0]) if len(found) == 1 else cfg


def _renamed(cfg: RunConfig, runs_dir: Path, data: ImageSet, precisions: tuple[str, ...]) -> RunConfig | None:
    """``cfg`` with the data's path a run of its settings recorded, where that run's name differs from ``cfg``'s only
    in its start: the same settings and data content (the name's hash), the data under another file name."""
    for precision in precisions:
        name = replace(cfg, precision=precision).run_name(data)
        for folder in sorted(runs_dir.glob("*" + glob.escape(name[len(cfg.tag):]))):
            if (folder / "checkpoint.pt").exists():
                try:
                    recorded = str(json.loads((folder / "config.json").read_text())["config"]["data"])
                except (OSError, ValueError, KeyError, TypeError):  # damaged: load_run says so where it is read
                    continue
                if replace(cfg, data=recorded, precision=precision).run_name(data) == folder.name:
                    return replace(cfg, data=recorded)
    return None


def _finished_in(run_dir: Path) -> Run | None:
    """The finished run ``run_dir`` holds, or None (one not there, unfinished or damaged)."""
    try:
        run = load_run(run_dir)
    except (OSError, ValueError):  # no checkpoint yet; RunDamaged
        return None
    return run if run.finished else None


def found_for(run: Run, cfg: RunConfig) -> Run:
    """A run found for ``cfg``, reading its images where ``cfg`` says they are now (a run named by the content of
    data since moved or copied recorded the old path)."""
    if run.config.data != cfg.data:
        run.config = replace(run.config, data=cfg.data)
    return run


def finished_run(cfg: RunConfig, runs_dir: str | os.PathLike, data: ImageSet | str,
                 settled: RunConfig | None = None) -> Run | None:
    """The finished run of ``cfg``'s settings under ``runs_dir`` (:func:`existing_config`), or None. ``settled``:
    what :func:`existing_config` answered for ``cfg``, where the caller has it already (not looked up again)."""
    settled = settled if settled is not None else existing_config(cfg, runs_dir, data)
    done = None if settled.precision == "auto" else _finished_in(Path(runs_dir) / settled.run_name(data))
    return None if done is None else found_for(done, cfg)
