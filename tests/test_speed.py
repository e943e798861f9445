"""The speed probe (vaehelpers.speed) and the compiled step (vaehelpers.step): what ``auto`` chooses, that the
choice is recorded and stable, that a compiled run matches an eager one and resumes exactly."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from vaehelpers import speed
from vaehelpers.speed import BF16_GAIN, Probe, Shape, choose_step, probe_key
from vaehelpers.store import RunConfig, load_run
from vaehelpers.train import decide, fit

TINY = dict(data="builtin:120", image_size=32, base_channels=8, latent_dim=4, epochs=3, batch_size=25, lr=1e-3,
            val_fraction=0.1, snapshot_epochs=[1, 3], panel_size=4, prior_samples=6)
CPU = torch.device("cpu")


def _without_time(history):
    return {k: v for k, v in history.items() if k not in ("seconds", "peak_gpu_mib")}


def _probe(rates, compile_s=None, precisions=("fp32", "bf16")):
    key = dict(probe_key(CPU, Shape(16, 64, 20, 50)), precisions=list(precisions), threads=1)
    return Probe(key, dict(rates), dict(compile_s or {}))


@pytest.mark.parametrize("gain, expected", [(1.10, "fp32"), (BF16_GAIN, "bf16"), (1.5, "bf16"), (0.8, "fp32")])
def test_bf16_is_chosen_on_a_cpu_only_where_clearly_faster(gain, expected):
    choice = _probe({"fp32": 1000.0, "bf16": 1000.0 * gain}).choose(1e6, CPU)
    assert choice.precision == expected and not choice.compiled
    assert f"{1000 * gain:,.0f}" in choice.why and "1,000" in choice.why
    assert ("at least 1.15x faster" in choice.why) == (expected == "fp32")


def test_on_cuda_bf16_is_chosen_wherever_supported():
    choice = _probe({"fp32": 1000.0, "bf16": 1050.0}).choose(1e6, torch.device("cuda"))
    assert choice.precision == "bf16"


def test_a_compiled_step_is_chosen_where_it_repays_its_compile_over_the_run():
    probe = _probe({"fp32": 1000.0, "fp32 compiled": 1200.0, "bf16": 500.0, "bf16 compiled": 600.0},
                   {"fp32": 10.0, "bf16": 10.0})
    long, short = probe.choose(1_000_000, CPU), probe.choose(20_000, CPU)  # 833 + 10 s < 1,000 s; 26.7 s > 20 s
    assert (long.precision, long.compiled) == ("fp32", True) and "the compile costs a run 10.0 s" in long.why
    assert (short.precision, short.compiled) == ("fp32", False) and "does not repay its 10.0 s compile" in short.why
    assert probe.choose(1_000_000, CPU, compiled=False).compiled is False  # what the caller fixed holds
    assert probe.choose(1_000_000, CPU, precision="bf16").precision == "bf16"


def test_bf16_is_compared_with_fp32_at_their_best_including_the_compile():
    # eager bf16 is only 1.1x faster, but compiled bf16 is 1.5x faster than the best fp32: bf16, compiled
    probe = _probe({"fp32": 1000.0, "fp32 compiled": 1000.0, "bf16": 1100.0, "bf16 compiled": 1500.0},
                   {"fp32": 1.0, "bf16": 1.0})
    choice = probe.choose(1_000_000, CPU)
    assert (choice.precision, choice.compiled) == ("bf16", True) and choice.rate == 1500.0


@pytest.mark.real_probe
def test_the_probe_measures_once_records_its_rates_and_reuses_them(tmp_path, monkeypatch):
    cfg = RunConfig(**TINY)
    first = choose_step(cfg, CPU, 108, tmp_path)
    (record,) = (tmp_path / "speed").glob("*.json")
    saved = json.loads(record.read_text())
    assert saved["key"]["device"] == speed.device_name(CPU) and saved["key"]["threads"] == torch.get_num_threads()
    assert saved["key"]["shape"] == "base 8, 32×32, batch 25" and saved["key"]["torch"] == torch.__version__
    assert set(saved["rates"]) == set(speed.precisions_here(CPU)) and all(r > 0 for r in saved["rates"].values())
    assert "compiled" not in "".join(saved["rates"])  # a run of seconds: not worth a compile, none measured
    assert f"{first.rate:,.0f} images/s" in first.why and "too short for a compile to pay" in first.why

    def no_second_measurement(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(speed, "measure", no_second_measurement)
    assert choose_step(cfg, CPU, 108, tmp_path) == first  # stable: noise cannot flip it between two commands
    record.write_text("{damaged")  # a damaged record is measured again, not trusted
    monkeypatch.undo()
    assert choose_step(cfg, CPU, 108, tmp_path).precision in speed.precisions_here(CPU)
    assert json.loads(record.read_text())["key"] == saved["key"]


@pytest.mark.real_probe
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: TorchInductor cannot compile CPU kernels here")
def test_the_probe_times_a_compiled_step_where_the_run_is_long_enough(tmp_path):
    cfg = RunConfig(**dict(TINY, epochs=100_000))  # a long run at this shape: the compile is worth measuring
    choice = choose_step(cfg, CPU, 108, tmp_path, compiled=None)
    (record,) = (tmp_path / "speed").glob("*.json")
    saved = json.loads(record.read_text())
    assert {f"{p} compiled" for p in speed.precisions_here(CPU)} <= set(saved["rates"]), saved
    assert all(0 < saved["compile_s"][p] < 60 for p in speed.precisions_here(CPU))
    assert saved["no_compile"] is None
    # the kernels are cached for the runs: in the cache folder, unless this process had chosen another already
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] and any(Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).iterdir())
    assert choice.compiled == (choice.rate == saved["rates"][f"{choice.precision} compiled"])


def test_without_a_compiler_the_step_runs_eagerly_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    choice = choose_step(RunConfig(**dict(TINY, epochs=100_000)), CPU, 108, tmp_path)
    assert not choice.compiled and "eager: no C++ compiler (no-such-compiler)" in choice.why
    with pytest.raises(ValueError, match=r"^compiled = True asks for torch.compile, but no C\+\+ compiler"):
        fit(runs_dir=tmp_path / "runs", progress=False, compiled=True, **TINY)


def test_a_run_that_exists_keeps_its_precision_whatever_the_probe_says(tmp_path):
    runs = tmp_path / "runs"
    finished = fit(runs_dir=runs, progress=False, **dict(TINY, precision="bf16"))
    stamp = (finished.dir / "checkpoint.pt").stat().st_mtime_ns
    assert fit(runs_dir=runs, progress=False, **TINY).dir == finished.dir  # fp32 measured faster, bf16 kept
    assert (finished.dir / "checkpoint.pt").stat().st_mtime_ns == stamp  # reused, not trained again

    def interrupt(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # an interrupted bf16 run of another seed resumes in bf16
        fit(runs_dir=runs, progress=False, on_epoch_end=interrupt, checkpoint_every=0,
            **dict(TINY, seed=1, precision="bf16"))
    resumed = fit(runs_dir=runs, progress=False, **dict(TINY, seed=1))
    assert resumed.config.precision == "bf16" and resumed.finished
    data = RunConfig(**TINY).load_images()
    assert "the run exists in bf16" in decide(RunConfig(**TINY), CPU, data, runs).why
    assert len(list(runs.iterdir())) == 2


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: TorchInductor cannot compile CPU kernels here")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_compiled_run_matches_the_eager_one_and_resumes_exactly(tmp_path, precision):
    tiny = dict(TINY, batch_size=20, precision=precision)  # 108 training images: the last batch of 8 runs eagerly
    eager = fit(runs_dir=tmp_path / "eager", progress=False, compiled=False, **tiny)
    whole = fit(runs_dir=tmp_path / "whole", progress=False, compiled=True, **tiny)
    assert json.loads((whole.dir / "config.json").read_text())["compiled"] is True
    assert whole.dir.name == eager.dir.name  # compiling changes only the rounding, not what the run is
    tolerance = 1e-4 if precision == "fp32" else 2e-2  # relative; measured: README, "Speed"
    for column, values in _without_time(eager.history).items():
        assert whole.history[column] == pytest.approx(values, rel=tolerance, abs=1e-3), column

    def interrupt(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(runs_dir=tmp_path / "cut", progress=False, compiled=True, on_epoch_end=interrupt, checkpoint_every=0, **tiny)
    assert load_run(next((tmp_path / "cut").iterdir())).epochs_done == 1
    resumed = fit(runs_dir=tmp_path / "cut", progress=False, compiled=True, **tiny)
    assert _without_time(resumed.history) == _without_time(whole.history)  # exact, as eager runs resume
    assert torch.equal(resumed.snapshots["epochs"][3]["samples"], whole.snapshots["epochs"][3]["samples"])


def test_a_report_decides_once_and_passes_the_decision_to_every_run(tmp_path, monkeypatch):
    from vaehelpers import build
    from vaehelpers.params import run_config
    from vaehelpers.sweep import Sweep

    calls = []
    real = speed.measure
    monkeypatch.setattr(speed, "measure", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    specs = Sweep(seeds=(0, 1)).runs()
    configs = {spec: run_config(kl_weight=spec.kl_weight, likelihood=spec.likelihood, seed=spec.seed, **TINY)
               for spec in specs}
    choices = build.decide_all(configs, CPU, tmp_path / "runs", 1, None)
    assert calls == [["fp32", "bf16"] if "bf16" in speed.precisions_here(CPU) else ["fp32"]]  # once, 12 runs
    assert {(c.precision, c.compiled) for c in choices.values()} == {("fp32", False)}
    assert "1 thread" in next(iter(choices.values())).why  # measured with the threads each run gets
    line = build.plan(Sweep(seeds=(0, 1)), specs, specs, configs[specs[0]], "local", 2, 1, CPU, choices[specs[0]])
    assert "training step fp32 (1,000 images/s" in line
