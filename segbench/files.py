"""Files: atomic writes, natural order, writability, and walking a tree for directories.

Every file a later run, a report or a resume trusts (results, ``run.json``, checkpoints, the phantom,
the preprocessed datasets, predictions) is written through :func:`replace_atomically`: into a
temporary file in the same folder, flushed to disk, then renamed over the target (``os.replace`` is
atomic on one file system). A crash or a full disk therefore leaves the previous file, or none, never
a half-written one. Temporary names start with :data:`TEMPORARY_PREFIX` and keep the target's
name at the end, so a writer that picks its format from the suffix (nibabel's ``.nii.gz``) writes
the right one and a clean-up can find leftovers of killed writers.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

#: how the temporary files of :func:`replace_atomically` start
TEMPORARY_PREFIX = ".tmp-"


def temporary_path(path: str | Path) -> Path:
    """A unique temporary name next to ``path`` that ends with ``path``'s own name (and suffixes)."""
    path = Path(path)
    return path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """``write(temporary)`` then fsync and rename over ``path``; on any error the temporary file is
    removed, ``path`` is left as it was, and the error propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        write(temporary)
        with open(temporary, "rb") as handle:  # the data is on disk before the name points at it
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`replace_atomically`."""
    replace_atomically(path, lambda temporary: temporary.write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`replace_atomically`."""
    replace_atomically(path, lambda temporary: temporary.write_bytes(data))


def natural_key(name: str | Path) -> list:
    """Sort key that orders ``img2`` before ``img10`` and job ``2`` before ``10`` (digit runs compared as
    numbers, the rest case-insensitively)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def writable(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be created and written (the OS error's text), or None when it can."""
    folder = Path(folder)
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def find_dirs(root: str | Path, is_match: Callable[[Path], bool]) -> list[Path]:
    """The directories at or below ``root`` for which ``is_match`` holds, in natural order (job 2 before
    job 10). Hidden folders (``.hydra``, ``.submitit``) are not entered, nor is a matching directory
    (a run directory holds no other run)."""
    root = Path(root)
    if is_match(root):
        return [root]
    found = []
    for directory, subdirs, _files in os.walk(root, followlinks=False):
        subdirs.sort(key=natural_key)
        here = Path(directory)
        if here != root and is_match(here):
            found.append(here)
            subdirs[:] = []
            continue
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    return found


def unique_paths(paths: Iterable[Path]) -> list[Path]:
    """``paths`` without repeats (compared resolved), first occurrence kept, order kept."""
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(Path(path).resolve(), Path(path))
    return list(unique.values())
