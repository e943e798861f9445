"""The report's generated text, driven by made-up measurements through every branch."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from vaehelpers.figures import learning_curve
from vaehelpers.model import ConvVAE
from vaehelpers.store import Setting
from vaehelpers.text import (architecture_markdown, discussion_markdown, hyperparameters_markdown,
                             preprocessing_markdown, probe_markdown, results_table, sigma_vae_markdown)

PROBE = {"hair_hue": 0.9, "eye_size": 0.5}


def _measured(**changes) -> dict:
    m = dict(distortion=300.0, rate=25.0, neg_elbo=7350.0, active_units=12, iwae_neg_log_px=7340.0,
             sharpness_ratio=0.6, sample_diversity=0.2, data_diversity=0.25, code_std=0.9, posterior_std=0.3,
             aggregate_kl=3.0, mmd=0.02, probe_r2=PROBE, probe_r2_sampled=PROBE, calibrated_sigma=0.12,
             calibrated_neg_elbo=-6000.0, psnr_db=19.0, bits_per_dim=0.86, kl_per_dim=[1.0] * 20, mmd_images=256,
             iwae_images=256, options={"k": 64})
    return {**m, **changes}


def _run(weight: float, likelihood: str = "fixed", curve=(7600.0, 7450.0, 7400.0, 7350.0)):
    config = SimpleNamespace(latent_dim=20, kl_weight=weight, likelihood=likelihood)
    return SimpleNamespace(config=config, history={"val_neg_elbo": list(curve)}, setting=Setting(likelihood, weight))


def _case(collapse=True, holes=True, best=1.0, probes=True):
    weights = (1.0, 100.0, 0.0, 10.0)
    runs = {w: _run(w) for w in weights}
    m = {
        1.0: _measured(),
        100.0: _measured(rate=0.4 if collapse else 5.0, distortion=600.0, sample_diversity=0.05, sharpness_ratio=0.3),
        0.0: _measured(rate=900.0, distortion=250.0, code_std=8.0, aggregate_kl=400.0 if holes else 3.5,
                       mmd=0.2 if holes else 0.021),
        10.0: _measured(rate=8.0, distortion=400.0),
    }
    for w in weights:
        m[w]["neg_elbo"] = 7300.0 if w == best else 7350.0 + w
        if not probes:
            m[w]["probe_r2"] = m[w]["probe_r2_sampled"] = None
    return runs, {Setting("fixed", w): v for w, v in m.items()}


def test_collapse_holes_and_the_bound_at_weight_1():
    text = discussion_markdown(*_case())
    assert "posterior collapse" in text and "which is the blur in the figures" in text
    assert "most codes drawn from the prior fall where the decoder was never trained" in text
    assert "lowest for weight 1 (7,300.0 nats" in text and "only setting that optimises the bound itself. " in text
    assert "falling in 3 of 3 epochs" in text and "nearly one average face" in text
    assert "Reconstructions are better than at weight 1 (250.0 against 300.0)" in text


def test_no_collapse_no_holes_and_another_best_weight():
    text = discussion_markdown(*_case(collapse=False, holes=False, best=10.0))
    assert "posterior collapse" not in text and "KL to 5.00 nats (weight 1: 25.0). " in text
    assert "never trained" not in text and "(weight 1: 0.020)." in text
    assert "lowest for weight 10 (7,300.0 nats" in text and "the run was likely too short" in text


def test_probe_sentences_and_table_only_where_factors_are_known():
    runs, measurements = _case()
    assert "What the codes keep" in discussion_markdown(runs, measurements)
    table = probe_markdown(measurements)
    assert "| hair_hue | 0.90 / 0.90 |" in table and "KL weight 10 |" not in table  # the assignment's three only
    runs, measurements = _case(probes=False)
    assert "What the codes keep" not in discussion_markdown(runs, measurements)
    assert probe_markdown(measurements).startswith("*No probe")


def test_discussion_needs_the_assignment_weights():
    runs, measurements = _case()
    del runs[0.0]
    with pytest.raises(ValueError, match="weight 0 is missing"):
        discussion_markdown(runs, measurements)


def test_sigma_vae_comparison_present_or_not():
    _, measurements = _case()
    assert sigma_vae_markdown(measurements).startswith("*No σ-VAE run")
    measurements[Setting("sigma-vae", 1.0)] = _measured(calibrated_sigma=0.1, neg_elbo=-5000.0, psnr_db=20.5)
    text = sigma_vae_markdown(measurements)
    assert "settled at σ = 0.100: an effective KL weight of 2σ² = 0.020" in text
    assert "-5,000.0 nats per image against 7,300.0" in text and "20.50 dB against 19.00 dB" in text


def test_results_table_has_a_column_per_setting_labelled_by_it():
    _, measurements = _case()
    measurements[Setting("sigma-vae", 1.0)] = _measured()
    header = results_table(measurements).splitlines()[0]
    assert header == ("| validation set, last epoch | KL weight 1 | KL weight 100 | KL weight 0 | KL weight 10 "
                      "| σ-VAE, KL weight 1 |")


def test_q1_text_from_the_run_record():
    model = ConvVAE(4, 32, 8)
    config = SimpleNamespace(data="builtin:150", seed=0, data_seed=0, image_size=32, latent_dim=4, lr=1e-3, batch_size=50, epochs=2,
                             precision="bf16")
    info = {"data": {"images": 150, "skipped": 0, "source": "builtin:150"},
            "split": {"val_fraction": 0.05, "val": 8, "train": 142}, "device": "cpu"}
    run = SimpleNamespace(config=config, info=info, model=model, history={"seconds": [1.0, 2.0]})
    assert "built-in procedural face set (150 faces drawn directly at 32×32" in preprocessing_markdown(run)
    run.config.data = "/data/faces"
    run.info["data"].update(skipped=3, source="/data/faces")
    assert "3 entries were skipped" in preprocessing_markdown(run) and "resized to 32×32" in preprocessing_markdown(run)
    assert " Of them" not in preprocessing_markdown(run)  # a run recorded before conversions were
    run.info["data"]["converted"] = {"turned upright by their EXIF orientation": 2, "alpha composited on white": 1}
    assert ("antialiasing. Of them, 2 turned upright by their EXIF orientation, 1 alpha composited on white. Pixel "
            "values") in preprocessing_markdown(run)
    assert f"Total: {sum(p.numel() for p in model.parameters()):,} parameters." in architecture_markdown(run)
    settings = hyperparameters_markdown(run)
    assert "| precision of training | bf16 autocast (weights, optimiser, losses and validation in fp32) |" in settings
    assert "| training time (this run) | 3.0 s |" in settings


@pytest.mark.parametrize("likelihood, variance", [("fixed", "σ² = 1/2"), ("sigma-vae", "σ² = MSE per pixel (σ-VAE)")])
def test_learning_curve_titles_state_the_decoder_variance_used(likelihood, variance):
    history = {k: [1.0, 2.0] for k in ("train_neg_elbo", "val_neg_elbo", "train_recon", "val_recon", "train_kl", "val_kl")}
    history["epoch"] = [1, 2]
    run = SimpleNamespace(config=SimpleNamespace(likelihood=likelihood, image_size=8), history=history,
                          label=Setting(likelihood, 1.0).label, dir=Path("."))
    titles = [ax.get_title() for ax in learning_curve(run).axes]
    assert f"−ELBO (KL counted once, {variance})" in titles
