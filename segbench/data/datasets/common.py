"""Helpers shared by the dataset sources: label checks, finding a layout's root."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ...errors import DataError


def check_label_values(label: np.ndarray, allowed: Iterable[int], path: Path | str, what: str) -> None:
    """Raise a one-line :class:`DataError` if ``label`` holds a value outside ``allowed``."""
    allowed = np.asarray(sorted(set(int(a) for a in allowed)))
    ids = np.unique(label)
    bad = ids[~np.isin(ids, allowed)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8].tolist()) + (", ..." if bad.size > 8 else "")
        raise DataError(f"{path} holds label value(s) {shown} outside {what}; the file is not a label map of "
                        "this dataset (wrong file, or a different label convention)")


def integral_label(array: np.ndarray, path: Path | str) -> np.ndarray:
    """A label array stored as float (TransUNet's files) as int64, refusing non-integer values."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise DataError(f"{path} holds non-integer label values; expected a label map")
    return array.astype(np.int64)


def first_dir(root: Path, candidates: Iterable[str], marker: str) -> Path | None:
    """The first ``root/<candidate>`` that contains ``marker`` (a file or folder name)."""
    for candidate in candidates:
        base = root / candidate if candidate else root
        if (base / marker).exists():
            return base
    return None


def require_root(root: Path, what: str, layout: str) -> None:
    if not root.is_dir():
        raise DataError(f"{what} root {root} not found; set data.root=/path/to/{what} (expected layout: {layout})")


def listed_path(base: Path, entry: str, list_file: Path, suffix: str = "") -> Path:
    """``base / (entry + suffix)`` for an entry of a dataset's list file; refused when it would leave ``base``.

    List files (TransUNet's ``lists_Synapse/*.txt``) are data, not trusted paths: an absolute entry or
    one whose ``..`` climbs out of the folder could make segbench read (and cache, and report) any file.
    The check is on the text (``os.path.normpath``), so a dataset folder that holds symbolic links
    still works.
    """
    import os

    normal = os.path.normpath(entry + suffix)
    if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep) or "\0" in entry:
        raise DataError(f"{list_file} lists {entry!r}, which points outside {base}; list entries must name files "
                        "inside the dataset folder (e.g. case0005_slice012)")
    return Path(base) / normal
