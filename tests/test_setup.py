"""The set-up files agree with each other: pyproject.toml, environment.yml, Makefile, README, CI."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_installs_the_lock():
    project = _pyproject()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    python = next(d for d in conda if d.startswith("python"))
    minimum = re.search(r">=\s*3\.(\d+)", project["requires-python"]).group(1)
    assert int(python.split("=")[1].split(".")[1]) >= int(minimum)
    # Every package comes from the lock through pip: conda brings only Python and pip.
    assert sorted(conda) == sorted([python, "pip"])
    assert pip == ["-r requirements-lock.txt", "-e ."]
    extras = re.search(r"^EXTRAS := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert sorted(extras) == sorted(project["optional-dependencies"])  # make lock locks every extra


def _name(requirement: str) -> str:
    """A distribution's name as PEP 503 normalises it (Jinja2 and jinja2, typing_extensions and typing-extensions)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", requirement.strip())[0]).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            name, version = line.split("==")
            pins[_name(name)] = version.strip()
    return pins


def test_lock_pins_what_pyproject_requires_and_nothing_else():
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    project, pins = _pyproject(), _lock()
    assert "make lock" in (ROOT / "requirements-lock.txt").read_text()[:300]  # how to refresh it
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for rs in project["optional-dependencies"].values() for r in rs]
    for requirement in wanted:
        name = _name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in the lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"the lock's {name} {pins[name]} is outside {requirement}"
    # Everything the requirements need, transitively, from the installed packages' metadata: the lock holds
    # exactly that, so a dependency dropped from pyproject.toml leaves no stale pin behind.
    needed, todo = set(), [(r, frozenset()) for r in wanted]  # (requirement, the extras its requirer was asked for)
    while todo:
        requirement, extras = todo.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in extras or {""}):
            continue
        name, asked = _name(requirement.name), frozenset(requirement.extras)  # extras asked of this package
        if (name, asked) not in needed:
            needed.add((name, asked))
            todo += [(Requirement(r), asked) for r in distribution(name).requires or []]
    assert {name for name, _ in needed} == set(pins)


def test_the_environment_is_exactly_the_lock():
    """`make` installs the lock, then the project without dependencies: pip freeze shows the lock and no more
    (pip itself aside: it comes with the virtual environment)."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(f"pytest runs in {sys.prefix}, not in the project's .venv that make builds from the lock")
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    installed = {_name(line): line.split("==")[1] for line in frozen if "==" in line and _name(line) != "pip"}
    assert not [line for line in frozen if "==" not in line and not line.startswith("#")], frozen
    pins = _lock()
    extra, missing = sorted(set(installed) - set(pins)), sorted(set(pins) - set(installed))
    assert not extra and not missing, (f"installed but not locked: {extra}; locked but not installed: {missing}"
                                       " (rebuild: rm -rf .venv && make venv)")
    assert installed == pins


def test_pyproject_names_the_required_libraries():
    project = _pyproject()
    names = [re.split(r"[<>=\[ ]", d)[0].lower() for d in project["dependencies"]]
    names += [re.split(r"[<>=\[ ]", d)[0].lower() for ds in project["optional-dependencies"].values() for d in ds]
    for required in ["torch", "torchvision", "jupyterlab", "nbconvert", "papermill", "matplotlib", "ipywidgets",
                     "tqdm", "nbval", "pytest"]:
        assert required in names
    assert not any(re.search(r"torch[^v]*==", d) for d in project["dependencies"])  # no pinned torch


def test_readme_opens_with_the_commands_and_ci_runs_every_test_and_the_quick_tier_with_the_other_cpu_view():
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()] == [
        "make report", "make test", "make check"]
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "export CI=true" in ci and "make check" in ci  # every test; the real parts installed, failing if missing
    assert 'make test PYTEST_ARGS="--native-bf16=other"' in ci  # the quick tier again, the CPU seen the other way
    makefile = (ROOT / "Makefile").read_text()
    check = makefile.split("\ncheck:")[1].split("\n\n")[0]
    assert all(f"$(MAKE) --no-print-directory {part}" in check for part in ("latex", "browser", "slurm"))
    test = makefile.split("\ntest:")[1].split("\n\n")[0]
    assert "$(MAKE)" not in test and '-m "$(QUICK)"' in test  # installs nothing, starts nothing
    assert "QUICK := not (slurm or browser or latex or slow)" in makefile


def test_the_tiers_markers_are_registered_and_each_marks_tests():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    registered = {m.split(":")[0] for m in config["markers"]}
    assert {"slurm", "browser", "latex", "slow", "cuda", "real_probe"} <= registered and "--strict-markers" in config["addopts"]
    counts = subprocess.run([sys.executable, "-c", _COUNT_MARKS, str(ROOT / "tests")], capture_output=True, text=True,
                            cwd=ROOT)
    marked = {}  # marker -> the files of the tests it marks
    for line in counts.stdout.split("MARKS\n")[-1].splitlines():
        name, path = line.split()
        marked.setdefault(name, set()).add(path)
    # every test of a real part is marked, and nothing else is: `make test` leaves all of them out, and only them
    assert marked.pop("slurm-all") == {"tests/test_slurm.py"} and marked.pop("slurm") == {"tests/test_slurm.py"}
    assert marked.pop("browser-all") == {"tests/test_browser.py"} and marked.pop("browser") == {"tests/test_browser.py"}
    assert marked.pop("latex") == {"tests/test_cli.py"}  # the PDF of `built`
    assert marked.pop("slow") >= {"tests/test_sweep.py", "tests/test_gpu_check.py"}, counts.stdout[-1000:]
    assert not marked, marked  # e.g. "slurm-unmarked": a test of tests/test_slurm.py that `make test` would run


_COUNT_MARKS = """
import sys, pytest
seen = []
class Count:
    def pytest_collection_modifyitems(self, items):
        for item in items:
            path = item.nodeid.split("::")[0]
            for name in ("slurm", "browser", "latex", "slow"):
                if item.get_closest_marker(name):
                    seen.append((name, path))
            for name in ("slurm", "browser"):  # a file of that part whose tests are not all marked
                if path == f"tests/test_{name}.py" and not item.get_closest_marker(name):
                    seen.append((name + "-unmarked", path))
                elif path == f"tests/test_{name}.py":
                    seen.append((name + "-all", path))
pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", sys.argv[1]], plugins=[Count()])
print("MARKS")
for name, path in seen:
    print(name, path)
"""


def test_a_group_of_tests_runs_on_one_xdist_worker(tmp_path):
    """`make test` and `make check` keep the Slurm cluster's tests on one worker with ``--dist loadgroup``; with
    pytest 9.2 and pytest-xdist 3.8 that grouping silently stopped (pytest-dev/pytest-xdist#1386): caught here."""
    for name in ("a", "b"):
        (tmp_path / f"test_{name}.py").write_text(
            "import os, pytest\n"
            "@pytest.mark.xdist_group('together')\n"
            "@pytest.mark.parametrize('i', range(3))\n"
            f"def test_{name}(i):\n"
            "    print('WORKER', os.environ['PYTEST_XDIST_WORKER'])\n")
    ran = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "--no-loadscope-reorder", "-v", "-p",
                          "no:cacheprovider", "-p", "no:randomly", "-o", "addopts=", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:]
    workers = re.findall(r"\[(gw\d)\] .*PASSED", ran.stdout)
    assert len(workers) == 6 and len(set(workers)) == 1, ran.stdout[-2000:]
