"""The CUDA path: run on a machine with an NVIDIA GPU (``scripts/gpu-check.sh``); skipped, with the reason, elsewhere."""

import json

import pytest
import torch

from vaehelpers import train
from vaehelpers.explore import Explorer
from vaehelpers.measure import measure_run
from vaehelpers.store import load_run
from vaehelpers.train import evaluate, fit

from conftest import interrupt_at, without_time

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="no CUDA GPU visible to PyTorch: the cuda tests run on a GPU machine "
                                        "(scripts/gpu-check.sh)")]

TINY = dict(data="builtin:240", image_size=32, base_channels=8, latent_dim=4, epochs=4, batch_size=40, lr=1e-3,
            val_fraction=0.1, snapshot_epochs=[2, 4], panel_size=4, prior_samples=6)
RESUME_RTOL = 1e-3
"""Interrupted and resumed against uninterrupted: relative difference allowed in any history value (bf16 on cuDNN)."""


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    return fit(runs_dir=tmp_path_factory.mktemp("runs"), device="cuda", progress=False, checkpoint_every=0, **TINY)


def test_fit_on_cuda_keeps_the_images_on_the_gpu_and_trains_in_bf16(tmp_path, monkeypatch):
    seen = []
    real_epoch = train.train_epoch

    def spy(model, optimizer, images, *args):
        seen.append((images.device.type, images.dtype, next(model.parameters()).device.type))
        return real_epoch(model, optimizer, images, *args)

    monkeypatch.setattr(train, "train_epoch", spy)
    run = fit(runs_dir=tmp_path, device="cuda", progress=False, **TINY)
    assert seen == [("cuda", torch.uint8, "cuda")] * TINY["epochs"]
    assert run.config.precision == "bf16" and run.info["device"].startswith("cuda") and "_bf16_" in run.dir.name
    assert all(v == v for v in run.history["val_neg_elbo"])  # no NaN
    assert run.history["val_neg_elbo"][-1] < run.history["val_neg_elbo"][0]
    assert run.history["peak_gpu_mib"][-1] > 0


def test_interrupted_cuda_run_resumes_to_the_same_history_within_bf16_tolerance(tmp_path, cuda_run):
    with pytest.raises(KeyboardInterrupt):
        fit(runs_dir=tmp_path, device="cuda", progress=False, checkpoint_every=0, on_epoch_end=interrupt_at(2), **TINY)
    resumed = fit(runs_dir=tmp_path, device="cuda", progress=False, checkpoint_every=0, **TINY)
    whole, again = without_time(cuda_run.history), without_time(resumed.history)
    assert again["epoch"] == whole["epoch"]
    worst = max(abs(a - b) / max(abs(b), 1e-12) for k in whole for a, b in zip(again[k], whole[k]))
    print(f"largest relative difference, resumed against uninterrupted CUDA history: {worst:.2e}")
    assert worst <= RESUME_RTOL


def test_evaluate_and_measure_run_on_cuda_agree_with_the_cpu(cuda_run):
    images = (torch.rand(50, 3, 32, 32) * 255).to(torch.uint8)
    on_cpu = evaluate(cuda_run.model, images, 1.0, torch.Generator().manual_seed(0))  # load_run: the model on the CPU
    on_gpu = evaluate(cuda_run.model.to("cuda"), images.to("cuda"), 1.0, torch.Generator("cuda").manual_seed(0))
    cuda_run.model.to("cpu")
    assert on_gpu["recon"] == pytest.approx(on_cpu["recon"], rel=0.05)  # different noise draws, same model
    measured = measure_run(cuda_run, device="cuda", k=8, iwae_images=20, mmd_images=20, probe_images=100)
    assert measured["device"].startswith("cuda") and measured["psnr_db"] > 5
    assert json.loads((cuda_run.dir / "measurements.json").read_text())["psnr_db"] == measured["psnr_db"]


def test_a_run_trained_on_cuda_opens_on_the_cpu(cuda_run):
    run = load_run(cuda_run.dir)
    assert next(run.model.parameters()).device.type == "cpu"
    explorer = Explorer.open(run.dir)
    assert explorer.decode([0.0] * run.config.latent_dim).shape == (3, 32, 32)
    assert explorer.reconstruction(0)[1].dtype == torch.uint8


def test_report_from_cuda_runs(tmp_path):
    pytest.importorskip("papermill", reason="the notebook stack is not installed (scripts/gpu-check.sh brings it)")
    from vaehelpers.__main__ import main

    tiny = ["--data", "builtin:150", "--epochs", "2", "--base-channels", "8", "--latent-dim", "4", "--batch-size", "50"]
    assert main(["report", *tiny, "--device", "cuda", "--runs-dir", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "out")]) == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "cuda" in html and "bf16 autocast" in html
