"""On-disk cache of preprocessed cases, so later runs and sweeps skip reading and resampling.

One entry per (case, preprocessing) lives in ``<cache_dir>/<kind>/<key>/``: one ``.npy`` file
per array, ``meta.json``, and the completion marker ``COMPLETE`` (JSON: the size of every
file of the entry), written last. The key is a hash of

* the source's identity (its class and options: root, layout, label map, ...),
* the case id and every input file of the case (path, size, modification time),
* the preprocessing parameters (HU window, model size, target spacing, ...),
* :data:`CACHE_VERSION` (bumped when the preprocessing code changes its output),

so editing a file, changing a window or upgrading segbench starts a new entry instead of
reading a stale one. An entry is written into ``.tmp-<key>-<pid>-<rand>/`` and renamed into
place in one step, so readers never see a partial entry; an entry without its marker or
whose files do not match the marker's sizes (a copy interrupted, a disk error) is reported,
deleted and rebuilt, never read. Leftover temporary folders of dead processes are removed.
Two processes building the same entry at once is harmless: the first rename wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .volume import CaseRef

log = logging.getLogger("segbench.data")

#: bump when preprocessing changes what it writes for the same inputs and parameters
CACHE_VERSION = 4  # 2: cases in the canonical orientation (segbench.data.volume.to_canonical)
                   # 3: whether the voxel spacing is known (Volume.spacing_known) is part of the meta
                   # 4: the scan's own grid (shape, spacing, affine) is part of the meta (Volume.original)
MARKER = "COMPLETE"
STALE_TMP_S = 24 * 3600


def source_identity(source) -> dict[str, Any]:
    """What makes a source read the same files differently: its class and public options."""
    if hasattr(source, "cache_identity"):
        return dict(source.cache_identity())
    options = {k: str(v) for k, v in sorted(vars(source).items()) if not k.startswith("_") and not callable(v)}
    return {"class": f"{type(source).__module__}.{type(source).__qualname__}", **options}


def case_files(source, ref: CaseRef) -> list[Path]:
    """Every input file of a case (a source may list them with ``case_files(ref)``; folders are expanded)."""
    paths = source.case_files(ref) if hasattr(source, "case_files") else [ref.image, ref.label]
    out: list[Path] = []
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        out.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return out


def fingerprint(paths: list[Path]) -> list[list[Any]]:
    rows = []
    for path in paths:
        try:
            st = path.stat()
            rows.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
        except OSError:
            rows.append([str(path), "missing"])
    return rows


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class PreprocessCache:
    """Preprocessed arrays per case under ``root``, keyed by inputs and parameters.

    Args:
        root: the cache folder (``data.cache_dir``).
        source: the dataset source (its identity and case files enter the key).
    """

    def __init__(self, root: str | Path, source):
        self.root = Path(root)
        self.source = source
        self.identity = source_identity(source)
        self.hits = 0
        self.builds = 0
        self._cleaned: set[Path] = set()

    # -- keys ------------------------------------------------------------------------------------------------
    def key(self, ref: CaseRef, kind: str, params: dict[str, Any]) -> str:
        blob = json.dumps({"version": CACHE_VERSION, "source": self.identity, "case": ref.case_id,
                           "files": fingerprint(case_files(self.source, ref)), "kind": kind, "params": params},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    # -- read / write ----------------------------------------------------------------------------------------
    def read(self, path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The entry's arrays and meta, or ``None`` (absent, or incomplete/corrupt: then it is deleted)."""
        if not path.exists():
            return None
        try:
            marker = json.loads((path / MARKER).read_text())
            for name, size in marker["files"].items():
                actual = (path / name).stat().st_size
                if actual != size:
                    raise ValueError(f"{name} has {actual} bytes, the marker says {size}")
            meta = json.loads((path / "meta.json").read_text())
            arrays = {name[:-4]: np.load(path / name, allow_pickle=False)
                      for name in marker["files"] if name.endswith(".npy")}
        except Exception as exc:  # noqa: BLE001 - missing marker, truncated file, unreadable array: never trust it
            log.warning("cache entry %s is incomplete or corrupt (%s: %s); rebuilding it",
                        path, type(exc).__name__, exc)
            shutil.rmtree(path, ignore_errors=True)
            return None
        return arrays, meta

    def write(self, path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Write an entry atomically: a temporary folder, the marker last, one rename."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._clean_stale(path.parent)
        tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            sizes = {}
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
                sizes[f"{name}.npy"] = (tmp / f"{name}.npy").stat().st_size
            (tmp / "meta.json").write_text(json.dumps(meta, default=_jsonable))
            sizes["meta.json"] = (tmp / "meta.json").stat().st_size
            with open(tmp / MARKER, "w") as fh:
                json.dump({"files": sizes, "written": time.time()}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.rename(tmp, path)
            except OSError:
                # another process finished the same entry first; keep theirs if it is sound
                if self.read(path) is None:
                    os.rename(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def get_or_build(self, ref: CaseRef, kind: str, params: dict[str, Any],
                     build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]):
        """Cached ``(arrays, meta)`` for this case and parameters; ``build()`` only on a miss."""
        path = self.entry(kind, self.key(ref, kind, params))
        found = self.read(path)
        if found is not None:
            self.hits += 1
            return found
        arrays, meta = build()
        try:
            self.write(path, arrays, meta)
        except OSError as exc:  # a full or read-only disk: go on with the arrays in hand, uncached
            log.warning("cannot write cache entry %s (%s); going on without caching it", path, exc.strerror or exc)
            return arrays, meta
        self.builds += 1
        return arrays, meta

    def _clean_stale(self, folder: Path) -> None:
        if folder in self._cleaned:
            return
        self._cleaned.add(folder)
        for tmp in folder.glob(".tmp-*"):
            pid = -1
            try:
                pid = int(tmp.name.split("-")[-2])
                stale = not _pid_alive(pid) or time.time() - tmp.stat().st_mtime > STALE_TMP_S
            except (ValueError, IndexError, OSError):
                stale = True
            if stale and pid != os.getpid():
                shutil.rmtree(tmp, ignore_errors=True)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
