"""Images in: load an image set from its source (through the cache), split it and batch it.

A source is one of
  * ``None`` or ``"builtin"`` — the built-in procedural face set (``"builtin:N"`` for N faces);
  * a folder — searched recursively for PNG, JPEG, WebP, BMP, GIF and TIFF files
    (:mod:`vaehelpers.folders`);
  * an ``.npz`` / ``.npy`` file — an array of images, channels last, such as the course's
    ``animation.npz`` of shape (21551, 64, 64, 3) uint8 (:func:`vaehelpers.decode.decode_array`).

Every image is converted to RGB and to the model's size as :mod:`vaehelpers.decode` says; a
load says in one line what it skipped and in another what it converted. The whole set is
kept as one uint8 tensor N×3×S×S and cached on disk (:mod:`vaehelpers.cache`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import faces
from .cache import cache_key, default_cache_dir, read_entry, write_entry
from .decode import CONVERSIONS, FORMATS, Converted, decode_array, user_stacklevel
from .files import NotWritable, ensure_writable, locked, write_atomic
from .folders import folder_files, load_folder, warn_converted, warn_skipped

DEFAULT_BUILTIN_SIZE = 10_000
FOLDER_DECODER = 2
"""Part of a folder's cache key: bumped when what a folder yields changes (2: GIF and TIFF read, EXIF
orientation applied), so that neither its cache entry nor its runs are reused. Built-in and array sets,
unchanged, keep their keys and so their runs."""


@dataclass
class ImageSet:
    """A preprocessed image set held in memory.

    ``images`` is uint8, N×3×S×S, values 0..255. ``factors`` holds the ground-truth
    generative factors (one float32 array of length N each) for the built-in face set,
    and is empty for other sources. ``skipped`` counts files that could not be used; ``converted``
    counts the images each conversion of :data:`~vaehelpers.decode.CONVERSIONS` changed.
    ``key`` identifies the source by its content and the preprocessing (:func:`content_key`): it names the
    source's runs, which moving or copying the data keeps; ``path_key`` by its paths and times (the cache key).
    """

    images: torch.Tensor
    source: str
    key: str
    skipped: int = 0
    factors: dict[str, np.ndarray] = field(default_factory=dict)
    converted: dict[str, int] = field(default_factory=dict)
    path_key: str = ""  # the key runs were named by before content keys: the source's paths and times (the cache's)

    def __post_init__(self) -> None:
        self.path_key = self.path_key or self.key

    def __len__(self) -> int:
        return self.images.shape[0]


def parse_builtin(source: str | os.PathLike | None) -> int | None:
    """The number of built-in faces a source asks for, or None if it is not the built-in set."""
    if source is None:
        return DEFAULT_BUILTIN_SIZE
    text = str(source)
    if text == "builtin":
        return DEFAULT_BUILTIN_SIZE
    if text.startswith("builtin:"):
        count = text.split(":", 1)[1]
        if not count.isdigit() or int(count) <= 0:
            raise ValueError(f"Data source {text!r}: write builtin:N with N a positive whole number, e.g. builtin:2000.")
        return int(count)
    return None


def load_images(
    source: str | os.PathLike | None = None,
    image_size: int = 64,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> ImageSet:
    """Load and preprocess a whole image set, from the on-disk cache when possible.

    ``seed`` only affects the built-in face set. ``cache_dir`` defaults to
    :func:`~vaehelpers.cache.default_cache_dir`. Raises ``FileNotFoundError`` for a missing source and
    ``ValueError`` for an empty or malformed one, each naming the path. Where the cache cannot be
    written (a full disk, a read-only folder) the set is loaded all the same, with one warning.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}.")
    n_builtin = parse_builtin(source)
    if n_builtin is not None:
        description = {"kind": "builtin", "n": n_builtin, "seed": seed, "version": faces.GENERATOR_VERSION}
        name = f"builtin:{n_builtin} (seed {seed})"
    else:
        path = Path(source).expanduser()  # type: ignore[arg-type]
        if not path.exists():
            raise FileNotFoundError(f"Data source {path} does not exist: give an image folder, an .npz/.npy file, or 'builtin'.")
        if path.is_dir():
            files, unlisted = folder_files(path)
            if not files and not unlisted:
                raise ValueError(f"Data folder {path} is empty: add {FORMATS} files to it.")
            description = {"kind": "folder", "root": str(path.resolve()), "files": files, "unlisted": unlisted,
                           "decoder": FOLDER_DECODER}
        elif path.suffix.lower() in (".npz", ".npy"):
            st = path.resolve().stat()
            description = {"kind": "array", "file": [str(path.resolve()), st.st_size, st.st_mtime_ns]}
        else:
            raise ValueError(f"Data source {path} is neither a folder nor an .npz/.npy file: point to one of those.")
        name = str(path)
    description["image_size"] = image_size

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(description)
    data = None
    try:
        cached = read_entry(cache, key)  # complete entries are only read: runs trained at once need no lock for it
        if cached is None:
            ensure_writable(cache, f"the data cache of {name}")
        with contextlib.nullcontext() if cached is not None else locked(  # one process builds it, others reuse it
                cache / f"{key}.lock", f"the data cache entry of {name}"):
            cached = cached or read_entry(cache, key)
            if cached is not None:
                images, factors, meta = cached
                _say(meta, name)  # a cached load says what it left out and converted, too
                content = meta.get("content_key")
                if content is None:  # an entry from before content keys: computed once, kept in the entry
                    content = content_key(description, None if n_builtin else path)
                    with contextlib.suppress(NotWritable):
                        write_atomic(cache / f"{key}.json", json.dumps({**meta, "content_key": content}).encode())
                return ImageSet(images, name, content, len(meta["skipped_entries"]), factors,
                                _counts(meta, len(images)), key)
            data, meta = _build(description, name, key, image_size, seed, None if n_builtin else path)
            write_entry(cache, key, data.images, data.factors, {**meta, "content_key": data.key})
    except NotWritable as e:  # the cache only saves time: go on without it
        warnings.warn(f"{e} Until then the images are loaded without the cache, decoded anew at every load.",
                      stacklevel=user_stacklevel())
    return data if data is not None else _build(description, name, key, image_size, seed, None if n_builtin else path)[0]


def cached_images(key: str, name: str, cache_dir: str | os.PathLike | None = None) -> ImageSet | None:
    """The image set of ``name`` as the data cache keeps it under ``key`` (an entry's content key, or the entry's
    own key for a run named by its data's path), or None: what a run trained on after its data moved away."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for meta_file in sorted(cache.glob("*.json")):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and key in (meta.get("content_key"), meta_file.stem):
            cached = read_entry(cache, meta_file.stem)
            if cached is not None:
                images, factors, meta = cached
                return ImageSet(images, name, meta.get("content_key", key), len(meta["skipped_entries"]), factors,
                                _counts(meta, len(images)), meta_file.stem)
    return None


def content_key(description: dict, path: Path | None) -> str:
    """The key that names the runs of a source: its content, never its absolute path or times. An array file:
    the SHA-256 of its bytes; a folder: every file's relative name and the SHA-256 of its bytes (computed once,
    when the cache entry is built, which reads every file anyway); the built-in set: its description (size,
    seed), as before. A copy or a move keeps the key; a changed, added, removed or renamed file changes it."""
    if description["kind"] == "builtin":
        return cache_key(description)
    if description["kind"] == "array":
        content = {"sha256": _sha256(path)}  # type: ignore[arg-type]
    else:
        files = hashlib.sha256()
        for relative, *_ in description["files"]:
            files.update(f"{relative}\0{_sha256(path / relative)}\0".encode())  # type: ignore[operator]
        content = {"files": files.hexdigest(), "unlisted": description["unlisted"], "decoder": description["decoder"]}
    return cache_key({"kind": description["kind"], "named_by": "content", **content,
                      "image_size": description["image_size"]})


def _sha256(file: Path) -> str:
    """The SHA-256 of a file's bytes ("unreadable" where it cannot be read: the load skips it and says so)."""
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return "unreadable"
    return digest.hexdigest()


def _say(meta: dict, name: str) -> None:
    """The load's two lines: what it skipped, and what it converted."""
    warn_skipped(meta["skipped_entries"], meta["entries"], name)
    if meta["converted"]:
        count = meta["entries"] - len(meta["skipped_entries"])
        if meta["converted"][0][0] == "":  # an array: every image converted alike
            what = ", ".join(note for _, note in meta["converted"])
            warnings.warn(f"Converted all {count} images of {name}: {what}.", Converted, stacklevel=user_stacklevel())
        else:
            warn_converted(meta["converted"], count, name)


def _build(description: dict, name: str, key: str, image_size: int, seed: int,
           path: Path | None) -> tuple[ImageSet, dict]:
    """Decode the source (and say what was skipped and converted); the set and the cache entry's meta."""
    skipped: list[list[str]] = []
    converted: list[list[str]] = []
    factors: dict[str, np.ndarray] = {}
    if description["kind"] == "builtin":
        array, factors = faces.make_faces(description["n"], seed=seed, size=image_size)
        images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    elif description["kind"] == "folder":
        images, skipped, converted = load_folder(path, [f[0] for f in description["files"]], image_size,
                                                 description["unlisted"])
    else:
        images, notes = decode_array(_read_array(path), path, image_size)
        converted = [["", note] for note in notes]
    meta = {"source": name, "entries": len(images) + len(skipped), "skipped_entries": skipped, "converted": converted}
    _say(meta, name)
    return ImageSet(images, name, content_key(description, path), len(skipped), factors, _counts(meta, len(images)),
                    key), meta


def _counts(meta: dict, count: int) -> dict[str, int]:
    """How many images each conversion changed (an array's conversions change all of them)."""
    notes = [note for _, note in meta["converted"]]
    return {note: count if meta["converted"][0][0] == "" else notes.count(note) for note in CONVERSIONS if note in notes}


def _read_array(path: Path) -> np.ndarray:
    """The one array of images in an .npy or .npz file, or a ``ValueError`` naming the file."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"Cannot read {path} as a NumPy .npz/.npy file ({e}); give an array of shape (N, H, W, 3) uint8.") from e
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return loaded
    try:
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    except Exception as e:  # an object array (pickled Python objects), a damaged member
        raise ValueError(f"Cannot read the arrays in {path} ({e}); give an array of shape (N, H, W, 3) uint8.") from e
    candidates = arrays if len(arrays) == 1 else {k: a for k, a in arrays.items() if a.ndim in (3, 4)}
    if len(candidates) != 1:
        shapes = ", ".join(f"{k} {a.shape}" for k, a in arrays.items())
        raise ValueError(f"{path} holds arrays {shapes or 'none'}; expected exactly one of shape (N, H, W, 3) uint8.")
    return next(iter(candidates.values()))


def split_indices(n: int, val_fraction: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into sorted (train, validation) index tensors.

    The validation part holds ``round(n * val_fraction)`` images, at least one.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    if n < 2:
        raise ValueError(f"Need at least 2 images to split into training and validation, got {n}.")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def batches(
    images: torch.Tensor, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Float batches in [0, 1] from a uint8 N×3×S×S tensor, on the tensor's device.

    The images stay uint8 wherever they live (the GPU, for a CUDA run); each batch is
    converted to float on its own. With ``shuffle``, the order comes from ``generator``
    (a CPU generator, so that runs are reproducible on any device).
    """
    n = images.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(images.device)
    for start in range(0, n, batch_size):
        yield images[order[start : start + batch_size]].float().div_(255.0)
