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
from .objective import vae_loss
from .train import autocast, resolve_device


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
    from .train import to_uint8

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


def bench_training(device: str = "auto", base_channels: tuple[int, ...] = (16, 32), batch_size: int = 100,
                   steps: int = 20) -> list[str]:
    """Training images per second of the 64×64 ConvVAE (forward, backward, Adam step)."""
    dev = resolve_device(device)
    lines = []
    for channels in base_channels:
        model = ConvVAE(20, 64, channels).to(dev)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.rand(batch_size, 3, 64, 64, device=dev)
        for step in range(steps + 3):
            if step == 3:  # after warm-up
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            with autocast(dev):
                x_hat, mu, logvar = model(x)
            loss = vae_loss(x, x_hat, mu, logvar, 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.objective.backward()
            optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rate = steps * batch_size / (time.perf_counter() - started)
        lines.append(f"training on {dev} ({torch.get_num_threads()} threads), base_channels={channels}: "
                     f"{rate:,.0f} images/s, {21551 / rate:.1f} s per epoch of 21,551 images")
    return lines
