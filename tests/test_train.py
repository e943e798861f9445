import json

import pytest
import torch

from vaehelpers import train
from vaehelpers.data import load_images, split_indices
from vaehelpers.store import HISTORY_COLUMNS, RunConfig, default_snapshot_epochs, key_epochs, load_run, run_generator
from vaehelpers.train import evaluate, fit

from conftest import fixed_rates, interrupt_at, without_time

TINY = dict(data="builtin:120", image_size=32, base_channels=8, latent_dim=4, epochs=3, batch_size=25, lr=1e-3,
            val_fraction=0.1, snapshot_epochs=[1, 3], panel_size=4, prior_samples=6)


def test_run_folder_holds_config_history_snapshots_and_weights(tmp_path):
    run = fit(runs_dir=tmp_path, progress=False, **TINY)
    assert run.finished and run.epochs_done == 3
    names = {p.name for p in run.dir.iterdir()}
    events = {n for n in names if n.startswith("events.out.tfevents.")}  # TensorBoard's (tests/test_board.py)
    assert names - events == {"config.json", "history.csv", "snapshots.pt", "checkpoint.pt", ".lock"} and len(events) == 1
    info = json.loads((run.dir / "config.json").read_text())
    assert info["split"]["val"] == 12 and len(info["split"]["val_indices"]) == 12
    assert list(run.history) == HISTORY_COLUMNS and run.history["epoch"] == [1, 2, 3]
    assert sorted(run.snapshots["epochs"]) == [1, 3]
    assert run.snapshots["epochs"][3]["recon"].shape == (4, 3, 32, 32)
    assert run.snapshots["epochs"][3]["samples"].dtype == torch.uint8
    h = run.history
    for split in ("train", "val"):  # the columns obey the stated conventions
        for i in range(3):
            assert h[f"{split}_objective"][i] == pytest.approx(h[f"{split}_recon"][i] + h[f"{split}_kl"][i], rel=1e-5)
            assert h[f"{split}_neg_elbo"][i] == pytest.approx(h[f"{split}_recon"][i] + h[f"{split}_kl"][i] + 3072 * 0.5723649, rel=1e-5)
    assert h["val_neg_elbo"][-1] < h["val_neg_elbo"][0]  # it learns


def test_same_seed_same_history_and_finished_run_is_reused(tmp_path):
    a = fit(runs_dir=tmp_path / "a", progress=False, **TINY)
    b = fit(runs_dir=tmp_path / "b", progress=False, **TINY)
    assert without_time(a.history) == without_time(b.history)
    c = fit(runs_dir=tmp_path / "a", progress=False, **dict(TINY, seed=1))
    assert c.dir != a.dir and without_time(c.history) != without_time(a.history)
    stamp = (a.dir / "checkpoint.pt").stat().st_mtime_ns
    calls = []
    again = fit(runs_dir=tmp_path / "a", progress=False, on_epoch_end=lambda e, row: calls.append(e), **TINY)
    assert calls == [] and again.dir == a.dir and (a.dir / "checkpoint.pt").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_interrupted_run_resumes_to_the_same_history(tmp_path, precision):
    tiny = dict(TINY, precision=precision)
    whole = fit(runs_dir=tmp_path / "whole", progress=False, **tiny)

    with pytest.raises(KeyboardInterrupt):
        fit(runs_dir=tmp_path / "cut", progress=False, on_epoch_end=interrupt_at(1), checkpoint_every=0, **tiny)
    partial = load_run(next((tmp_path / "cut").iterdir()))
    assert partial.epochs_done == 1 and not partial.finished
    resumed_epochs = []
    resumed = fit(runs_dir=tmp_path / "cut", progress=False, on_epoch_end=lambda e, r: resumed_epochs.append(e), **tiny)
    assert resumed_epochs == [2, 3]
    assert without_time(resumed.history) == without_time(whole.history)
    assert torch.equal(resumed.snapshots["epochs"][3]["samples"], whole.snapshots["epochs"][3]["samples"])


def test_files_are_written_by_time_and_a_run_cut_between_writes_restarts_from_the_last(tmp_path, monkeypatch):
    whole = fit(runs_dir=tmp_path / "whole", progress=False, **dict(TINY, epochs=4))
    clock = iter(range(0, 1000, 10))  # each reading of the clock: 10 s later
    monkeypatch.setattr(train, "_clock", lambda: next(clock))
    written = []

    def interrupt(epoch, row):
        checkpoints = list((tmp_path / "cut").glob("*/checkpoint.pt"))
        written.append(load_run(checkpoints[0].parent).epochs_done if checkpoints else 0)
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(runs_dir=tmp_path / "cut", progress=False, on_epoch_end=interrupt, checkpoint_every=15, **dict(TINY, epochs=4))
    assert written == [0, 2, 2]  # read at 10 s, 20 s (15 s passed: written), 40 s (10 s since): at most every 15 s
    monkeypatch.undo()
    resumed_epochs = []
    resumed = fit(runs_dir=tmp_path / "cut", progress=False, on_epoch_end=lambda e, r: resumed_epochs.append(e),
                  **dict(TINY, epochs=4))
    assert resumed_epochs == [3, 4] and without_time(resumed.history) == without_time(whole.history)


def test_snapshot_epochs_default():
    assert default_snapshot_epochs(100) == list(range(5, 101, 5))
    assert key_epochs(100) == [10, 50, 100] and key_epochs(20) == [2, 10, 20] and key_epochs(2) == [1, 2]
    assert default_snapshot_epochs(20) == [2, 5, 10, 15, 20]
    assert default_snapshot_epochs(3) == [1, 2, 3]


def test_whole_number_settings_name_the_same_run():
    assert RunConfig(kl_weight=100, lr=1).run_name("k") == RunConfig(kl_weight=100.0, lr=1.0).run_name("k")


@pytest.mark.parametrize("bad", [dict(kl_weight=-1), dict(epochs=0), dict(lr=0), dict(val_fraction=1.5)])
def test_bad_settings_are_clear_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        RunConfig(**bad)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_the_probes_choice_and_bf16_only_where_the_cpu_has_it(tmp_path, monkeypatch, native):
    from vaehelpers import speed

    monkeypatch.setenv(speed.NATIVE_BF16_ENV, "1" if native else "0")
    monkeypatch.setattr(speed, "measure_rates", fixed_rates({"fp32": 500.0, "bf16": 1000.0}))  # bf16 2x faster where native
    expected = "bf16" if native else "fp32"
    run = fit(runs_dir=tmp_path, progress=False, device="cpu", **dict(TINY, epochs=1))
    assert run.config.precision == expected and f"_{expected}_" in run.dir.name
    assert json.loads((run.dir / "config.json").read_text())["config"]["precision"] == expected


def test_precision_is_part_of_the_run_identity(tmp_path):
    runs = {p: fit(runs_dir=tmp_path / "runs", progress=False, **dict(TINY, epochs=1, precision=p)) for p in ("fp32", "bf16")}
    assert runs["fp32"].dir != runs["bf16"].dir and len(list((tmp_path / "runs").iterdir())) == 2
    assert without_time(runs["fp32"].history) != without_time(runs["bf16"].history)
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32; got 'fp16'"):
        RunConfig(precision="fp16")


def test_bf16_run_is_deterministic_and_validated_in_fp32(tmp_path):
    a = fit(runs_dir=tmp_path / "a", progress=False, **dict(TINY, precision="bf16"))
    b = fit(runs_dir=tmp_path / "b", progress=False, **dict(TINY, precision="bf16"))
    assert without_time(a.history) == without_time(b.history)
    # The recorded validation terms are the fp32 evaluation of the bf16-trained weights.
    data = load_images(TINY["data"], TINY["image_size"])
    _, val_idx = split_indices(len(data), TINY["val_fraction"], 0)
    val = evaluate(a.model, data.images[val_idx], 1.0, run_generator(a.config, "validation", TINY["epochs"]))
    assert val["neg_elbo"] == pytest.approx(a.history["val_neg_elbo"][-1], rel=1e-6)


@pytest.mark.parametrize("told", [False, True])
def test_bf16_on_a_cpu_that_emulates_it_warns_with_the_measured_slowdown(tmp_path, monkeypatch, told):
    from vaehelpers import speed

    if told:  # the CPU view the environment gives (tests/conftest.py), said as such
        monkeypatch.setenv(speed.NATIVE_BF16_ENV, "0")
    else:  # the CPU's own flags
        monkeypatch.delenv(speed.NATIVE_BF16_ENV)
        monkeypatch.setattr(speed, "cpu_flags_native_bf16", lambda: False)
    train._emulation_rates.cache_clear()
    why = "VAEHELPERS_NATIVE_BF16=0 says so" if told else "it has no AVX512-BF16 or AMX"
    with pytest.warns(train.EmulatedBf16, match=rf"^precision bf16 is emulated on this CPU \({why}\): a training step "
                                                r"of this model measured here ran \d+\.\dx slower than in fp32 "
                                                r"\([\d,]+ against [\d,]+ images/s\); train with precision 'auto' or "
                                                r"'fp32'"):
        run = fit(runs_dir=tmp_path, progress=False, **dict(TINY, epochs=1, precision="bf16"))
    assert run.config.precision == "bf16"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", train.EmulatedBf16)
        fit(runs_dir=tmp_path, progress=False, **dict(TINY, epochs=1, precision="bf16"))  # reused: not trained, no warning
        assert fit(runs_dir=tmp_path, progress=False, **dict(TINY, epochs=1)).config.precision == "bf16"  # kept
        assert fit(runs_dir=tmp_path / "new", progress=False, **dict(TINY, epochs=1)).config.precision == "fp32"  # auto


def test_seeds_train_on_the_same_images_and_hold_out_the_same_ones(tmp_path):
    """A seed changes the weights, the batch order and the noise; the data set and its held-out split come from
    data_seed, so the spread over seeds is that of training alone, measured on the same validation images."""
    a = fit(runs_dir=tmp_path, progress=False, **TINY)
    b = fit(runs_dir=tmp_path, progress=False, seed=1, **TINY)
    assert a.dir != b.dir and b.config.data_seed == 0
    assert a.info["data"] == b.info["data"] and a.info["split"] == b.info["split"]
    first = next(iter(a.model.state_dict()))
    assert not torch.equal(a.model.state_dict()[first], b.model.state_dict()[first])
    c = fit(runs_dir=tmp_path, progress=False, data_seed=1, **TINY)
    assert c.info["split"]["val_indices"] != a.info["split"]["val_indices"]


def test_a_run_written_before_data_seed_loads_with_the_data_its_seed_chose(tmp_path):
    """config.json files written when the seed chose the data too have no data_seed: loading one keeps the data
    and split it trained on, and such runs keep their folder names."""
    run = fit(runs_dir=tmp_path, progress=False, seed=1, data_seed=1, **TINY)
    info = json.loads((run.dir / "config.json").read_text())
    del info["config"]["data_seed"]
    (run.dir / "config.json").write_text(json.dumps(info))
    loaded = load_run(run.dir)
    assert loaded.config.data_seed == 1 and loaded.config.run_name(loaded.data(tmp_path).key) == run.dir.name
    # a name the code before data_seed gave the quick report's run of KL weight 1 (builtin:6000, fp32)
    quick = RunConfig(data="builtin:6000", epochs=16, lr=1e-3, batch_size=50, latent_dim=20, base_channels=16,
                      precision="fp32", streams=1)
    assert quick.run_name(load_images(quick.data, 64, cache_dir=tmp_path).key) == \
        "builtin6000_kl1_z20_e16_seed0_fp32_7050221b"


def test_every_random_stream_is_its_own_and_the_measurements_are_the_same_for_every_seed():
    """Version 1 seeded its streams with offsets of the seed, so seed 0's snapshot codes were seed 1's initial
    weights and its batches its noise; version 2 derives each from a SeedSequence, training streams from the seed,
    measuring streams from data_seed alone."""
    from vaehelpers.streams import MEASURING, TRAINING, stream_seed

    assert stream_seed("prior_codes", 0, 0, version=1) == stream_seed("weights", 1, 0, version=1)  # the old overlap
    assert stream_seed("batches", 3, 0, version=1) == stream_seed("noise", 3, 0, version=1)
    training = [stream_seed(n, s, 0) for n in TRAINING for s in range(50)]
    measuring = [stream_seed(n, 0, d, index=e) for n in MEASURING for d in range(3) for e in range(20)]
    assert len(set(training + measuring)) == len(training) + len(measuring)  # no two streams share a seed
    for name in MEASURING:
        assert {stream_seed(name, s, 0, index=2) for s in range(5)} == {stream_seed(name, 0, 0, index=2)}
    a, b = RunConfig(seed=0), RunConfig(seed=1)
    draw = lambda cfg, name: torch.randn(8, generator=run_generator(cfg, name))  # noqa: E731
    assert torch.equal(draw(a, "mmd_codes"), draw(b, "mmd_codes")) and torch.equal(draw(a, "iwae"), draw(b, "iwae"))
    assert not torch.equal(draw(a, "noise"), draw(b, "noise")) and not torch.equal(draw(a, "batches"), draw(a, "noise"))
    with pytest.raises(ValueError, match="seed must be a whole number >= 0"):
        RunConfig(seed=-1)


def test_a_run_written_before_independent_streams_keeps_its_name_its_streams_and_resumes_exactly(tmp_path):
    """config.json files written before the streams were independent have no "streams": loading one gives
    version 1, which names the run as before, and an interrupted one resumes on the streams it started with."""
    whole = fit(runs_dir=tmp_path / "whole", progress=False, streams=1, **TINY)
    stop = TINY["epochs"] - 1
    with pytest.raises(KeyboardInterrupt):
        fit(runs_dir=tmp_path / "cut", progress=False, streams=1, checkpoint_every=0,
            on_epoch_end=interrupt_at(stop), **TINY)
    (cut,) = (tmp_path / "cut").iterdir()
    info = json.loads((cut / "config.json").read_text())
    del info["config"]["streams"]
    (cut / "config.json").write_text(json.dumps(info))
    loaded = load_run(cut)
    assert loaded.config.streams == 1 and loaded.config.run_name(loaded.data(tmp_path).key) == cut.name == whole.dir.name
    resumed = fit(loaded.config, runs_dir=tmp_path / "cut", progress=False)
    assert without_time(resumed.history) == without_time(whole.history)
    new = fit(runs_dir=tmp_path / "new", progress=False, **TINY)
    assert new.config.streams == 2 and new.dir.name != whole.dir.name
    assert without_time(new.history) != without_time(whole.history)
