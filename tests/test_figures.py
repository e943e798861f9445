import pytest
import torch

from vaehelpers import figures


@pytest.fixture
def run(two_runs):
    """The shared run of KL weight 1 (tests/conftest.py): 64×64, snapshots of epochs 3 and 6, a panel of 4."""
    return two_runs.kl1


def test_learning_curve_has_train_and_validation(run):
    fig = figures.learning_curve(run)
    elbo_axis = fig.axes[0]
    assert [line.get_label() for line in elbo_axis.get_lines()] == ["training", "validation"]
    assert list(elbo_axis.get_lines()[1].get_ydata()) == run.history["val_neg_elbo"]
    assert "nats" in elbo_axis.get_ylabel() and elbo_axis.get_xlabel() == "epoch"


def test_reconstructions_one_panel_per_epoch_originals_on_top(run):
    fig = figures.reconstructions(run)
    assert len(fig.axes) == 2
    shown = fig.axes[0].get_images()[0].get_array()
    top_left = torch.from_numpy(shown[2:66, 2:66].copy()).permute(2, 0, 1)
    assert torch.equal(top_left, run.snapshots["panel"][0])
    with pytest.raises(ValueError, match="No snapshots"):
        figures.reconstructions(run, epochs=[7])


def test_interpolation_ends_are_the_reconstructions(run):
    panel = run.snapshots["panel"]
    path = figures.interpolate(run.model, panel[0].float() / 255, panel[1].float() / 255, steps=5)
    assert path.shape == (5, 3, 64, 64)
    assert torch.equal(path[0], run.snapshots["epochs"][6]["recon"][0])
    assert torch.equal(path[-1], run.snapshots["epochs"][6]["recon"][1])


def test_figures_save_as_png(run, tmp_path):
    for make in (figures.learning_curve, figures.reconstructions, figures.prior_samples, figures.interpolation):
        path = figures.save(make(run), tmp_path / f"{make.__name__}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
