"""One image in: decode an image file, or an array of images, to uint8 3×S×S, saying what was converted.

Every image is turned upright by its EXIF orientation (as cameras and phones record it),
taken by its first frame when animated (GIF, WebP, multi-page TIFF), converted to RGB
(alpha composited on white, grey expanded to three channels, 16-bit and floating-point
values scaled to 8 bits), centre-cropped to the largest square and resized with
antialiasing. Each of these conversions, where it changed an image, is returned as a note
(:data:`CONVERSIONS`), so that a load can say what it did. A file that cannot be used raises
:class:`Skip` with its reason (:data:`SKIP_REASONS`); an array that cannot be used, a
``ValueError`` naming the file and what to do.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import ExifTags, Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FORMATS = "PNG, JPEG, WebP, BMP, GIF or TIFF"
MAX_PIXELS = 50_000_000
"""Images of more pixels than this (50 megapixels) are skipped before they are decoded."""
MIN_SIDE = 8
"""Images narrower or lower than this, in pixels, are skipped rather than blown up."""

SKIP_REASONS = ("unreadable", "corrupt", "not an image", "too large", "too small", "symlink loop")
UPRIGHT, FIRST_FRAME, ALPHA, GREY, DEEP = (
    "turned upright by their EXIF orientation", "animated: first frame used", "alpha composited on white",
    "grey expanded to RGB", "16-bit or floating-point values scaled to 8 bits")
CONVERSIONS = (UPRIGHT, FIRST_FRAME, ALPHA, GREY, DEEP)
"""What a load says it did to some of its images, in this order."""


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` that names the first caller outside this package, so that a
    warning points at the user's line whichever path inside the package led to it."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("vaehelpers."):
        frame, level = frame.f_back, level + 1
    return level


class Converted(UserWarning):
    """The one line in which a load says what it converted in some of its images (see :data:`CONVERSIONS`)."""


class Skip(ValueError):
    """A file that is not used, with its reason: one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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


def _channel_notes(array: np.ndarray) -> list[str]:
    """GREY and ALPHA where they apply to channels-last images of 1 to 4 channels (alpha only where some pixel is
    not opaque)."""
    channels = array.shape[-1]
    notes = [GREY] if channels in (1, 2) else []
    if channels in (2, 4):
        alpha = array[..., -1]
        opaque = np.iinfo(array.dtype).max if array.dtype.kind == "u" else 1.0
        if (alpha < opaque).any():
            notes.append(ALPHA)
    return notes


def decode_file(path: Path) -> tuple[torch.Tensor, list[str]]:
    """Decode an image file with Pillow to C×H×W (uint8, or float in [0, 1] for 16-bit grey), with its notes.

    (torchvision's own decoders are deprecated since 0.29; Pillow, which it depends on, reads
    every format of :data:`IMAGE_EXTENSIONS`.) The size is read from the header first: images of
    more than :data:`MAX_PIXELS` pixels, or under :data:`MIN_SIDE` pixels on a side, are refused
    before anything is decoded. Raises :class:`Skip` with the reason.
    """
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit applies
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise Skip("too large", f"{width}×{height} is over {MAX_PIXELS / 1e6:g} megapixels")
                if min(width, height) < MIN_SIDE:
                    raise Skip("too small", f"{width}×{height} is under {MIN_SIDE} pixels on a side")
                if getattr(im, "n_frames", 1) > 1:
                    notes.append(FIRST_FRAME)  # an opened image stands on its first frame
                im.load()  # decodes the whole frame: a truncated file raises here
                if im.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
                    im = ImageOps.exif_transpose(im)  # rotated and/or mirrored, as the camera recorded
                    notes.append(UPRIGHT)
                if im.mode.startswith("I") or im.mode == "F":  # 16-bit (or 32-bit) grey
                    scale = 65535.0 if im.mode.startswith("I") else 1.0
                    array = (np.asarray(im, dtype=np.float32) / scale).clip(0, 1)
                    notes += [DEEP, GREY]
                else:
                    if im.mode not in ("L", "LA", "RGB", "RGBA"):  # palette, bilevel, CMYK, premultiplied, ...
                        grey = im.mode == "1"
                        im = im.convert(("LA" if grey else "RGBA") if im.has_transparency_data else ("L" if grey else "RGB"))
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
    array = array.reshape(array.shape[0], array.shape[1], -1)  # H×W×C, grey included
    if DEEP not in notes:
        notes += _channel_notes(array)
    return torch.from_numpy(array.copy()).permute(2, 0, 1), [n for n in CONVERSIONS if n in notes]


ARRAY_SHAPES = "(N, H, W, 3) — or (N, H, W, 4) with alpha, (N, H, W, 1) or (N, H, W) grey"


def decode_array(array: np.ndarray, path: Path, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """An array of images, channels last, to uint8 N×3×S×S, with the conversions it needed.

    Shapes: (N, H, W, C) with C = 3 (RGB), 4 (RGBA: alpha composited on white), 1 or 2 (grey, grey
    and alpha), or (N, H, W) grey. Values: uint8 0..255, uint16 0..65535, or floats in [0, 1].
    Anything else is a ``ValueError`` naming ``path``; a channels-first array says how to transpose it.
    """
    if array.ndim == 3:
        array = array[..., None]
    shape, dtype = array.shape, array.dtype
    if array.ndim == 4 and shape[1] in (1, 3, 4) and shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{path} holds an array of shape {shape}, channels first; this project reads channels "
                         f"last: save it as np.save('images.npy', array.transpose(0, 2, 3, 1)) and load that.")
    if array.ndim != 4 or not 1 <= shape[-1] <= 4 or shape[0] == 0:
        raise ValueError(f"{path} holds an array of shape {shape}; expected {ARRAY_SHAPES}, with N > 0.")
    if dtype.kind == "f":
        low, high = float(array.min()), float(array.max())
        if not (0 <= low and high <= 1):
            raise ValueError(f"{path} holds {dtype} values from {low:g} to {high:g}; floating-point images must lie "
                             "in [0, 1]: divide by 255 (or save them as uint8).")
    elif dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path} holds an array of dtype {dtype}; expected uint8 (0..255), uint16 (0..65535) or "
                         "floats in [0, 1], channels last.")
    notes = _channel_notes(array) + ([DEEP] if dtype != np.uint8 else [])
    chunks = []
    for i in range(0, len(array), 1024):
        chunk = array[i : i + 1024]
        chunk = np.asarray(chunk, dtype=np.float32) / 65535.0 if dtype == np.uint16 else np.ascontiguousarray(chunk)
        chunk = torch.from_numpy(chunk).permute(0, 3, 1, 2)
        chunks.append(preprocess_batch(chunk, image_size))
    return torch.cat(chunks), [n for n in CONVERSIONS if n in notes]
