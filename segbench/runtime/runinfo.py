"""What a run records next to its results: config, git revision, versions, device, wall time."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("segbench", "torch", "pytorch-lightning", "hydra-core", "omegaconf", "monai", "nibabel", "numpy", "scipy")


def git_revision(root: Path | None) -> str | None:
    """The checkout's commit (``-dirty`` with uncommitted changes); None outside a checkout (a wheel)."""
    if root is None:
        return None
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def assigned_devices() -> dict[str, Any]:
    """The devices this process was given: ``CUDA_VISIBLE_DEVICES`` as it saw it (None: unset, every GPU of
    the machine; ``""``: none) and, under ``hydra/launcher=gpus``, the launcher's slot
    (:mod:`segbench.runtime.gpus`)."""
    from .gpus import SLOT_ENV

    info: dict[str, Any] = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if os.environ.get(SLOT_ENV, "").isdigit():
        info["slot"] = int(os.environ[SLOT_ENV])
    return info


def device_description() -> dict[str, Any]:
    info: dict[str, Any] = {"host": platform.node(), "cpu_threads": torch.get_num_threads(), **assigned_devices()}
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info
