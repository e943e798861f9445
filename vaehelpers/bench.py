"""Measurements behind the figures of docs/speed.md: ``python -m vaehelpers bench``.

Times the built-in face generator, the first and the cached load of each kind of source
(a folder of PNG files and an .npz array of the course's shape, made from built-in faces
in a temporary folder), and training speed on the chosen device.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import load_images
from .faces import make_faces
from .model import ConvVAE
from .devices import resolve_device


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


def bench_training(device: str = "auto", shapes: tuple[dict, ...] = ()) -> list[str]:
    """For each shape (the quick budget's and the assignment's by default, with the threads the report gives each
    run): what ``auto`` chooses (the recorded speed probe, :func:`~vaehelpers.speed.choose_step`), and every
    candidate of {fp32, bf16} × {eager, compiled} measured afresh side by side over five rounds, so that the
    choice can be checked against the fastest for the shape's run, its compile included."""
    from .params import ASSIGNMENT, QUICK
    from .cache import default_cache_dir
    from .speed import Shape, choose_step, measure_rates, precisions_here
    from .step import compiler_missing
    from .store import RunConfig
    from .local import local_workers

    dev = resolve_device(device)
    lines = []
    for settings in shapes or (QUICK, ASSIGNMENT):
        cfg = RunConfig(**{**settings, "data": "builtin"})
        runs = 8 if settings.get("base_channels") == QUICK["base_channels"] else 6
        workers, threads = local_workers(runs, cfg.base_channels, cfg.image_size, device)
        train_images = round(int(str(settings.get("data", "builtin:21551")).split(":")[-1]) * (1 - cfg.val_fraction))
        images = cfg.epochs * train_images
        previous = torch.get_num_threads()
        torch.set_num_threads(threads if workers > 1 else previous)
        try:
            choice = choose_step(cfg, dev, train_images)
            candidates = [f"{p}{c}" for p in precisions_here(dev)
                          for c in ("", " compiled")[:1 if compiler_missing(dev) else 2]]
            fresh = measure_rates(dev, Shape.of(cfg), candidates, default_cache_dir() / "inductor", rounds=5)
            threads_now = torch.get_num_threads()
        finally:
            torch.set_num_threads(previous)
        measured = ", ".join(f"{c} {r:,.0f}" for c, r in fresh.rates.items())
        costs = ", ".join(f"{p} {s:.1f} s" for p, s in fresh.compile_s.items() if p != "import")
        chosen = f"{choice.precision}{' compiled' if choice.compiled else ''}"
        fastest = min(fresh.rates, key=lambda c: fresh.seconds(c, images))
        behind = fresh.seconds(chosen, images) / fresh.seconds(fastest, images) - 1 if chosen in fresh.rates else None
        lines.append(f"training on {dev} ({fresh.key['device']}, {threads_now} thread{'s' if threads_now > 1 else ''} "
                     f"a run), {Shape.of(cfg).describe()}: {measured} images/s" + (f"; compile {costs} a run" if costs
                                                                                   else f"; {compiler_missing(dev)}"))
        lines.append(f"  auto chooses {choice.describe()}")
        if behind is not None:
            lines.append(f"  for its run of {images:,} images the fastest measured now is {fastest}; the choice is "
                         + ("that one" if chosen == fastest else f"{100 * behind:.1f} % slower")
                         + (" (within 5 %)" if behind <= 0.05 else " (more than 5 % slower: measured again, the "
                            "probe's record would differ; delete it to measure anew)"))
    return lines


def bench_homework(device: str = "auto", base_channels: tuple[int, ...] = (16, 32), n_images: int = 5000) -> list[str]:
    """The project's training against the usual homework loop, one process each, on ``n_images`` PNG faces (made
    from the built-in set in a temporary folder), the same model and batch (50 at base 16, 100 at base 32):

    * homework: torchvision's ``ImageFolder`` with ``Resize`` and ``ToTensor`` each epoch, ``DataLoader`` with
      2 worker processes, plain ``torch.optim.Adam``, fp32, eager, images in PyTorch's default layout;
    * this project: the folder decoded once into the data cache, uint8 batches in memory, channels-last, fused
      Adam, and the precision and step ``auto`` chooses (:func:`~vaehelpers.train.decide_step`).

    Each is timed on one epoch after a warm-up epoch (which includes the compile, where there is one)."""
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from tqdm.auto import tqdm
    from torchvision.datasets import ImageFolder

    from .objective import vae_loss
    from .store import RunConfig, build_model
    from .step import adam, compiled_encode_decode
    from .train import decide_step, train_epoch

    dev = resolve_device(device)
    faces, _ = make_faces(n_images, seed=0)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "faces"
        (folder / "face").mkdir(parents=True)  # ImageFolder's one class
        for i, image in enumerate(faces):
            Image.fromarray(image).save(folder / "face" / f"{i:05d}.png")
        data = load_images(folder, 64, cache_dir=Path(tmp) / "cache")
        for channels in base_channels:
            batch = 50 if channels <= 16 else 100
            cfg = RunConfig(data=str(folder), base_channels=channels, batch_size=batch, lr=1e-3,
                            epochs=16 if channels <= 16 else 100)  # the report's runs, for what auto chooses
            model = ConvVAE(cfg.latent_dim, 64, channels).to(dev)
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            loader = DataLoader(ImageFolder(str(folder), transforms.Compose([transforms.Resize(64), transforms.ToTensor()])),
                                batch_size=batch, shuffle=True, num_workers=2)
            seconds = []
            for _ in range(2):
                started = time.perf_counter()
                for x, _ in loader:
                    x = x.to(dev)
                    x_hat, mu, logvar = model(x)
                    loss = vae_loss(x, x_hat, mu, logvar).objective
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                seconds.append(time.perf_counter() - started)
            homework = n_images / seconds[1]

            choice = decide_step(cfg, dev, data, Path(tmp) / "runs", cache_dir=Path(tmp) / "cache")
            cfg = replace(cfg, precision=choice.precision)
            model = build_model(cfg).to(dev, memory_format=torch.channels_last)
            optimizer = adam(model, cfg.lr)
            images = data.images.to(dev)
            passes = compiled_encode_decode(Path(tmp) / "cache" / "inductor") if choice.compiled else None
            seconds = []
            shuffle, noise = torch.Generator().manual_seed(0), torch.Generator(device=dev).manual_seed(0)
            for epoch in (1, 2):
                started = time.perf_counter()
                with tqdm(disable=True) as bar:
                    train_epoch(model, optimizer, images, cfg, shuffle, noise, bar, epoch, passes)
                seconds.append(time.perf_counter() - started)
            ours = len(images) / seconds[1]
            lines.append(f"base_channels={channels}, batch {batch}, {torch.get_num_threads()} threads, {n_images:,} PNG "
                         f"faces: homework loop {homework:,.0f} images/s, this project ({choice.precision}"
                         f"{', compiled' if choice.compiled else ''}) {ours:,.0f} images/s: {ours / homework:.2f}x")
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


def compare_compiled(settings: dict, device: str = "auto", runs_dir: str = "runs") -> list[str]:
    """Train one setting (KL weight 1) eagerly and compiled, in fp32 and in bf16 (each in its own runs folder, reusing
    finished runs), and compare the histories: the largest relative difference of any term in any epoch, and the
    final validation −ELBO."""
    from .store import RunConfig
    from .train import fit

    lines = [f"KL weight 1, {', '.join(f'{k} {v}' for k, v in settings.items())}, on {resolve_device(device)}:"]
    for precision in ("fp32", "bf16"):
        cfg = RunConfig(**dict(settings, kl_weight=1.0, precision=precision))
        eager, compiled = (fit(cfg, runs_dir=Path(runs_dir) / name, device=device, compiled=name == "compiled",
                               progress=False) for name in ("eager", "compiled"))
        worst = max((abs(compiled.history[k][i] - v) / abs(v), k, i + 1) for k, values in eager.history.items()
                    if k not in ("epoch", "seconds", "peak_gpu_mib") for i, v in enumerate(values) if v)
        e, c = eager.history["val_neg_elbo"][-1], compiled.history["val_neg_elbo"][-1]
        lines.append(f"{precision}: largest relative difference {worst[0]:.2e} ({worst[1]}, epoch {worst[2]}); final "
                     f"validation -ELBO {e:,.2f} eager, {c:,.2f} compiled ({100 * (c - e) / e:+.3f} %)")
    return lines


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
