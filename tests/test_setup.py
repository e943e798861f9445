"""The set-up files agree with each other: pyproject.toml, environment.yml, Makefile, README, CI."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_in_step_with_pyproject():
    project = _pyproject()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    python = next(d for d in conda if d.startswith("python"))
    minimum = re.search(r">=\s*3\.(\d+)", project["requires-python"]).group(1)
    assert int(python.split("=")[1].split(".")[1]) >= int(minimum)
    # Every package comes from pyproject through pip: conda brings only Python and pip.
    assert sorted(conda) == sorted([python, "pip"])
    (editable,) = pip
    extras = re.fullmatch(r"-e \.\[(.*)\]", editable).group(1).split(",")
    assert sorted(extras) == sorted(project["optional-dependencies"])
    assert re.search(r"install -e '\.\[" + ",".join(extras) + r"\]'", (ROOT / "Makefile").read_text())


def test_pyproject_names_the_required_libraries():
    project = _pyproject()
    names = [re.split(r"[<>=\[ ]", d)[0].lower() for d in project["dependencies"]]
    names += [re.split(r"[<>=\[ ]", d)[0].lower() for ds in project["optional-dependencies"].values() for d in ds]
    for required in ["torch", "torchvision", "jupyterlab", "nbconvert", "papermill", "matplotlib", "ipywidgets",
                     "tqdm", "nbval", "pytest"]:
        assert required in names
    assert not any(re.search(r"torch[^v]*==", d) for d in project["dependencies"])  # no pinned torch


def test_readme_opens_with_the_two_commands_and_ci_runs_the_tests():
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()] == ["make report", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
