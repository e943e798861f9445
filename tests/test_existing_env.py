"""An environment that already has PyTorch (Colab, a JupyterHub image, a conda env, a venv of your own): the one
command README.md and docs/install.md give, ``pip install -e '.[notebooks]'``, installs the project and its notebook
stack there without replacing that torch, and then the report starts and trains on it.

Each test makes such an environment here: a new venv whose interpreter also sees a folder of packages already
installed (this suite's own, linked), as a Colab or JupyterHub Python sees the packages of its image.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "pip install -e '.[notebooks]'"
"""The documented command, as README.md and docs/install.md write it."""
SITE = Path(sysconfig.get_paths()["purelib"])  # where this suite's packages (torch among them) are installed
OWN = re.compile(r"^(vaehelpers|__editable__.*vaehelpers)", re.I)  # the project itself: what the command installs


def _site_packages(env: Path) -> Path:
    return env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _preinstalled(folder: Path, names: set[str] | None) -> Path:
    """``folder`` filled with links to this suite's installed packages: ``names`` and what they need (None: all of
    them, the project itself aside)."""
    folder.mkdir()
    if names is None:
        tops = {p.name for p in SITE.iterdir() if not OWN.match(p.name)}
    else:
        tops, todo, seen = set(), [(n, frozenset()) for n in names], {}
        while todo:  # the closure of the requirements, extras and markers evaluated here
            name, extras = todo.pop()
            key = canonicalize_name(name)
            if key in seen and extras <= seen[key]:
                continue
            seen[key] = seen.get(key, frozenset()) | extras
            dist = metadata.distribution(name)
            tops |= {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}
            for line in dist.requires or []:
                req = Requirement(line)
                if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in seen[key] or {""}):
                    todo.append((req.name, frozenset(req.extras)))
    for top in tops:
        (folder / top).symlink_to(SITE / top)
    return folder


def _environment(tmp_path: Path, preinstalled: Path) -> tuple[Path, dict]:
    """A new venv (no packages of its own) that sees ``preinstalled``, and the environment to run it in: no
    PYTHONPATH (this suite's view of the project), no virtualenv of ours active."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    (_site_packages(env) / "preinstalled.pth").write_text(f"{preinstalled}\n")
    (env / "share").mkdir()  # and the data files those packages installed: nbconvert's templates, the kernel spec
    (env / "share" / "jupyter").symlink_to(Path(sys.prefix) / "share" / "jupyter")
    variables = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return env, dict(variables, PIP_DISABLE_PIP_VERSION_CHECK="1")


def _run(env: Path, args: list[str], variables: dict, cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run([str(env / "bin" / "python"), *args], capture_output=True, text=True, cwd=cwd,
                          env=variables, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _pip_command(text: str) -> list[str]:
    """The install command's arguments as the docs write it (``pip install -e '.[notebooks]'``), for pip here."""
    assert text == INSTALL
    return ["-m", "pip", "install", "-e", f"{ROOT}[notebooks]"]


TRAINED = re.compile(r"^kl_weight=1 epoch 1/2: objective")
"""The first run's first epoch, as its notebook prints it (one worker: its lines are not prefixed)."""


def test_the_docs_give_the_one_command():
    for page in ("README.md", "docs/install.md"):
        assert INSTALL in (ROOT / page).read_text(), page


def test_the_command_keeps_the_torch_there_and_the_report_starts_and_trains(tmp_path):
    """Offline: every package the project needs is already there (as in a JupyterHub image); the command installs
    the project alone, the torch imported afterwards is the one that was there, and `python -m vaehelpers report`
    plans and trains a run in a notebook kernel of that environment until it is stopped."""
    env, variables = _environment(tmp_path, _preinstalled(tmp_path / "image", None))
    before = {p.name for p in _site_packages(env).iterdir()}
    # --no-index: nothing may be fetched, so nothing can be replaced; no build isolation: setuptools is there
    # too. PIP_CONFIG_FILE=/dev/null: no configured constraint (this machine caps torch) holds torch in place.
    _run(env, [*_pip_command(INSTALL), "--no-index", "--no-build-isolation"],
         dict(variables, PIP_CONFIG_FILE=os.devnull), tmp_path)
    added = {p.name for p in _site_packages(env).iterdir()} - before - {"__pycache__"}
    assert added and all(OWN.match(name) for name in added), added  # the project, nothing else
    seen = json.loads(_run(env, ["-c", "import json, torch, vaehelpers, papermill, jupyterlab; print(json.dumps("
                                       "[torch.__version__, torch.__file__, vaehelpers.__file__]))"],
                           variables, tmp_path))
    assert seen[0] == torch.__version__ and seen[1].startswith(str(tmp_path / "image")), seen
    assert Path(seen[2]).resolve().is_relative_to(ROOT), seen  # editable: this checkout

    report = subprocess.Popen(
        [str(env / "bin" / "python"), "-m", "vaehelpers", "report", "--data", "builtin:60", "--epochs", "2",
         "--base-channels", "8", "--latent-dim", "4", "--batch-size", "20", "--kl-weights", "1,100,0",
         "--no-sigma-vae", "--extra-seeds", "none", "--precision", "fp32", "--compile", "no", "--no-pdf",
         "--workers", "1", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env=dict(variables, VAEHELPERS_CACHE=str(tmp_path / "cache")), start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 180
    try:
        for line in report.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if TRAINED.search(line) or time.monotonic() > deadline:
                break
    finally:
        report.send_signal(signal.SIGTERM)  # as `timeout` would: every worker and kernel it started ends
        rest, _ = report.communicate(timeout=120)
    printed = "".join(lines) + rest
    assert any(line.startswith("== plan: 3 runs") for line in lines), printed[-3000:]
    assert any(TRAINED.search(line) for line in lines), printed[-3000:]
    assert report.returncode == 128 + signal.SIGTERM, printed[-3000:]


@pytest.mark.slow
def test_pip_plans_the_notebook_stack_around_a_torch_that_is_there_alone(tmp_path):
    """Where the environment holds torch alone (a conda env with PyTorch, no torchvision, no notebook stack), pip's
    plan for the command installs the project's other packages and the whole notebook stack, and neither replaces
    torch nor asks for another: a torchvision it adds is one that pairs with that torch. Resolved against the
    package index (PyPI), with no constraint holding torch in place (this machine's pip caps it)."""
    env, variables = _environment(tmp_path, _preinstalled(tmp_path / "image", {"torch", "pip"}))
    report = tmp_path / "plan.json"
    _run(env, [*_pip_command(INSTALL), "--dry-run", "--quiet", "--report", str(report)],
         dict(variables, PIP_CONSTRAINT=os.devnull), tmp_path, timeout=900)
    planned = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in
               json.loads(report.read_text())["install"]}
    assert "torch" not in planned and not any(n.startswith(("nvidia-", "triton", "cuda-")) for n in planned), planned
    assert {"vaehelpers", "papermill", "jupyterlab", "nbconvert", "ipykernel", "ipywidgets", "scipy",
            "matplotlib", "tensorboard", "submitit"} <= set(planned), sorted(planned)
    for name, meta in planned.items():  # torchvision, say: each requirement on torch met by the torch there
        for line in meta.get("requires_dist", []):
            req = Requirement(line)
            if canonicalize_name(req.name) == "torch" and (req.marker is None or req.marker.evaluate()):
                assert req.specifier.contains(torch.__version__.split("+")[0], prereleases=True), (name, line)


@pytest.mark.parametrize("active, named", [
    ({"VIRTUAL_ENV": "/opt/envs/mine"}, "/opt/envs/mine"),
    ({"CONDA_PREFIX": "/opt/conda/envs/faces", "CONDA_DEFAULT_ENV": "faces"}, "/opt/conda/envs/faces"),
    ({"CONDA_PREFIX": "/opt/conda", "CONDA_DEFAULT_ENV": "base"}, None),  # conda's own, active in many shells
    ({"VIRTUAL_ENV": str(ROOT / ".venv")}, None),  # the project's own, activated
    ({}, None),  # a clean shell, as CI's
    ({"PYTHON": sys.executable, "VENV": "/tmp/another-venv"}, sys.prefix),  # none active, but a Python with torch
])
def test_make_says_in_one_line_that_it_builds_its_own_venv_beside_an_active_environment(active, named):
    """Said before the build and again after it, as pip's log scrolls the first away."""
    variables = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV")}
    active = dict(active)
    settings = [f"{k}={active.pop(k)}" for k in ("PYTHON", "VENV") if k in active]
    printed = subprocess.run(["make", "-n", "-B", "venv", *settings], cwd=ROOT, env=dict(variables, **active),
                             capture_output=True, text=True, check=True).stdout  # -n: what it would run; -B: stale
    notes = [line for line in printed.splitlines() if "Note:" in line]
    if named is None:
        assert not notes, notes
    else:
        assert len(notes) == 2 and notes[0] == notes[1] and INSTALL in notes[0], notes
        assert (f"active environment {named};" in notes[0] if not settings else
                f"beside {named}, whose {sys.executable} already has PyTorch;" in notes[0]), notes
        assert "python -m vaehelpers report" in notes[0] and "docs/install.md" in notes[0]
    assert "-m venv " in printed  # it builds its own all the same
