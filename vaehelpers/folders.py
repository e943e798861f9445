"""A folder of images: list it, decode what can be used, and count what cannot with its true reason.

An entry that cannot be used is skipped with one of :data:`~vaehelpers.decode.SKIP_REASONS`;
an image that needed converting is noted with one of :data:`~vaehelpers.decode.CONVERSIONS`.
Each load says both in one line each (:func:`warn_skipped`, :func:`warn_converted`).
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import torch

from .decode import (CONVERSIONS, FORMATS, IMAGE_EXTENSIONS, SKIP_REASONS, Converted, Skip, decode_file, preprocess,
                     user_stacklevel)


def folder_files(root: Path) -> tuple[list[list], list[list[str]]]:
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


def load_folder(root: Path, relative_paths: list[str], image_size: int,
                skipped: list[list[str]]) -> tuple[torch.Tensor, list[list[str]], list[list[str]]]:
    """Decode and preprocess the listed files. Returns the images, every skipped entry with its reason
    (those of the listing, ``skipped``, included) and every conversion as [relative path, note]."""
    images, skipped, notes = [], list(skipped), []
    for relative in relative_paths:
        path = root / relative
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append([relative, "not an image"])
            continue
        try:
            image, converted = decode_file(path)
            images.append(preprocess(image, image_size))
            notes += [[relative, note] for note in converted]
        except Skip as e:
            skipped.append([relative, e.reason])
    if not images:
        raise ValueError(f"No usable images in {root} ({_summary(skipped, SKIP_REASONS) or 'none found'}): add "
                         f"{FORMATS} files to it or point to another folder.")
    return torch.stack(images), sorted(skipped), notes


def _summary(entries: list[list[str]], kinds: tuple[str, ...]) -> str:
    """'2 unreadable (a.png, b.png), 1 not an image (notes.txt)': each kind with up to three examples."""
    parts = []
    for kind in kinds:
        names = [Path(p).name for p, k in entries if k == kind]
        if names:
            more = ", …" if len(names) > 3 else ""
            parts.append(f"{len(names)} {kind} ({', '.join(names[:3])}{more})")
    return ", ".join(parts)


def warn_skipped(skipped: list[list[str]], total: int, root: str) -> None:
    """'Skipped 5 of 6 entries in faces/: 2 unreadable (…), …', where anything was skipped."""
    if skipped:
        warnings.warn(f"Skipped {len(skipped)} of {total} entries in {root}: {_summary(skipped, SKIP_REASONS)}.",
                      stacklevel=user_stacklevel())


def warn_converted(notes: list[list[str]], total: int, root: str) -> None:
    """'Converted 3 of 30 images in faces/: 1 turned upright by their EXIF orientation (…), …', where any was."""
    if notes:
        count = len({p for p, _ in notes})
        warnings.warn(f"Converted {count} of {total} images in {root}: {_summary(notes, CONVERSIONS)}.",
                      Converted, stacklevel=user_stacklevel())
