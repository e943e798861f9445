"""Sweeps: which runs a sweep holds, how the local executor shares the cores, and the report's seed spread."""

import re
from html import unescape as html_unescape

import pytest

from vaehelpers.__main__ import main
from vaehelpers.params import ParameterError
from vaehelpers.store import Setting
from vaehelpers.local import local_workers, tail_threads
from vaehelpers.sweep import RunSpec, Sweep
from vaehelpers.discussion import comparison_coverage
from vaehelpers.tables import latent_markdown, results_table

from conftest import TINY


def test_the_quick_sweep_is_six_runs_and_two_more_seeds_of_the_assignments_three():
    from vaehelpers.params import QUICK_EXTRA_SEEDS

    sweep = Sweep((1.0, 100.0, 0.0, 0.1, 10.0), extra_seeds=QUICK_EXTRA_SEEDS)  # `make report`'s, without --data
    runs = sweep.runs()
    assert len(runs) == 12 and runs[5] == RunSpec(1.0, "sigma-vae", 0, 20)  # the main six first
    assert runs[6:] == [RunSpec(w, "fixed", s, 20) for s in (1, 2) for w in (1.0, 100.0, 0.0)]
    assert [sweep.notebook_name(r) for r in (runs[0], runs[5], runs[7], runs[11])] == [
        "run-kl1.ipynb", "run-kl1-sigma-vae.ipynb", "run-kl100-seed1.ipynb", "run-kl0-seed2.ipynb"]
    assert sweep.describe() == ("KL weights 1, 100, 0, 0.1, 10 and the σ-VAE; seed 0, and seeds 1, 2 of weights 1, "
                                "100 and 0; latent size 20")
    # at a second latent size, the extra seeds train weight 1 alone: the latent sizes' comparison
    assert [r for r in Sweep((1.0, 100.0, 0.0), extra_seeds=(1,), latent_dims=(20, 50), sigma_vae=False).runs()
            if r.latent_dim == 50] == [RunSpec(w, "fixed", 0, 50) for w in (1.0, 100.0, 0.0)] + [RunSpec(1.0, "fixed", 1, 50)]


def test_seeds_and_latent_sizes_multiply():
    sweep = Sweep((1.0, 100.0, 0.0), seeds=(3, 4), latent_dims=(20, 50), sigma_vae=True)
    runs = sweep.runs()
    assert len(runs) == 2 * 2 * 4 and len(set(runs)) == len(runs)
    assert {(r.seed, r.latent_dim) for r in runs[:4]} == {(3, 20)}
    assert sweep.notebook_name(RunSpec(100.0, "fixed", 4, 50)) == "run-kl100-z50-seed4.ipynb"
    with pytest.raises(ParameterError, match="each once"):
        Sweep((1.0,), seeds=(1, 1))


@pytest.mark.parametrize("runs, base, cores, expected", [
    (6, 16, 2, (2, 1)),  # the quick budget on 2 cores: two runs at once, one thread each (1.26x measured)
    (6, 32, 2, (1, 2)),  # base 32 gains little from sharing 2 cores (1.07x): one run with both
    (6, 32, 16, (6, 2)),  # 16 cores: at most one worker per run
    (8, 32, 16, (8, 2)),
    (1, 16, 8, (1, 8)),
])
def test_local_workers_share_the_cores_by_model_size(runs, base, cores, expected):
    assert local_workers(runs, base, 64, "cpu", cores=cores) == expected


@pytest.mark.parametrize("threads, workers, tail, expected", [
    (1, 2, 1, 2),  # the default report's ninth run: both cores once the eighth ends
    (1, 2, 0, 1),  # an even number of runs: no last round of fewer
    (2, 4, 3, 2), (2, 4, 1, 8), (1, 3, 2, 1),
])
def test_a_last_round_of_fewer_runs_takes_the_idle_cores(threads, workers, tail, expected):
    assert tail_threads(threads, workers, tail) == expected


def _m(rate: float, distortion: float, neg_elbo: float = 100.0) -> dict:
    keys = ["bits_per_dim", "iwae_neg_log_px", "psnr_db", "sharpness_ratio", "code_std", "posterior_std",
            "aggregate_kl", "mmd", "sample_diversity", "calibrated_sigma", "calibrated_neg_elbo"]
    return {"rate": rate, "distortion": distortion, "neg_elbo": neg_elbo, "active_units": 3, "kl_per_dim": [0.0] * 4,
            "options": {"k": 8}, "iwae_images": 10, "mmd_images": 10, "data_diversity": 0.2, **dict.fromkeys(keys, 1.0)}


def test_the_table_gives_mean_and_sd_over_seeds():
    w1, w100, w0 = Setting("fixed", 1.0), Setting("fixed", 100.0), Setting("fixed", 0.0)
    by_seed = {w1: [_m(10, 100), _m(11, 101), _m(12, 102)], w100: [_m(0.5, 101.5)], w0: [_m(40, 99)]}
    table = results_table({s: ms[0] for s, ms in by_seed.items()}, by_seed)
    assert "KL weight 1 (n = 3 seeds, mean ± sd)" in table and "| 11.00 ± 1.00 |" in table.replace("−", "-")
    assert "| 3.0 ± 0.0 of 4 |" in table  # active units: mean over seeds


def test_latent_sizes_are_compared_by_welchs_test():
    by_latent = {20: [_m(10, 100, 100), _m(11, 100, 102)], 50: [_m(20, 100, 101), _m(21, 100, 103)]}
    text = latent_markdown(by_latent)
    assert "| KL weight 1, validation set | 20 latent dimensions (n = 2 seeds) | 50 latent dimensions (n = 2 seeds) |" in text
    # rate: +10 with both sds 0.707: t = 14.1 on 2 degrees of freedom, p = 0.005; the 95 % interval is
    # 10 ± 4.303 * 0.707; the −ELBO: +1 with sds 1.41, t = 0.71, not shown (the interval 1 ± 4.303 * 1.414)
    assert ("- Rate, 50 against 20 latent dimensions: 20.5 (n = 2) against 10.5 (n = 2), a difference of +10, 95 % "
            "interval +6.96 to +13 (Welch's t-test, 2.0 degrees of freedom, p = 0.005): **a real difference at 95 %**."
            ) in text
    assert ("- −ELBO, 50 against 20 latent dimensions: 102 (n = 2) against 101 (n = 2), a difference of +1, 95 % "
            "interval −5.08 to +7.08 (Welch's t-test, 2.0 degrees of freedom, p = 0.55): **not shown by 2 seeds each**."
            ) in text
    assert "- Active" not in text  # a count with no spread is in the table, not tested
    assert latent_markdown({20: by_latent[20]}).startswith("*One latent size (20) in this report")
    one_seed = latent_markdown({20: by_latent[20][:1], 50: by_latent[50][:1]})
    assert "0 not shown by the seeds at hand, 5 not tested (5 with one seed of a setting" in one_seed and "a real difference" not in one_seed


@pytest.mark.slow  # ten runs and two reports; the quick tier's report is conftest's `built`
def test_a_sweep_of_seeds_and_latent_sizes_trains_concurrently_and_reports_the_spread(tmp_path, capfd, monkeypatch):
    from vaehelpers import local

    monkeypatch.setattr(local, "cpu_count", lambda: 2)  # the plan's workers and threads, as on every 2-core machine
    out = tmp_path / "out"
    args = ["report", *TINY, "--kl-weights", "1,100,0", "--no-sigma-vae", "--extra-seeds", "1", "--no-pdf",
            "--latent-dims", "4,6", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert main(args) == 0
    printed = capfd.readouterr().out
    assert re.search(r"== plan: 10 runs \(KL weights 1, 100, 0; seed 0, and seed 1 of weights 1, 100 and 0; latent "
                     r"sizes 4, 6\); 0 finished, 10 to train here, 2 at a time with 1 thread each; training step fp32 \(1,000 "
                     r"images/s.*, 1 thread, base 8, .*\); so about \d+ min\.", printed)
    assert "[run-kl1-z6-seed1] kl_weight=1 epoch 2/2" in printed  # each worker's lines name their run
    assert {"run-kl1.ipynb", "run-kl1-seed1.ipynb", "run-kl0-z6.ipynb", "run-kl1-z6-seed1.ipynb"} <= {
        p.name for p in out.iterdir()}
    html = (out / "report.html").read_text()
    discussion = re.sub(r"<[^>]+>", "", html.split('id="Discussion"')[1].split('id="How-much-of-this-is-the-seed"')[0])
    compared, with_verdict = comparison_coverage(html_unescape(discussion))
    assert compared >= 10 and with_verdict == compared  # every sentence that compares carries its test's verdict
    assert "KL weight 1 (n = 2 seeds, mean ± sd)" in html
    assert re.search(r"The discussion above states \d+ distinct comparisons \(one stated twice is tested and counted "
                     r"once\)\. Welch.s t-test at 95 %: \d+ real difference", html)
    assert "KL weight 100 (n = 2 seeds, mean ± sd)" in html
    assert "4 latent dimensions (n = 2 seeds)" in html and "6 latent dimensions (n = 2 seeds)" in html
    assert "Q2–Q7 show the runs with seed 0 and 4 latent dimensions" in html
    # 21 figures of a report without the σ-VAE, and the latent sizes side by side
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 22
    assert main(args) == 0  # all up to date: nothing trains again
    assert not re.search(r"\b0 finished", again := capfd.readouterr().out) and "10 finished, 0 to train." in again


@pytest.mark.parametrize("sweep, said", [
    (Sweep((1.0, 100.0, 0.0), extra_seeds=(1, 2)), "The discussion compares weights 1, 100 and 0 on 3 seeds each, "
                                                   "the other settings on 1 (theirs will read 'one seed: not tested')."),
    (Sweep((1.0, 100.0, 0.0), sigma_vae=False, seeds=(0, 1), extra_seeds=(1,)), "The discussion compares weights 1, "
                                                                                 "100 and 0 on 2 seeds each."),
    (Sweep((1.0, 100.0, 0.0, 10.0), seeds=(0, 1), extra_seeds=(2,)), "The discussion compares weights 1, 100 and 0 on "
                                                                      "3 seeds each, the other settings on 2."),
    (Sweep((1.0, 100.0, 0.0, 10.0), seeds=(0,)), "Each setting has one seed, so the discussion's comparisons will read "
                                                 "'one seed: not tested' (--extra-seeds 1,2 trains two more seeds of "
                                                 "weights 1, 100 and 0)."),
    (Sweep((1.0, 100.0, 0.0), seeds=(1,)), "Each setting has one seed, so the discussion's comparisons will read "
                                           "'one seed: not tested' (--extra-seeds 2,3 trains two more seeds of "
                                           "weights 1, 100 and 0)."),  # seeds other than the one there
])
@pytest.mark.parametrize("path", ["all finished", "local", "slurm"])
def test_the_plan_says_on_how_many_seeds_the_discussion_compares(tmp_path, sweep, said, path):
    import torch

    from vaehelpers.build import plan
    from vaehelpers.speed import Choice
    from vaehelpers.store import RunConfig
    from vaehelpers.sweep import RunNotebook

    tasks = [RunNotebook(spec, tmp_path / sweep.notebook_name(spec), {}) for spec in sweep.runs()]
    cfg = RunConfig(data="builtin:150", epochs=2, base_channels=8, latent_dim=4, batch_size=50)
    line = plan(sweep, tasks, tasks, cfg, "slurm" if path == "slurm" else "local", 2, 1, torch.device("cpu"),
                Choice("fp32", False, "measured", 1000.0) if path == "local" else None,
                training=0 if path == "all finished" else 1)
    assert line.endswith(("). " if path == "all finished" else " min. " if path == "local" else "may differ). ") + said), line


def test_the_plan_counts_finished_runs_not_notebooks_to_execute(tmp_path):
    """A report into a new --out folder executes every run notebook again, but trains only the runs not finished:
    the plan says so (it said "0 finished, 16 to train" for 9 finished runs and 7 new ones)."""
    import torch

    from vaehelpers.build import plan
    from vaehelpers.speed import Choice
    from vaehelpers.store import RunConfig
    from vaehelpers.sweep import RunNotebook

    sweep = Sweep((1.0, 100.0, 0.0), sigma_vae=False)
    tasks = [RunNotebook(spec, tmp_path / sweep.notebook_name(spec), {}) for spec in sweep.runs()]
    cfg = RunConfig(data="builtin:150", epochs=2, base_channels=8, latent_dim=4, batch_size=50)
    cpu = torch.device("cpu")
    assert plan(sweep, tasks, tasks, cfg, "local", 2, 1, cpu, None, training=0) == (
        "== plan: 3 runs (KL weights 1, 100, 0; seed 0; latent size 20); 3 finished, 0 to train (3 notebooks of "
        "finished runs executed again, here or with the others). Each setting has one seed, so the discussion's "
        "comparisons will read 'one seed: not tested' (--extra-seeds 1,2 trains two more seeds of weights 1, 100 and 0).")
    line = plan(sweep, tasks, tasks, cfg, "local", 2, 1, cpu, Choice("fp32", False, "measured", 1000.0), training=1)
    assert line.startswith("== plan: 3 runs (KL weights 1, 100, 0; seed 0; latent size 20); 2 finished, 1 to train "
                           "(2 notebooks of finished runs executed again, here or with the others) here, 2 at a time")


@pytest.mark.parametrize("case", ["same report", "the first failed", "another report", "the PDF too"])
def test_a_command_that_waited_for_another_ones_render_of_the_same_report_reuses_it(tmp_path, capsys, monkeypatch,
                                                                                    case):
    """Two identical commands (sharing one Slurm job array, say) end at once: the second waits for the first's
    render into the same --out and reuses it rather than render it again beside it, exporting the PDF itself where
    the first did not; a render that failed, or of another report, is not reused."""
    import threading

    import nbformat

    from vaehelpers import build

    out, parameters = tmp_path / "out", {"kl_weights": [1.0, 100.0, 0.0], "runs_dir": str(tmp_path / "runs")}
    out.mkdir()
    notebooks = tmp_path / "notebooks"  # a report notebook of one line: quick to execute
    notebooks.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("kl_weights = runs_dir = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print('rendered with', kl_weights)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}),
        notebooks / "report.ipynb")
    executed, pdfs, rendering = [], [], threading.Event()
    execute = build.execute_notebook

    def counted(*args, **kwargs):  # the first command is inside the lock: the second may ask for it now
        executed.append(kwargs["parameters"])
        rendering.set()
        if case == "the first failed" and len(executed) == 1:
            raise RuntimeError("the first command's render was cut short")
        return execute(*args, **kwargs)

    monkeypatch.setattr(build, "execute_notebook", counted)
    monkeypatch.setattr(build, "export_pdf", lambda notebook, pdf: pdfs.append(pdf) or pdf.write_bytes(b"%PDF") and pdf)
    failed = []

    def first_command() -> None:
        try:
            build.render(out, notebooks, parameters, pdf=False)
        except RuntimeError as e:
            failed.append(e)

    first = threading.Thread(target=first_command, daemon=True)
    first.start()
    rendering.wait()
    mine = dict(parameters, kl_weights=[1.0, 100.0, 0.0, 10.0]) if case == "another report" else parameters
    written = build.render(out, notebooks, mine, pdf=case == "the PDF too")
    first.join()
    reused = case in ("same report", "the PDF too")
    assert len(failed) == (case == "the first failed")
    assert len(executed) == (1 if reused else 2), executed
    assert ("another command rendered" in capsys.readouterr().out) == reused
    assert written["html"] == out / "report.html" and written["pdf"] == (out / "report.pdf" if pdfs else None)
    assert pdfs == ([out / "report.pdf"] if case == "the PDF too" else [])  # the first wrote none: the second does
    assert f"rendered with {mine['kl_weights']}" in (out / "report.html").read_text()
