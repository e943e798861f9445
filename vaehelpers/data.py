"""Images in: load, preprocess, cache, split and batch.

A source is one of
  * ``None`` or ``"builtin"`` — the built-in procedural face set (``"builtin:N"`` for N faces);
  * a folder — searched recursively for PNG, JPEG, WebP and BMP files;
  * an ``.npz`` / ``.npy`` file — a uint8 array of shape (N, H, W, 3), such as the
    course's ``animation.npz`` of shape (21551, 64, 64, 3).

Every image is converted to RGB (alpha composited on white, grey expanded to three
channels), centre-cropped to a square and resized with antialiasing to ``image_size``.
The whole set is kept as one uint8 tensor N×3×S×S and cached on disk, keyed by the
source's files (path, size and modification time of each) and the preprocessing settings.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from . import faces
from .files import locked, write_atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_PIXELS = 50_000_000
"""Images of more pixels than this (50 megapixels) are skipped before they are decoded."""
MIN_SIDE = 8
"""Images narrower or lower than this, in pixels, are skipped rather than blown up."""
DEFAULT_BUILTIN_SIZE = 10_000
PREPROCESS_VERSION = 1
"""Bumped whenever the preprocessing of an image changes, so older caches are not reused. (The skip rules
changed what a folder's description holds, which keys folders anew by itself; built-in and array sets,
unchanged, keep their keys and so their runs.)"""


@dataclass
class ImageSet:
    """A preprocessed image set held in memory.

    ``images`` is uint8, N×3×S×S, values 0..255. ``factors`` holds the ground-truth
    generative factors (one float32 array of length N each) for the built-in face set,
    and is empty for other sources. ``skipped`` counts files that could not be used.
    ``key`` identifies the source's files and the preprocessing (the cache key).
    """

    images: torch.Tensor
    source: str
    key: str
    skipped: int = 0
    factors: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]


def default_cache_dir() -> Path:
    """``$VAEHELPERS_CACHE`` if set, else ``~/.cache/vaehelpers``."""
    return Path(os.environ.get("VAEHELPERS_CACHE", Path.home() / ".cache" / "vaehelpers"))


def preprocess(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """One decoded image (C×H×W, uint8 or float in [0, 1], C in 1..4) to uint8 3×S×S.

    Grey is expanded to RGB, alpha is composited on white, the largest centred square is
    cropped and resized to ``image_size`` with antialiasing.
    """
    return preprocess_batch(image.unsqueeze(0), image_size)[0]


def preprocess_batch(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Like :func:`preprocess` for a batch N×C×H×W of images of one size."""
    if images.dtype == torch.uint8 and images.shape[1] == 3 and images.shape[-2:] == (image_size, image_size):
        return images.contiguous()
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    channels = x.shape[1]
    if channels in (2, 4):  # composite on white
        alpha = x[:, -1:]
        x = x[:, :-1] * alpha + (1.0 - alpha)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"Expected 1 to 4 channels per image, got {channels}.")
    side = min(x.shape[-2:])
    x = TF.center_crop(x, [side, side])
    if side != image_size:
        x = TF.resize(x, [image_size, image_size], antialias=True)
    return to_uint8(x)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (clamped) to uint8 0..255, rounded, on the CPU."""
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


class Skip(ValueError):
    """A file that is not used, with its reason: one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


SKIP_REASONS = ("unreadable", "corrupt", "not an image", "too large", "too small", "symlink loop")


def decode_file(path: Path) -> torch.Tensor:
    """Decode an image file with Pillow to C×H×W: uint8, or float in [0, 1] for 16-bit images.

    (torchvision's own decoders are deprecated since 0.29; Pillow, which it depends on,
    reads PNG, JPEG, WebP and BMP alike.) The size is read from the header first: images of
    more than :data:`MAX_PIXELS` pixels, or under :data:`MIN_SIDE` pixels on a side, are
    refused before anything is decoded. Raises :class:`Skip` with the reason.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit applies
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise Skip("too large", f"{width}×{height} is over {MAX_PIXELS / 1e6:g} megapixels")
                if min(width, height) < MIN_SIDE:
                    raise Skip("too small", f"{width}×{height} is under {MIN_SIDE} pixels on a side")
                im.load()  # decodes the whole file: a truncated one raises here
                if im.mode.startswith("I"):  # 16-bit (or 32-bit integer) grey
                    array = np.asarray(im, dtype=np.float32) / 65535.0
                else:
                    if im.mode not in ("L", "LA", "RGB", "RGBA"):
                        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
                    array = np.asarray(im)
    except Skip:
        raise
    except Image.DecompressionBombError as e:
        raise Skip("too large", str(e)) from e
    except PermissionError as e:
        raise Skip("unreadable", str(e)) from e
    except Image.UnidentifiedImageError as e:
        raise Skip("not an image", str(e)) from e
    except Exception as e:  # Pillow raises many kinds of error for bad files
        raise Skip("corrupt", f"cannot decode {path}: {e}") from e
    return torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1).copy()).permute(2, 0, 1)


def _fingerprint(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _folder_files(root: Path) -> tuple[list[list], list[list[str]]]:
    """Every non-hidden file under ``root`` as [relative path, size, mtime_ns, ctime_ns], sorted, and the
    entries that could not be listed as [relative path, reason].

    ``os.scandir`` reads the file type from the directory itself, so a folder of tens of
    thousands of images costs one ``stat`` per file. Symbolic links are followed, except into
    a folder already being searched (a loop). The ctime changes with permissions, so a file
    made readable again is decoded again.
    """
    found, skipped, prefix = [], [], len(str(root)) + 1
    stack = [(root, frozenset({_dir_id(root)}))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            skipped.append([str(folder)[prefix:] or ".", "unreadable"])
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = entry.path[prefix:]
            try:
                if entry.is_dir():
                    ident = _dir_id(Path(entry.path))
                    if ident in ancestors:
                        skipped.append([relative, "symlink loop"])
                    else:
                        stack.append((Path(entry.path), ancestors | {ident}))
                elif entry.is_file():
                    st = entry.stat()
                    found.append([relative, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
                else:
                    skipped.append([relative, "unreadable"])  # a broken link, a socket, ...
            except OSError as e:
                skipped.append([relative, "symlink loop" if e.errno == errno.ELOOP else "unreadable"])
    return sorted(found), sorted(skipped)


def _dir_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _cache_key(description: dict) -> str:
    text = json.dumps({**description, "preprocess_version": PREPROCESS_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _load_folder(root: Path, relative_paths: list[str], image_size: int,
                 skipped: list[list[str]]) -> tuple[torch.Tensor, list[list[str]]]:
    """Decode and preprocess the listed files; returns the images and every skipped entry with its reason
    (those of the listing, ``skipped``, included)."""
    images, skipped = [], list(skipped)
    for relative in relative_paths:
        path = root / relative
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append([relative, "not an image"])
            continue
        try:
            images.append(preprocess(decode_file(path), image_size))
        except Skip as e:
            skipped.append([relative, e.reason])
    if not images:
        raise ValueError(f"No usable images in {root} ({_skip_summary(skipped) or 'none found'}): add PNG, JPEG, "
                         "WebP or BMP files to it or point to another folder.")
    return torch.stack(images), sorted(skipped)


def _skip_summary(skipped: list[list[str]]) -> str:
    """'2 unreadable (a.png, b.png), 1 not an image (notes.txt)': each reason with up to three examples."""
    parts = []
    for reason in SKIP_REASONS:
        names = [Path(p).name for p, r in skipped if r == reason]
        if names:
            more = ", …" if len(names) > 3 else ""
            parts.append(f"{len(names)} {reason} ({', '.join(names[:3])}{more})")
    return ", ".join(parts)


def _warn_skipped(skipped: list[list[str]], total: int, root: str) -> None:
    if skipped:
        warnings.warn(f"Skipped {len(skipped)} of {total} entries in {root}: {_skip_summary(skipped)}.", stacklevel=4)


def _load_array(path: Path, image_size: int) -> torch.Tensor:
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"Cannot read {path} as a NumPy .npz/.npy file ({e}); give an array of shape (N, H, W, 3) uint8.") from e
    if isinstance(loaded, np.lib.npyio.NpzFile):
        try:
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
        except Exception as e:  # an object array (pickled Python objects), a damaged member
            raise ValueError(f"Cannot read the arrays in {path} ({e}); give an array of shape (N, H, W, 3) uint8.") from e
        candidates = arrays if len(arrays) == 1 else {k: a for k, a in arrays.items() if a.ndim == 4}
        if len(candidates) != 1:
            shapes = ", ".join(f"{k} {a.shape}" for k, a in arrays.items())
            raise ValueError(f"{path} holds arrays {shapes or 'none'}; expected exactly one of shape (N, H, W, 3) uint8.")
        array = next(iter(candidates.values()))
    else:
        array = loaded
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8 or array.shape[0] == 0:
        raise ValueError(
            f"{path} holds an array of shape {array.shape} and dtype {array.dtype}; expected (N, H, W, 3) uint8 "
            "with N > 0 (channels last, values 0..255)."
        )
    chunks = [
        preprocess_batch(torch.from_numpy(array[i : i + 1024]).permute(0, 3, 1, 2), image_size)
        for i in range(0, len(array), 1024)
    ]
    return torch.cat(chunks)


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
    :func:`default_cache_dir`. Raises ``FileNotFoundError`` for a missing source and
    ``ValueError`` for an empty or malformed one, each naming the path.
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
            files, unlisted = _folder_files(path)
            if not files and not unlisted:
                raise ValueError(f"Data folder {path} is empty: add PNG, JPEG, WebP or BMP files to it.")
            description = {"kind": "folder", "root": str(path.resolve()), "files": files, "unlisted": unlisted}
        elif path.suffix.lower() in (".npz", ".npy"):
            description = {"kind": "array", "file": _fingerprint(path.resolve())}
        else:
            raise ValueError(f"Data source {path} is neither a folder nor an .npz/.npy file: point to one of those.")
        name = str(path)
    description["image_size"] = image_size

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _cache_key(description)
    with locked(cache / f"{key}.lock", f"the data cache entry of {name}"):  # one process builds it, others reuse it
        cached = _read_cache(cache, key, name)
        if cached is not None:
            return cached
        return _build_cache(cache, key, name, description, image_size, seed, None if n_builtin else path)


def _read_cache(cache: Path, key: str, name: str) -> ImageSet | None:
    """A complete cache entry, or None where it is missing or unreadable (it is then built again)."""
    images_file, meta_file, factors_file = cache / f"{key}.npy", cache / f"{key}.json", cache / f"{key}-factors.npz"
    try:
        meta = json.loads(meta_file.read_text())
        images = torch.from_numpy(np.load(images_file, allow_pickle=False))
        factors = {}
        if factors_file.exists():
            with np.load(factors_file, allow_pickle=False) as z:
                factors = {k: z[k] for k in z.files}
        skipped, entries = meta["skipped_entries"], meta["entries"]
        if len(images) != meta["count"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):  # also an entry written by an older version
        return None
    _warn_skipped(skipped, entries, name)  # a cached load says what it left out, too
    return ImageSet(images, name, key, len(skipped), factors)


def _build_cache(cache: Path, key: str, name: str, description: dict, image_size: int, seed: int,
                 path: Path | None) -> ImageSet:
    skipped: list[list[str]] = []
    factors: dict[str, np.ndarray] = {}
    if description["kind"] == "builtin":
        array, factors = faces.make_faces(description["n"], seed=seed, size=image_size)
        images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    elif description["kind"] == "folder":
        images, skipped = _load_folder(path, [f[0] for f in description["files"]], image_size, description["unlisted"])
    else:
        images = _load_array(path, image_size)
    entries = len(images) + len(skipped)
    _warn_skipped(skipped, entries, name)

    cache.mkdir(parents=True, exist_ok=True)
    write_atomic(cache / f"{key}.npy", _npy_bytes(np.save, images.numpy()))
    if factors:
        write_atomic(cache / f"{key}-factors.npz", _npy_bytes(np.savez, **factors))
    meta = {"source": name, "count": len(images), "entries": entries, "skipped_entries": skipped}
    write_atomic(cache / f"{key}.json", json.dumps(meta).encode())  # written last: it marks a complete entry
    return ImageSet(images, name, key, len(skipped), factors)


def _npy_bytes(save, *args, **kwargs) -> bytes:
    """What ``np.save`` or ``np.savez`` would write, as bytes."""
    buffer = io.BytesIO()
    save(buffer, *args, **kwargs)
    return buffer.getvalue()


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
