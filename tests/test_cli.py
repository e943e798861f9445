"""The one command: python -m vaehelpers report, on tiny runs."""

import re
import shutil
import subprocess

import pytest

from vaehelpers.__main__ import main

from conftest import TINY, missing_part

pytestmark = pytest.mark.xdist_group("built")  # on the worker that makes conftest's `built` report once, with test_browser


def test_executed_notebooks_and_html_are_written(built):
    names = sorted(p.name for p in built.iterdir() if not p.name.startswith("."))  # .report.lock, .report.done
    assert (built / ".report.done").exists()  # written last: the render ended
    assert names[:2] == ["report.html", "report.ipynb"] and {"run-kl1.ipynb", "run-kl100.ipynb", "run-kl0.ipynb"} <= set(names)


@pytest.mark.latex
def test_pdf_is_written_where_latex_is_installed(built):
    missing = [tool for tool in ("xelatex", "pandoc") if shutil.which(tool) is None]
    if missing:
        missing_part(f"{' and '.join(missing)} not installed: `make latex` installs them (CI does)")
    assert (built / "report.pdf").read_bytes().startswith(b"%PDF")
    if shutil.which("pdfinfo") is None:
        missing_part("pdfinfo (poppler-utils) not installed: the PDF's pages were not counted")
    info = subprocess.run(["pdfinfo", str(built / "report.pdf")], capture_output=True, text=True).stdout
    assert int(re.search(r"Pages:\s+(\d+)", info).group(1)) >= 5


def test_html_answers_q1_to_q8_with_every_figure_and_no_code(built):
    html = (built / "report.html").read_text()
    headings = re.findall(r"<h2[^>]*>(Q\d)\.", html)
    assert headings == [f"Q{i}" for i in range(1, 9)]
    # Q2-Q5 for weights 1, 100 and 0 (12), four side-by-side comparisons, and in Q8 the KL per dimension,
    # three traversals, the rate-distortion curve and two σ-VAE comparisons.
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 23
    assert {"run-kl0.1.ipynb", "run-kl10.ipynb", "run-kl1-sigma-vae.ipynb"} <= {p.name for p in built.iterdir()}
    for measured in ("IWAE bound on −log p(x), k = 64", "MMD²", "PSNR", "σ-VAE, KL weight 1", "hair_length"):
        assert measured in html, measured
    assert "<math" in html  # the objective's formulas, as MathML
    assert not re.search(r'(src|href)="https?:', html)  # nothing fetched: self-contained, works offline
    assert "application/vnd.jupyter.widget" not in html and "report_runs(" not in html and "import " not in html
    assert "<table" in html and "active latent dimensions" in html


def test_second_build_reuses_the_runs(built, capsys):
    runs = built.parent / "runs"
    stamps = {p: (p / "checkpoint.pt").stat().st_mtime_ns for p in runs.iterdir()}
    pdf = built / "report.pdf"  # after test_pdf_is_written_where_latex_is_installed: this file's order, one worker
    had_pdf = pdf.exists()
    assert main(["report", *TINY, "--runs-dir", str(runs), "--out", str(built), "--no-pdf"]) == 0
    assert {p: (p / "checkpoint.pt").stat().st_mtime_ns for p in runs.iterdir()} == stamps
    out = capsys.readouterr().out
    assert "epoch 1/2" not in out and out.count("is up to date") == 6  # no run notebook executed again
    # the HTML alone this time, and no PDF of the build before (where LaTeX is) left beside it to contradict it
    assert ("PDF not written (--no-pdf)" + (f"; {pdf} of an earlier build removed" if had_pdf else "") + "\n") in out
    assert not pdf.exists()


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "absent.npz"
    assert main(["report", "--data", str(missing), "--runs-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: Parameter data = '{missing}' does not exist: give an image folder, an .npz/.npy file, or 'builtin'.")


def test_bad_kl_weights_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--kl-weights", "1,-5"])
    assert "none negative" in capsys.readouterr().err


def test_bad_precision_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--data", "builtin:0"], "Data source 'builtin:0': write builtin:N with N a positive whole number"),
    (["--base-channels", "0"], "base_channels must be at least 1"),
    (["--kl-weights", "1,100"], "lacks 0: the report needs 1, 100 and 0."),
    (["--lr", "inf"], "lr must be a finite number > 0; got inf."),
    (["--data", "builtin:29"], "has 29 images, so its 5% validation split holds 1: the figures need 2, so use at least 30"),
])
def test_every_parameter_is_checked_before_any_run_trains(tmp_path, capsys, args, message):
    assert main(["report", *args, "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing trained, no folder


def test_infinite_kl_weight_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--kl-weights", "1,100,0,inf"])
    assert "needs finite weights, none negative" in capsys.readouterr().err


def test_a_diverging_report_fails_with_one_sentence_and_no_finished_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["report", *TINY, "--lr", "1e6", "--kl-weights", "1,100,0", "--runs-dir", str(runs),
                 "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: 4 of 4 runs failed: KL weight 1, latent size 4, seed 0: TrainingDiverged: Training KL "
                          "weight 1 (likelihood fixed, lr 1e+06) diverged at epoch 1, step ")
    assert "try a lower learning rate (e.g. lr 100000)" in err and "σ-VAE, latent size 4, seed 0: TrainingDiverged" in err
    assert not list(runs.glob("*/checkpoint.pt"))  # nothing marked finished, nothing to reuse
    assert not (tmp_path / "out" / "report.html").exists()
