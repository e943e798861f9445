"""Measurements behind the README's figures: ``python -m vaehelpers bench``.

Times the built-in face generator, the first and the cached load of each kind of source
(a folder of PNG files and an .npz array of the course's shape, made from built-in faces
in a temporary folder), and training speed on the chosen device.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import load_images
from .faces import make_faces
from .model import ConvVAE
from .train import cpu_has_native_bf16, resolve_device, training_rate


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def bench_loading(n_images: int = 21551) -> list[str]:
    """First and second (cached) load of a PNG folder and an .npz array of ``n_images`` faces."""
    lines = []
    (images, _), seconds = _timed(lambda: make_faces(10_000, seed=0))
    lines.append(f"built-in faces: 10,000 drawn in {seconds:.2f} s")
    images, _ = make_faces(n_images, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "faces"
        folder.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
        np.savez(root / "animation.npz", images)
        for source in (folder, root / "animation.npz"):
            cache = root / f"cache-{source.name}"
            def load(source=source, cache=cache):
                return load_images(source, 64, cache_dir=cache)

            _, first = _timed(load)
            second = sorted(_timed(load)[1] for _ in range(3))[1]
            lines.append(f"{source.name} ({n_images} images): first load {first:.2f} s, "
                         f"cached {second:.3f} s (median of 3; {first / second:.0f}x faster)")
    return lines


def bench_explore(base_channels: tuple[int, ...] = (16, 32), repeats: int = 20) -> list[str]:
    """One update of explore.ipynb's latent sliders on the CPU: decode one 64×64 image, encode it as PNG."""
    from .explore import png
    from .decode import to_uint8

    lines = []
    for channels in base_channels:
        model = ConvVAE(20, 64, channels).eval()
        z = torch.zeros(1, 20)
        with torch.no_grad():
            png(to_uint8(model.decode(z))[0], scale=4)  # warm-up
            started = time.perf_counter()
            for _ in range(repeats):
                png(to_uint8(model.decode(z))[0], scale=4)
        lines.append(f"explore.ipynb slider update, base_channels={channels}: "
                     f"{1000 * (time.perf_counter() - started) / repeats:.1f} ms (decode one image and draw it)")
    return lines


def bench_training(device: str = "auto", base_channels: tuple[int, ...] = (16, 32)) -> list[str]:
    """fp32 and bf16 training speed side by side, interleaved so that both see the same machine. Where the CPU
    emulates bf16 (no AVX512-BF16 or AMX), bf16 is timed on two steps only, and the line says so."""
    dev = resolve_device(device)
    emulated = dev.type == "cpu" and not cpu_has_native_bf16()
    native = "bf16 emulated: no AVX512-BF16/AMX" if emulated else "native bf16"
    lines = []
    for channels in base_channels:
        rates = {p: [] for p in ("fp32", "bf16")}
        for _ in range(3):  # median of three, alternating
            for precision in rates:
                if emulated and precision == "bf16":
                    continue
                rates[precision].append(training_rate(dev, channels, precision))
        if emulated:  # minutes at length; two steps tell the slowdown
            rates["bf16"] = [training_rate(dev, channels, "bf16", steps=2, warmup=1)] * 3
        fp32, bf16 = (sorted(r)[1] for r in rates.values())
        timed = "bf16 on 2 steps, emulated" if emulated else "bf16"
        lines.append(f"training on {dev} ({torch.get_num_threads()} threads, {native}), base_channels={channels}: "
                     f"fp32 {fp32:,.0f} images/s, {timed} {bf16:,.0f} images/s ({bf16 / fp32:.2f}x); "
                     f"{21551 / max(bf16, fp32):.1f} s per epoch of 21,551 images in {'fp32' if fp32 > bf16 else 'bf16'}")
    return lines


def compare_precision(settings: dict, device: str = "auto", runs_dir: str = "runs") -> list[str]:
    """Train one setting (KL weight 1) in fp32 and in bf16, reusing finished runs, and compare what they reach.

    The validation −ELBO and PSNR are computed in fp32 for both, so the difference is the training's.
    """
    from .measure import measure_run
    from .store import RunConfig
    from .train import fit

    results = {}
    for precision in ("fp32", "bf16"):
        run = fit(RunConfig(**dict(settings, kl_weight=1.0, precision=precision)), runs_dir=runs_dir, device=device,
                  progress="epochs")
        results[precision] = (run.history["val_neg_elbo"][-1], measure_run(run)["psnr_db"], sum(run.history["seconds"]))
    (e32, p32, t32), (e16, p16, t16) = results["fp32"], results["bf16"]
    described = ", ".join(f"{k} {v}" for k, v in settings.items())
    return [f"KL weight 1, {described}, on {resolve_device(device)}:",
            f"fp32: validation -ELBO {e32:,.2f} nats, PSNR {p32:.2f} dB, training {t32:.0f} s",
            f"bf16: validation -ELBO {e16:,.2f} nats, PSNR {p16:.2f} dB, training {t16:.0f} s",
            f"bf16 - fp32: -ELBO {100 * (e16 - e32) / e32:+.3f} %, PSNR {p16 - p32:+.2f} dB, time {t16 / t32:.2f}x"]


def compare_events(settings: dict, device: str = "auto") -> list[str]:
    """What writing TensorBoard events costs: the quick budget's weight-1 run trained without and with them,
    side by side (each in a fresh temporary runs folder), and the writing alone, timed by replaying every call
    the training made (the same scalars, images and flushes) into a temporary folder."""
    from .board import Board, recorded_steps, steps_per_epoch
    from .store import RunConfig
    from .train import fit

    cfg = RunConfig(**dict(settings, kl_weight=1.0))
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for events in (False, True):
            started = time.perf_counter()
            run = fit(cfg, runs_dir=Path(tmp) / str(events), device=device, progress=False, events=events)
            seconds[events] = time.perf_counter() - started
        steps = steps_per_epoch(run.config, run.info["split"]["train"])
        started = time.perf_counter()
        board = Board(Path(tmp) / "replay", run.config, steps, {}, {})
        for epoch in run.history["epoch"]:
            row = {c: values[epoch - 1] for c, values in run.history.items()}
            board.step_objectives(epoch, [row["train_objective"]] * len(recorded_steps(steps)))
            board.epoch(row)
            if epoch in run.snapshots["epochs"]:
                shot = run.snapshots["epochs"][epoch]
                board.snapshot(epoch, run.snapshots["panel"], shot["recon"], shot["samples"])
            board.flush()  # at most once per epoch in training (with the checkpoint)
        board.close()
        writing = time.perf_counter() - started
    described = ", ".join(f"{k} {v}" for k, v in settings.items())
    return [f"KL weight 1, {described}, on {resolve_device(device)} ({run.config.precision}):",
            f"training without events {seconds[False]:.1f} s, with events {seconds[True]:.1f} s "
            f"({100 * (seconds[True] / seconds[False] - 1):+.1f} %, side by side: the machine's noise included)",
            f"writing the events alone (every call replayed): {writing:.2f} s, "
            f"{100 * writing / seconds[True]:.2f} % of the training with events"]
