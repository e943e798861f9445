"""The callbacks of notebooks/explore.ipynb, without a browser, and the notebook under papermill."""

import base64
import json
from pathlib import Path

import papermill
import pytest
import torch
from papermill.exceptions import PapermillExecutionError

from vaehelpers.explore import Explorer, default_run, finished_runs, png, set_quietly

ROOT = Path(__file__).resolve().parents[1]
LATENT = 20  # conftest.TWO_RUNS


@pytest.fixture
def runs_dir(two_runs, monkeypatch):
    """The shared runs (tests/conftest.py: KL weight 1 and 0, and one unfinished), their data cache in use."""
    monkeypatch.setenv("VAEHELPERS_CACHE", str(two_runs.cache_dir))
    return two_runs.runs_dir


@pytest.fixture
def explorer(runs_dir, two_runs):
    return Explorer.open(two_runs.kl1.dir)


def test_finished_runs_are_listed_by_weight(runs_dir, tmp_path):
    assert len(list(runs_dir.iterdir())) == 3  # the unfinished run is not offered
    labels = list(finished_runs(runs_dir))
    assert len(labels) == 2 and labels[0].startswith("KL weight 0 —") and labels[1].startswith("KL weight 1 —")
    assert finished_runs(tmp_path) == {}


def test_sliders_start_at_mu_and_decode_to_the_reconstruction(explorer):
    assert sorted(explorer.dims_by_kl) == list(range(LATENT))
    assert explorer.kl[explorer.dims_by_kl[0]] >= explorer.kl[explorer.dims_by_kl[-1]]
    z = explorer.code_of(3)
    original, reconstruction, error = explorer.reconstruction(3)
    assert torch.equal(explorer.decode(z), reconstruction) and torch.equal(original, explorer.images[3])
    assert error.shape == (3, 64, 64) and error.dtype == torch.uint8
    assert torch.equal(error[0], error[1])  # grey
    moved = list(z)
    moved[explorer.dims_by_kl[0]] += 3
    assert not torch.equal(explorer.decode(moved), reconstruction)


def test_interpolation_ends_and_spherical_path(explorer, monkeypatch):
    start, end = explorer.interpolate(0, 1, 0.0), explorer.interpolate(0, 1, 1.0)
    assert torch.equal(start, explorer.decode(explorer.code_of(0))) and torch.equal(end, explorer.decode(explorer.code_of(1)))
    assert torch.equal(explorer.interpolate(0, 1, 0.0, spherical=True), start)
    # The paths themselves, between two orthogonal codes of norm 3: the tiny model's own codes lie so near 0 (where
    # bf16 training leaves them) that its 8-bit decodings of the two midpoints can be equal.
    codes = {0: [3.0] + [0.0] * (LATENT - 1), 1: [0.0, 3.0] + [0.0] * (LATENT - 2)}
    monkeypatch.setattr(explorer, "code_of", codes.__getitem__)
    monkeypatch.setattr(explorer, "decode", torch.tensor)
    spherical, linear = explorer.interpolate(0, 1, 0.5, spherical=True), explorer.interpolate(0, 1, 0.5)
    assert torch.allclose(spherical, torch.tensor([1.0, 1.0] + [0.0] * (LATENT - 2)) * 3 / 2**0.5)  # on the circle of radius 3
    assert torch.allclose(linear, torch.tensor([1.5, 1.5] + [0.0] * (LATENT - 2)))  # on the chord


def test_prior_samples_repeat_for_a_seed(explorer):
    a, b, c = explorer.prior_samples(4, 7), explorer.prior_samples(4, 7), explorer.prior_samples(4, 8)
    assert a.shape == (4, 3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)


def test_png_is_an_image(explorer):
    data = png(explorer.images[:3], scale=2)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_notebook_runs_and_keeps_still_images_for_readers_without_a_kernel(runs_dir, tmp_path):
    out = tmp_path / "explore.ipynb"
    papermill.execute_notebook(ROOT / "notebooks" / "explore.ipynb", out, parameters={"runs_dir": str(runs_dir)},
                               progress_bar=False)
    outputs = [o for cell in json.loads(out.read_text())["cells"] for o in cell.get("outputs", [])]
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    stills = [o for o in widgets if "image/png" in o["data"]]
    assert len(widgets) == 5 and len(stills) == 4  # the run chooser falls back to a line of text
    assert all(base64.b64decode(o["data"]["image/png"])[:4] == b"\x89PNG" for o in stills)
    from vaehelpers.build import export_html
    html = export_html(out, tmp_path / "explore.html").read_text()
    assert html.count('src="data:image/png;base64,') >= 4 and "run: KL weight" in html
    assert not any(placeholder in html for placeholder in ("VBox(", "HBox(", "Dropdown("))


def test_notebook_without_runs_names_the_folder_it_searched_and_the_command_that_makes_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PapermillExecutionError) as raised:
        papermill.execute_notebook(ROOT / "notebooks" / "explore.ipynb", tmp_path / "out.ipynb",
                                   parameters={"runs_dir": "no-runs-here"}, progress_bar=False)
    # a relative runs_dir starts at the project folder, not at the working directory: the message says where
    assert f"No finished run in {ROOT / 'no-runs-here'} (runs_dir = 'no-runs-here')" in raised.value.evalue
    assert "make report" in raised.value.evalue


def test_the_explorer_opens_on_kl_weight_1_and_says_when_sliders_clamp_the_code(runs_dir, explorer):
    runs = finished_runs(runs_dir)
    assert list(runs)[0].startswith("KL weight 0 —") and default_run(runs).startswith("KL weight 1 —")
    assert default_run({"KL weight 0 — a": Path("a"), "KL weight 100 — b": Path("b")}) == "KL weight 0 — a"
    assert explorer.clamp_note(0) == ""
    assert explorer.clamp_note(2).startswith(f"This code lies outside ±3 in 2 of {LATENT} dimensions")


def test_a_value_the_browser_rounded_back_is_not_decoded_again(explorer):
    z = explorer.code_of(0)
    values, _ = explorer.sliders_from_code(z)
    first = explorer.decode_sliders(values)
    assert torch.equal(first, explorer.decode(explorer.code_from_sliders(values)))
    snapped = [round(v / explorer.SLIDER_STEP) * explorer.SLIDER_STEP for v in values]  # e.g. -0.6000000000000001
    assert explorer.decode_sliders(snapped) is None  # the browser's echo of what the kernel set
    moved = list(snapped)
    moved[0] += explorer.SLIDER_STEP  # one step of the most informative slider: a move
    assert torch.equal(explorer.decode_sliders(moved), explorer.decode(explorer.code_from_sliders(moved)))
    explorer.switch(explorer.run.dir)  # another run shows its own image, whatever the sliders say
    assert explorer.decode_sliders(moved) is not None


def test_sliders_map_to_the_code_in_kl_order_and_clamp_what_lies_outside(explorer):
    z = [0.5, -4.0, 1.0, 7.5, 0.0] + [0.25] * (LATENT - 5)
    values, clamped = explorer.sliders_from_code(z)
    assert values == [max(-3.0, min(3.0, z[d])) for d in explorer.dims_by_kl] and clamped == 2
    assert explorer.code_from_sliders([z[d] for d in explorer.dims_by_kl]) == z  # the inverse, unclamped
    labels = explorer.slider_labels()
    assert labels[0] == f"z{explorer.dims_by_kl[0]} ({explorer.kl[explorer.dims_by_kl[0]]:.1f})" and len(labels) == LATENT


def test_switching_runs_changes_the_explorer_in_place(runs_dir):
    runs = list(finished_runs(runs_dir).values())
    ex = Explorer.open(runs[0])
    keep = ex
    ex.switch(runs[1])
    assert keep is ex and ex.run.dir == runs[1] and ex.run.label == "KL weight 1"
    assert ex.decode(ex.code_of(0)).shape == (3, 64, 64)


def test_set_quietly_sets_every_control_and_calls_back_never():
    class Control:
        def __init__(self):
            self.value, self.description, self.calls = 0.0, "", []

        def observe(self, callback, names):
            self.calls.append(("observe", callback, names))

        def unobserve(self, callback, names):
            self.calls.append(("unobserve", callback, names))

    called = []
    controls = [Control(), Control()]
    set_quietly(controls, [1.5, -2.0], called.append, ["z1 (3.0)", "z0 (1.0)"])
    assert [c.value for c in controls] == [1.5, -2.0] and controls[1].description == "z0 (1.0)"
    assert called == [] and all([k for k, *_ in c.calls] == ["unobserve", "observe"] for c in controls)
