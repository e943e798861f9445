"""The speed probe (vaehelpers.speed) and the compiled step (vaehelpers.step): what ``auto`` chooses, that the
choice is recorded and stable, that a compiled run matches an eager one and resumes exactly."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from vaehelpers import speed
from vaehelpers.speed import BF16_GAIN, Probe, Shape, choose_step, probe_key
from vaehelpers.store import RunConfig, load_run
from vaehelpers.train import decide_step, fit

from conftest import fixed_rates, interrupt_at, without_time

TINY = dict(data="builtin:120", image_size=32, base_channels=8, latent_dim=4, epochs=3, batch_size=25, lr=1e-3,
            val_fraction=0.1, snapshot_epochs=[1, 3], panel_size=4, prior_samples=6)
CPU = torch.device("cpu")


def _probe(rates, compile_s=None, precisions=("fp32", "bf16")):
    key = dict(probe_key(CPU, Shape(16, 64, 20, 50)), precisions=list(precisions), threads=1)
    return Probe(key, dict(rates), dict(compile_s or {}))


@pytest.mark.parametrize("gain, expected", [(1.10, "fp32"), (BF16_GAIN, "bf16"), (1.5, "bf16"), (0.8, "fp32")])
def test_bf16_is_chosen_on_a_cpu_only_where_clearly_faster(gain, expected):
    choice = _probe({"fp32": 1000.0, "bf16": 1000.0 * gain}).choose(1e6, CPU)
    assert choice.precision == expected and not choice.compiled
    assert choice.why.startswith(f"{1000 * (gain if expected == 'bf16' else 1):,.0f} images/s against ")
    assert "(bf16 only where 1.15x faster)" in choice.why and "thread" in choice.why


def test_on_cuda_bf16_is_chosen_wherever_supported():
    choice = _probe({"fp32": 1000.0, "bf16": 1050.0}).choose(1e6, torch.device("cuda"))
    assert choice.precision == "bf16" and "bf16 on CUDA where supported" in choice.why


def test_a_compiled_step_is_chosen_where_it_repays_its_compile_over_the_run():
    probe = _probe({"fp32": 1000.0, "fp32 compiled": 1200.0, "bf16": 500.0, "bf16 compiled": 600.0},
                   {"fp32": 10.0, "bf16": 10.0})
    long, short = probe.choose(1_000_000, CPU), probe.choose(20_000, CPU)  # 833 + 10 s < 1,000 s; 26.7 s > 20 s
    assert (long.precision, long.compiled, long.rate) == ("fp32", True, 1200.0)
    assert "compiled: compiled 1,200 images/s after a 10.0 s compile finishes the run's 1,000,000 images 1.1x sooner" in long.why
    assert (short.precision, short.compiled, short.rate) == ("fp32", False, 1000.0)
    assert "eager: compiled 1,200 images/s after a 10.0 s compile would not finish the run's 20,000 images" in short.why
    slight = _probe({"fp32": 1000.0, "fp32 compiled": 1080.0}, {"fp32": 0.0}, ("fp32",))
    assert not slight.choose(1e9, CPU).compiled  # 1.08x: within what two runs at once take away
    assert probe.choose(1_000_000, CPU, compiled=False).compiled is False  # what the caller fixed holds
    assert probe.choose(1_000_000, CPU, precision="bf16").precision == "bf16"


def test_the_precision_depends_neither_on_the_compile_nor_on_the_run_length():
    # compiled, bf16 would be 1.5x faster; eagerly only 1.1x: fp32, whatever the run's length or the compile flag,
    # so that a run's name (which holds its precision) never depends on them
    probe = _probe({"fp32": 1000.0, "fp32 compiled": 1000.0, "bf16": 1100.0, "bf16 compiled": 1500.0},
                   {"fp32": 1.0, "bf16": 1.0})
    for images in (1_000, 1_000_000):
        for compiled in (None, True, False):
            assert probe.choose(images, CPU, compiled=compiled).precision == "fp32"
    assert _probe({"fp32": 1000.0, "bf16": 1200.0}).choose(1e6, CPU, compiled=True).precision == "bf16"


@pytest.mark.real_probe
def test_the_probe_measures_once_records_its_rates_and_reuses_them(tmp_path, monkeypatch):
    cfg = RunConfig(**TINY)
    first = choose_step(cfg, CPU, 108, tmp_path)
    (record,) = (tmp_path / "speed").glob("*.json")
    saved = json.loads(record.read_text())
    assert saved["key"]["device"] == speed.device_name(CPU) and saved["key"]["threads"] == torch.get_num_threads()
    assert saved["key"]["shape"] == "base 8, 32×32, batch 25" and saved["key"]["torch"] == torch.__version__
    native = speed.cpu_has_native_bf16()  # the run's CPU view (tests/conftest.py): both kinds hold
    print(f"the probe saw a CPU {'with' if native else 'without'} native bf16")
    assert set(saved["rates"]) == ({"fp32", "bf16"} if native else {"fp32"}), (native, saved["rates"])
    assert all(r > 0 for r in saved["rates"].values())
    assert "compiled" not in "".join(saved["rates"])  # a run of seconds: not worth a compile, none measured
    assert f"{first.rate:,.0f} images/s" in first.why and "too short for a compile to pay" in first.why

    real = speed.measure_rates

    def no_second_measurement(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(speed, "measure_rates", no_second_measurement)
    assert choose_step(cfg, CPU, 108, tmp_path) == first  # stable: noise cannot flip it between two commands
    monkeypatch.setattr(speed, "measure_rates", real)
    for damaged in ("{damaged", "[]", "null", json.dumps(dict(saved, rates={"fp32": None}))):
        record.write_text(damaged)  # a damaged record is measured again, not trusted
        assert choose_step(cfg, CPU, 108, tmp_path).precision in speed.precisions_here(CPU)
        assert json.loads(record.read_text())["key"] == saved["key"]


@pytest.mark.real_probe
@pytest.mark.slow  # compiles in this process and times a compile in a new one
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: TorchInductor cannot compile CPU kernels here")
def test_the_probe_times_a_compiled_step_where_the_run_is_long_enough(tmp_path):
    cfg = RunConfig(**dict(TINY, epochs=100_000))  # a long run at this shape: the compile is worth measuring
    choice = choose_step(cfg, CPU, 108, tmp_path, compiled=None)
    (record,) = (tmp_path / "speed").glob("*.json")
    saved = json.loads(record.read_text())
    native = speed.cpu_has_native_bf16()
    print(f"the probe saw a CPU {'with' if native else 'without'} native bf16")
    assert set(saved["rates"]) == {"fp32", *(["bf16"] if native else []), f"{choice.precision} compiled"}, saved["rates"]
    assert 0 < saved["compile_s"][choice.precision] < 60  # timed in a new process
    assert saved["no_compile"] is None
    assert any(Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).iterdir())  # the test run's one kernel cache (conftest.py)
    expected = saved["rates"][f"{choice.precision}{' compiled' if choice.compiled else ''}"]
    assert choice.rate == expected and f"{saved['compile_s'][choice.precision]:.1f} s compile" in choice.why


def test_the_kernels_are_kept_in_the_cache_folder_unless_the_environment_names_another(tmp_path, monkeypatch):
    from vaehelpers.step import use_kernel_cache
    from vaehelpers.torch_private import inductor_default_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    use_kernel_cache(tmp_path / "a")  # unset: the runs' cache folder, which later processes inherit
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "a")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", inductor_default_cache_dir())  # what importing parts of PyTorch sets
    use_kernel_cache(tmp_path / "b")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "b")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "chosen"))  # the user's (or the test run's) own
    use_kernel_cache(tmp_path / "c")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "chosen")


def test_without_a_compiler_the_step_runs_eagerly_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    choice = choose_step(RunConfig(**dict(TINY, epochs=100_000)), CPU, 108, tmp_path)
    assert not choice.compiled and "eager: no C++ compiler (no-such-compiler)" in choice.why
    with pytest.raises(ValueError, match=r"^compiled = True asks for torch.compile, but no C\+\+ compiler"):
        fit(runs_dir=tmp_path / "runs", progress=False, compiled=True, **TINY)


def test_a_run_that_exists_keeps_its_precision_whatever_the_probe_says(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    finished = fit(runs_dir=runs, progress=False, **dict(TINY, precision="bf16"))
    stamp = (finished.dir / "checkpoint.pt").stat().st_mtime_ns
    assert fit(runs_dir=runs, progress=False, **TINY).dir == finished.dir  # fp32 measured faster, bf16 kept
    assert (finished.dir / "checkpoint.pt").stat().st_mtime_ns == stamp  # reused, not trained again

    with pytest.raises(KeyboardInterrupt):  # an interrupted bf16 run of another seed resumes in bf16
        fit(runs_dir=runs, progress=False, on_epoch_end=interrupt_at(), checkpoint_every=0,
            **dict(TINY, seed=1, precision="bf16"))
    resumed = fit(runs_dir=runs, progress=False, **dict(TINY, seed=1))
    assert resumed.config.precision == "bf16" and resumed.finished
    assert len(list(runs.iterdir())) == 2
    other = fit(runs_dir=runs, progress=False, **dict(TINY, precision="fp32"))  # both precisions there, one cut:
    (other.dir / "checkpoint.pt").write_bytes(b"damaged")  # the finished one is the run auto means
    assert fit(runs_dir=runs, progress=False, **TINY).dir == finished.dir
    monkeypatch.setattr(speed, "measure_rates", lambda *a, **k: pytest.fail("a finished run measured"))
    assert decide_step(RunConfig(**TINY), CPU, RunConfig(**TINY).load_images(), runs).why == "the run is finished"


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: TorchInductor cannot compile CPU kernels here")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_compiled_run_matches_the_eager_one_and_resumes_exactly(tmp_path, precision):
    tiny = dict(TINY, batch_size=20, precision=precision)  # 108 training images: the last batch of 8 runs eagerly
    eager = fit(runs_dir=tmp_path / "eager", progress=False, compiled=False, **tiny)
    torch._dynamo.utils.counters.clear()
    whole = fit(runs_dir=tmp_path / "whole", progress=False, compiled=True, **tiny)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # compiled, not silently eager
    assert json.loads((whole.dir / "config.json").read_text())["compiled"] is True
    assert whole.dir.name == eager.dir.name  # compiling changes only the rounding, not what the run is
    tolerance = 1e-4 if precision == "fp32" else 2e-2  # relative; measured: docs/speed.md, "Measured"
    for column, values in without_time(eager.history).items():
        # bf16: a small term (the first epochs' KL, about 0.06-1.4 nats) may differ more, relatively, and is held
        # to 0.1 % of the -ELBO it is part of (an AVX2 CPU, which emulates bf16, measured it 2.45 %, 0.035 nats apart)
        split = column.split("_")[0]
        scale = 1e-3 * max(abs(v) for v in eager.history.get(f"{split}_neg_elbo", [1.0])) if precision == "bf16" else 1e-3
        assert whole.history[column] == pytest.approx(values, rel=tolerance, abs=scale), column

    with pytest.raises(KeyboardInterrupt):
        fit(runs_dir=tmp_path / "cut", progress=False, compiled=True, on_epoch_end=interrupt_at(1), checkpoint_every=0,
            **tiny)
    assert load_run(next((tmp_path / "cut").iterdir())).epochs_done == 1
    resumed = fit(runs_dir=tmp_path / "cut", progress=False, compiled=True, **tiny)
    assert without_time(resumed.history) == without_time(whole.history)  # exact, as eager runs resume
    assert torch.equal(resumed.snapshots["epochs"][3]["samples"], whole.snapshots["epochs"][3]["samples"])


def test_a_report_decides_once_and_passes_the_decision_to_every_run(tmp_path, monkeypatch):
    from vaehelpers import build
    from vaehelpers.params import run_config
    from vaehelpers.sweep import Sweep

    calls = []
    real = speed.measure_rates
    monkeypatch.setattr(speed, "measure_rates", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    specs = Sweep(seeds=(0, 1)).runs()
    configs = {spec: run_config(kl_weight=spec.kl_weight, likelihood=spec.likelihood, seed=spec.seed, **TINY)
               for spec in specs}
    choices = build.decide_steps(configs, CPU, tmp_path / "runs", 1, None)
    assert calls == [["fp32", "bf16"] if "bf16" in speed.precisions_here(CPU) else ["fp32"]]  # once, 12 runs
    assert {(c.precision, c.compiled) for c in choices.values()} == {("fp32", False)}
    assert "1 thread" in next(iter(choices.values())).why  # measured with the threads each run gets
    line = build.plan(Sweep(seeds=(0, 1)), specs, specs, configs[specs[0]], "local", 2, 1, CPU, choices[specs[0]])
    assert "training step fp32 (1,000 images/s" in line


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: TorchInductor cannot compile CPU kernels here")
def test_a_resumed_run_keeps_the_step_it_started_with(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "COMPILE_WORTH_S", 0.0)  # this tiny run is worth a compile, and it pays:
    rates = {"fp32": 100.0, "fp32 compiled": 1000.0, "bf16": 50.0, "bf16 compiled": 60.0}
    monkeypatch.setattr(speed, "measure_rates", fixed_rates(rates, compile_s=0.0))
    whole = fit(runs_dir=tmp_path / "whole", progress=False, compiled=False, **TINY)

    with pytest.raises(KeyboardInterrupt):  # started eagerly (as every run before compiling was)
        fit(runs_dir=tmp_path / "cut", progress=False, compiled=False, on_epoch_end=interrupt_at(), checkpoint_every=0,
            **TINY)
    assert decide_step(RunConfig(**TINY), CPU, RunConfig(**TINY).load_images(),
                       tmp_path / "new").compiled  # the probe's
    resumed = fit(runs_dir=tmp_path / "cut", progress=False, **TINY)
    assert json.loads((resumed.dir / "config.json").read_text())["compiled"] is False
    assert without_time(resumed.history) == without_time(whole.history)  # resumed eagerly, exactly


def test_compile_asked_for_without_a_compiler_is_one_sentence(tmp_path, monkeypatch, capsys):
    from vaehelpers.__main__ import main

    monkeypatch.setenv("CXX", "no-such-compiler")
    assert main(["report", "--data", "builtin:150", "--epochs", "1", "--base-channels", "8", "--compile", "yes",
                 "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: compiled = True asks for torch.compile, but no C++ compiler (no-such-compiler) for "
                   "TorchInductor's CPU kernels is here: install one (e.g. apt-get install g++) or leave compiled unset.")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing trained


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: TorchInductor cannot compile CPU kernels here")
def test_the_bench_compares_a_compiled_run_with_the_eager_one(tmp_path):
    from vaehelpers.bench import compare_compiled

    settings = {k: v for k, v in TINY.items() if k != "epochs"} | {"epochs": 2}
    lines = compare_compiled(settings, "cpu", str(tmp_path))
    assert lines[0].startswith("KL weight 1, data builtin:120") and len(lines) == 3
    for line, precision in zip(lines[1:], ("fp32", "bf16")):
        assert re.fullmatch(rf"{precision}: largest relative difference \d\.\d\de[-+]\d\d \(\w+, epoch [12]\); final "
                            r"validation -ELBO [\d,.]+ eager, [\d,.]+ compiled \([+-]\d\.\d{3} %\)", line), line
    assert {"eager", "compiled"} <= {p.name for p in tmp_path.iterdir()}  # beside the test's cache folder
