import pytest

from vaehelpers.__main__ import main


def test_report_trains_each_weight_and_writes_four_figures(tmp_path, capsys):
    args = ["report", "--data", "builtin:60", "--epochs", "1", "--base-channels", "8", "--latent-dim", "4",
            "--kl-weights", "1,0", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    for weight in ("kl1", "kl0"):
        names = sorted(p.name for p in (tmp_path / "out" / "figures" / weight).iterdir())
        assert names == ["interpolation.png", "learning_curve.png", "prior_samples.png", "reconstructions.png"]
    assert len(list((tmp_path / "runs").iterdir())) == 2
    assert "validation −ELBO" in capsys.readouterr().out


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    assert main(["report", "--data", str(tmp_path / "absent.npz"), "--runs-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: Data source {tmp_path / 'absent.npz'} does not exist: give an image folder, an .npz/.npy file, or 'builtin'."


def test_bad_kl_weights_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--kl-weights", "1,-5"])
    assert "none negative" in capsys.readouterr().err
