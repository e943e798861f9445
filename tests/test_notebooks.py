"""The notebooks: committed clean, parameterised, stopped early by bad parameters, run under nbval."""

import json
import re
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TINY = dict(data="builtin:150", epochs=2, image_size=32, base_channels=8, latent_dim=4, batch_size=50)
# the three notebooks under nbval, in that order: explore.ipynb explores the runs report.ipynb trains


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs: clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_as_the_nbstripout_git_filter_leaves_them(path):
    """nbstripout is the notebooks' git filter (.gitattributes; make installs it): it finds nothing to strip."""
    assert "*.ipynb filter=nbstripout" in (ROOT / ".gitattributes").read_text().splitlines()
    stripped = subprocess.run([sys.executable, "-m", "nbstripout", "--textconv", str(path)], capture_output=True,
                              text=True, check=True).stdout
    assert stripped == path.read_text(), f"{path.name} is not as nbstripout leaves it: run nbstripout on it"


@pytest.mark.parametrize("name", ["run.ipynb", "report.ipynb"])
def test_first_code_cell_holds_plain_parameters(name):
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "parameters" in first["metadata"]["tags"]
    for line in "".join(first["source"]).splitlines():  # name = literal, nothing computed
        # a type papermill cannot read ("X | None") is written as the string "Optional[X]", which it reads
        assert re.fullmatch(r"\w+: (\"Optional\[[\w\[\]]+\]\"|[\w\[\]]+) = (\"[^\"]*\"|[-\d.e]+|None|True|False|\[[\d., ]*\])"
                            r"\s*(#.*)?", line), line


BAD_PARAMETERS = [
    (dict(kl_weight=-1), "kl_weight must be a finite number >= 0; got -1."),
    (dict(epochs=0), "epochs must be at least 1; got 0."),
    (dict(epochs=2.5), "epochs = 2.5 should be a whole number."),
    (dict(data="/nowhere/animation.npz"), "data = '/nowhere/animation.npz' does not exist"),
    (dict(device="gpu"), "device = 'gpu' is not a device"),
    (dict(precision="half"), "precision must be one of auto, bf16, fp32; got 'half'."),
]


@pytest.mark.parametrize("bad, message", BAD_PARAMETERS)
def test_a_bad_parameter_is_one_sentence_from_the_notebooks_check(bad, message):
    """What run.ipynb's cell after the parameters does with them (its code, run here without a kernel)."""
    from vaehelpers.params import ParameterError, check_device, notebook_settings, run_config

    namespace = {**TINY, "device": "auto", "runs_dir": "runs", **bad}
    check = next(c for c in json.loads((ROOT / "notebooks" / "run.ipynb").read_text())["cells"]
                 if c["cell_type"] == "code" and "run_config(" in "".join(c["source"]))
    assert "config = run_config(**notebook_settings(globals()))" in "".join(check["source"])
    assert "check_device(device)" in "".join(check["source"])
    with pytest.raises(ParameterError) as raised:
        run_config(**notebook_settings(namespace))
        check_device(namespace["device"])
    assert message in str(raised.value) and len(str(raised.value).splitlines()) == 1
    assert raised.value._render_traceback_() == [f"ParameterError: {raised.value}"]  # how IPython shows it


def test_a_bad_parameter_stops_the_notebook_in_its_first_cells_with_one_sentence(tmp_path):
    """One case of ``BAD_PARAMETERS`` through papermill: the kernel stops at the check, before training."""
    bad, message = BAD_PARAMETERS[0]
    params = dict(TINY, runs_dir=str(tmp_path / "runs"), **bad)
    with pytest.raises(PapermillExecutionError) as raised:
        papermill.execute_notebook(ROOT / "notebooks" / "run.ipynb", tmp_path / "out.ipynb", parameters=params,
                                   progress_bar=False)
    assert raised.value.ename == "ParameterError" and message in raised.value.evalue
    assert raised.value.exec_count <= 3  # the parameters, papermill's injected cell, the check
    assert len(raised.value.evalue.splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_papermill_whole_number_kl_weight_names_the_float_run(tmp_path):
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(ROOT / "notebooks" / "run.ipynb", out, progress_bar=False,
                               parameters=dict(TINY, kl_weight=100, runs_dir=str(tmp_path / "runs")))
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("builtin150_kl100_")
    text = out.read_text()
    assert "image/png" in text and "epoch 2/2" in text


def test_notebooks_pass_nbval_with_tiny_parameters(tmp_path):
    runs = str(tmp_path / "runs")
    for name, params in (("run.ipynb", dict(TINY, kl_weight=1, runs_dir=runs)),
                         ("report.ipynb", dict(TINY, runs_dir=runs)),
                         ("explore.ipynb", dict(runs_dir=runs))):  # explores the runs report.ipynb trained
        papermill.execute_notebook(ROOT / "notebooks" / name, tmp_path / name, parameters=params, prepare_only=True)
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
                             "run.ipynb", "report.ipynb", "explore.ipynb"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout)


def test_relative_paths_in_notebooks_start_at_the_project_folder(tmp_path, monkeypatch):
    from vaehelpers.params import PROJECT, project_path, run_config

    monkeypatch.chdir(tmp_path)  # JupyterLab starts kernels in notebooks/, papermill in the caller's folder
    assert project_path("runs") == PROJECT / "runs" and project_path(tmp_path) == tmp_path
    assert run_config(data="notebooks").data == str(PROJECT / "notebooks")  # a folder that exists in the project
    assert run_config(data="builtin:10").data == "builtin:10"


@pytest.mark.parametrize("name, extras", [("run.ipynb", {"device", "runs_dir", "checkpoint_every", "compiled"}),
                                          ("report.ipynb", {"device", "runs_dir", "kl_weights", "sigma_vae", "seeds",
                                                            "latent_dims", "extra_seeds", "train_missing"})])
def test_parameter_cells_match_the_run_settings(name, extras):
    """Each parameter that is a run setting has RunConfig's type and default; the others are the notebook's own."""
    import dataclasses
    import typing

    from vaehelpers.params import SETTING_TYPES
    from vaehelpers.store import RunConfig

    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    namespace: dict = {}
    exec("".join(first["source"]), namespace)
    annotations = {name: eval(kind, {"Optional": typing.Optional}) if isinstance(kind, str) else kind
                   for name, kind in namespace["__annotations__"].items()}
    assert set(annotations) - set(SETTING_TYPES) == extras
    # papermill knows every parameter (else each run's log says "Passed unknown parameter" for what the build passes)
    assert set(papermill.inspect_notebook(str(ROOT / "notebooks" / name))) == set(annotations)
    for setting in set(annotations) & set(SETTING_TYPES):
        kind = SETTING_TYPES[setting]
        assert annotations[setting] == (str if typing.get_origin(kind) is typing.Literal else kind), setting
        assert namespace[setting] == defaults[setting], setting


def test_the_notebooks_kernels_are_local_and_print_no_tcp_warning(tmp_path, capfd):
    """ipykernel warns, on the user's terminal, that a kernel over TCP runs without encryption: the build's kernels
    use Unix sockets, where that does not apply (and the check can fail: papermill's default kernel warns)."""
    import nbformat
    from vaehelpers.execute import execute_notebook

    transport = "import json; print(json.load(open(get_ipython().config.IPKernelApp.connection_file))['transport'])"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(transport)],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(tmp_path / "in.ipynb", tmp_path / "tcp.ipynb", progress_bar=False)
    assert "running over TCP without encryption" in capfd.readouterr().err
    executed = execute_notebook(tmp_path / "in.ipynb", tmp_path / "ipc.ipynb", progress_bar=False)
    assert "without encryption" not in capfd.readouterr().err
    assert executed.cells[0].outputs[0]["text"].strip() == "ipc"
