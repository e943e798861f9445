"""Every random stream a run draws from, each independent of the others and of other seeds' streams.

Training streams come from the run's ``seed``: what another seed changes.

* ``weights``: the initial weights;
* ``batches``: the order of the training images in each epoch;
* ``noise``: the reparameterisation noise ε of every training step.

Measuring streams come from ``data_seed`` alone: the same for every seed and KL weight of a sweep (which
share their data and held-out images), so that the spread over seeds is that of training alone.

* ``validation``: ε of the validation −ELBO after each epoch (``index``: the epoch);
* ``prior_codes``: the prior codes decoded at each snapshot (the figures' prior samples);
* ``measure_noise``: ε of the final validation terms;
* ``iwae``: the IWAE bound's k samples per image;
* ``mmd_codes``: the prior codes decoded for the MMD and the samples' diversity;
* ``probe``: the sampled z of the linear probe.

A stream drawn on a GPU (the noise, the validation and measurement noise, the IWAE samples) gives other
numbers than the same stream on the CPU: PyTorch's CUDA generator is another algorithm. So the measurements'
draws are the same for every run measured on one kind of device.

Each stream is a :class:`numpy.random.SeedSequence` whose entropy is the seed (or data_seed) and whose spawn
key names the stream, ``(0 training | 1 measuring, stream, index)``; SeedSequence hashes both into the state
it hands out (here, the seed of a :class:`torch.Generator`), so streams of different seeds, names or indices
do not share their draws, as NumPy documents for SeedSequence (where seed s + 1 and seed s's "s + 1" would).

Version 1, the runs trained before this module, seeded every stream from offsets of the seed (weights,
batches and noise from the seed itself, the snapshot codes from seed + 1, the validation after epoch e from
seed + e), so that seed s + 1's streams were seed s's: such runs keep these streams, so that they resume
exactly and keep their folders (``RunConfig.streams``).
"""

from __future__ import annotations

import numpy as np
import torch

VERSION = 2
TRAINING = ("weights", "batches", "noise")
MEASURING = ("validation", "prior_codes", "measure_noise", "iwae", "mmd_codes", "probe")


def stream_seed(name: str, seed: int, data_seed: int, index: int = 0, version: int = VERSION) -> int:
    """The seed (0 ≤ seed < 2⁶³) of the stream ``name`` of a run with ``seed`` and ``data_seed``."""
    if version == 1 and name in ("weights", "batches", "noise", "prior_codes", "validation"):
        return seed + {"prior_codes": 1, "validation": index}.get(name, 0)
    if name in TRAINING:
        entropy, key = seed, (0, TRAINING.index(name), index)
    elif name in MEASURING:
        entropy, key = data_seed, (1, MEASURING.index(name), index)
    else:
        raise ValueError(f"No random stream {name!r}; the streams are {', '.join(TRAINING + MEASURING)}.")
    low, high = np.random.SeedSequence(entropy, spawn_key=key).generate_state(2, np.uint32)
    return (int(high) << 32 | int(low)) & (2**63 - 1)


def generator(name: str, seed: int, data_seed: int, index: int = 0, version: int = VERSION,
              device: str | torch.device = "cpu") -> torch.Generator:
    """A :class:`torch.Generator` on ``device`` seeded with :func:`stream_seed`."""
    return torch.Generator(device=device).manual_seed(stream_seed(name, seed, data_seed, index, version))
