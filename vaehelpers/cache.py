"""The data cache: a preprocessed image set kept on disk, so that a second load reads one array.

An entry is ``<key>.npy`` (uint8 N×3×S×S), ``<key>-factors.npz`` (the built-in faces' factors)
and ``<key>.json`` (what the load skipped and converted; written last, it marks the entry
complete). The key hashes the description of the source (each file's path, size, modification
and change time; or the array file's; or the built-in set's size and seed) and the
preprocessing. The cache lives in ``$VAEHELPERS_CACHE`` or ``~/.cache/vaehelpers``; it only
saves time, so where it cannot be written (a full disk, a read-only folder) a load says so in
one line and goes on without it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from .files import NotWritable, write_atomic

PREPROCESS_VERSION = 1
"""Bumped whenever the preprocessing of an image changes, so older caches are not reused. (The skip rules
changed what a folder's description holds, which keys folders anew by itself; built-in and array sets,
unchanged, keep their keys and so their runs.)"""


def default_cache_dir() -> Path:
    """``$VAEHELPERS_CACHE`` if set, else ``~/.cache/vaehelpers``."""
    return Path(os.environ.get("VAEHELPERS_CACHE", Path.home() / ".cache" / "vaehelpers"))


def cache_key(description: dict) -> str:
    """The entry's name: a hash of the source's description and of the preprocessing."""
    text = json.dumps({**description, "preprocess_version": PREPROCESS_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_entry(cache: Path, key: str) -> tuple[torch.Tensor, dict[str, np.ndarray], dict] | None:
    """A complete entry as (images, factors, meta), or None where it is missing or unreadable (it is then
    built again). ``meta`` holds ``entries``, ``skipped_entries`` and ``converted``."""
    images_file, meta_file, factors_file = cache / f"{key}.npy", cache / f"{key}.json", cache / f"{key}-factors.npz"
    try:
        meta = json.loads(meta_file.read_text())
        images = torch.from_numpy(np.load(images_file, allow_pickle=False))
        factors = {}
        if factors_file.exists():
            with np.load(factors_file, allow_pickle=False) as z:
                factors = {k: z[k] for k in z.files}
        if len(images) != meta["count"] or not {"entries", "skipped_entries", "converted"} <= set(meta):
            return None
    except (OSError, ValueError, KeyError, TypeError):  # also an entry written by an older version
        return None
    return images, factors, meta


def write_entry(cache: Path, key: str, images: torch.Tensor, factors: dict[str, np.ndarray], meta: dict) -> None:
    """Write an entry, its ``.json`` last. Raises :class:`~vaehelpers.files.NotWritable` where the cache's
    disk is full or its folder read-only; the entry's files written before are then removed, so that a
    full disk is not left fuller."""
    files = [cache / f"{key}.npy", cache / f"{key}-factors.npz", cache / f"{key}.json"]
    try:
        write_atomic(files[0], _npy_bytes(np.save, images.numpy()))
        if factors:
            write_atomic(files[1], _npy_bytes(np.savez, **factors))
        write_atomic(files[2], json.dumps({**meta, "count": len(images)}).encode())
    except NotWritable:
        for file in files:
            file.unlink(missing_ok=True)
        raise


def _npy_bytes(save, *args, **kwargs) -> bytes:
    """What ``np.save`` or ``np.savez`` would write, as bytes."""
    buffer = io.BytesIO()
    save(buffer, *args, **kwargs)
    return buffer.getvalue()
