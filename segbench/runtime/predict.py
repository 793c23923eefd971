"""``segbench-predict``'s task: trained runs applied to new scans, label maps written in each scan's own geometry.

A scan goes through the preprocessing of the run that predicts it, read from the run's own config
(``<run>/.hydra/config.yaml``, checked against the trust allowlist as ``segbench-eval`` does):
canonical orientation, the source's intensity normalisation, resampling to ``data.target_spacing``
(3D: to ``data.target_shape``), the HU window, and for 2D models the in-plane resize to ``img_size``.
The network's class probabilities on that grid (2D: slice by slice; 3D: sliding windows) are
averaged over test-time flips (``tta``) and over the runs of an ensemble, interpolated back to the
scan's own voxel grid class by class, and only then turned into labels (argmax), so the label map
has the input's shape, affine and orientation and opens over it in any viewer.

Each case stands alone: a scan that cannot be predicted (4D, unreadable, NaN intensities) is one line
naming it, and the other cases are still predicted; the command then exits 1.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import CheckpointError, ConfigError, DataError, SegbenchError
from ..files import natural_key

log = logging.getLogger("segbench")

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: which weights of a run directory predict: the ones its test split scored, or the best / last epoch
CHECKPOINT_CHOICES = ("tested", "best", "last")


# -- the runs --------------------------------------------------------------------------------------------------
@dataclass
class Member:
    """One trained run of a prediction (an ensemble has several): its config, data module and network."""

    run_dir: Path
    checkpoint: Path
    cfg: DictConfig
    datamodule: Any
    module: Any

    @property
    def name(self) -> str:
        return str(self.run_dir)


def run_checkpoint(run_dir: Path, choice: str = "tested") -> Path:
    """The checkpoint of ``run_dir`` that predicts: ``tested`` (what its test split scored, from
    ``results/summary.json``; else ``last``), ``best`` (``checkpoints/best-*.ckpt``) or ``last``."""
    if choice not in CHECKPOINT_CHOICES:
        raise ConfigError(f"checkpoint={choice!r} is unknown; choose one of {', '.join(CHECKPOINT_CHOICES)}")
    folder = run_dir / "checkpoints"
    best = sorted(folder.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    last = folder / "last.ckpt"
    if choice == "tested":
        import json

        try:
            tested = (json.loads((run_dir / "results" / "summary.json").read_text()).get("run") or {}).get("checkpoint")
        except (OSError, ValueError):
            tested = None
        if tested and (folder / Path(tested).name).is_file():  # the run directory may have moved: by name
            return folder / Path(tested).name
        choice = "last"
    if choice == "best":
        if not best:
            raise CheckpointError(f"{run_dir} has no best-*.ckpt (a run without a validation split); "
                                  "pass checkpoint=last")
        return best[-1]
    if not last.is_file():
        raise CheckpointError(f"{run_dir} has no checkpoints/last.ckpt; pass a run directory of a run that "
                              "trained, or the checkpoint file itself")
    return last


def locate_run(path: str | Path, choice: str = "tested") -> tuple[Path, Path]:
    """``(run directory, checkpoint)`` of a run directory or of a checkpoint file inside one."""
    path = Path(path)
    if path.is_file():
        run_dir = path.resolve().parent.parent
        if not (run_dir / ".hydra" / "config.yaml").is_file():
            raise ConfigError(f"{path} is not in a run directory (no {run_dir / '.hydra' / 'config.yaml'}); "
                              "pass the run directory or <run>/checkpoints/<name>.ckpt")
        return run_dir, path
    if not path.is_dir():
        raise DataError(f"run {path} not found; pass a training run directory (outputs/train/<date>) or a "
                        "checkpoint in one")
    if not (path / ".hydra" / "config.yaml").is_file():
        raise ConfigError(f"{path} is not a training run directory (no .hydra/config.yaml); pass the directory "
                          "segbench-train wrote")
    return path, run_checkpoint(path, choice)


def default_paths(output_dir: str | Path) -> DictConfig:
    """``configs/paths/default.yaml`` resolved outside Hydra: data under ``SEGBENCH_DATA_DIR`` or ``./data``."""
    import os

    from ..config import CONFIG_DIR

    paths = OmegaConf.load(Path(CONFIG_DIR) / "paths" / "default.yaml")
    paths.output_dir = str(output_dir)
    paths.root_dir = os.getcwd()
    return paths


def recorded_paths(run_dir: Path, output_dir: str | Path) -> DictConfig:
    """The ``paths`` a finished run resolved (``results/summary.json``) when its data folder exists on this machine
    (a sweep trained with ``paths.data_dir=...``), else :func:`default_paths`."""
    import json

    try:
        recorded = (json.loads((run_dir / "results" / "summary.json").read_text()).get("config") or {}).get("paths")
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, dict) and recorded.get("data_dir") and Path(recorded["data_dir"]).is_dir():
        return OmegaConf.create({**{k: str(v) for k, v in recorded.items()}, "output_dir": str(output_dir)})
    return default_paths(output_dir)


def run_config(run_dir: Path, paths: DictConfig, trusted_modules=()) -> DictConfig:
    """The run's config, with this machine's ``paths``, checked against the trust allowlist before anything
    is built; no preprocessing cache (a prediction writes nothing but its outputs)."""
    from hydra.core.utils import setup_globals

    from .. import config  # noqa: F401 - registers segbench's resolvers (a smoke run's model.width)
    from .trust import checked_config, load_run_config

    setup_globals()  # Hydra's resolvers (${now:...} in run_name) outside a Hydra app (segbench-table --cv-ensemble)

    path = run_dir / ".hydra" / "config.yaml"
    cfg = load_run_config(path)
    if not isinstance(cfg, DictConfig) or "data" not in cfg or "model" not in cfg:
        raise ConfigError(f"training config {path} has no data / model config; pass a segbench-train run directory")
    with open_dict(cfg):
        cfg.paths = paths
        cfg.data.cache_dir = None
    return checked_config(cfg, trusted_modules, source=f"training config {path}")


def load_member(path: str | Path, paths: DictConfig, device, choice: str = "tested", trusted_modules=()) -> Member:
    """A run ready to predict: config checked, network built, checkpoint weights (``weights_only``) loaded."""
    from .build import build
    from .checkpoint import check_matches, load_checkpoint

    run_dir, ckpt = locate_run(path, choice)
    cfg = run_config(run_dir, paths, trusted_modules)
    datamodule, module = build(cfg)
    checkpoint = load_checkpoint(ckpt)
    check_matches(checkpoint, module, ckpt)
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    module.to(device).eval()
    return Member(run_dir, ckpt, cfg, datamodule, module)


def check_compatible(members: list[Member]) -> None:
    """Refuse, in one line, an ensemble whose runs name other classes or preprocess differently."""
    first = members[0]
    names, prep = list(first.datamodule.class_names), first.datamodule.preprocessing()
    for other in members[1:]:
        if list(other.datamodule.class_names) != names:
            raise ConfigError(f"runs {first.name} and {other.name} have different classes "
                              f"({names} vs {list(other.datamodule.class_names)}); an ensemble averages the "
                              "probabilities of the same classes")
        other_prep = other.datamodule.preprocessing()
        if other_prep != prep:
            keys = sorted(k for k in set(prep) | set(other_prep) if prep.get(k) != other_prep.get(k))
            raise ConfigError(f"runs {first.name} and {other.name} preprocess differently ("
                              + ", ".join(f"{k}: {prep.get(k)} vs {other_prep.get(k)}" for k in keys)
                              + "); an ensemble averages probabilities on one grid")


# -- the scans -------------------------------------------------------------------------------------------------
@dataclass
class Scan:
    """One input case: a NIfTI file or a DICOM series folder."""

    case_id: str
    path: Path
    kind: str  # nifti | dicom


def case_id_of(path: Path) -> str:
    """The case id of a NIfTI file name: without ``.nii(.gz)`` and nnU-Net's ``_0000`` channel suffix."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-5] if len(name) > 5 and name.endswith("_0000") else name


def is_dicom(path: Path) -> bool:
    """A DICOM file: ``.dcm``, or the ``DICM`` magic at byte 128."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and is_dicom(p)), key=lambda p: natural_key(p.name))


def find_scans(path: str | Path) -> list[Scan]:
    """The cases of ``input``: a NIfTI file; a DICOM series folder; a folder of NIfTI files and / or DICOM series
    sub-folders. One line when there is nothing to predict."""
    path = Path(path)
    if path.is_file():
        if not path.name.endswith(NIFTI_SUFFIXES):
            if is_dicom(path):
                return [Scan(path.parent.name, path.parent, "dicom")]
            raise DataError(f"input {path} is not a NIfTI file (.nii / .nii.gz); pass a NIfTI file, a folder of "
                            "them, or a DICOM series folder")
        return [Scan(case_id_of(path), path, "nifti")]
    if not path.is_dir():
        raise DataError(f"input {path} not found; pass a NIfTI file, a folder of them, or a DICOM series folder")
    if dicom_files(path):
        return [Scan(path.name, path, "dicom")]
    scans = [Scan(case_id_of(p), p, "nifti") for p in sorted(path.iterdir(), key=lambda p: natural_key(p.name))
             if p.is_file() and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".")]
    scans += [Scan(p.name, p, "dicom") for p in sorted(path.iterdir(), key=lambda p: natural_key(p.name))
              if p.is_dir() and not p.name.startswith(".") and dicom_files(p)]
    if not scans:
        raise DataError(f"input folder {path} holds no images (no .nii / .nii.gz file, no DICOM series); "
                        "pass the folder of the scans")
    ids = [s.case_id for s in scans]
    twice = sorted({c for c in ids if ids.count(c) > 1})
    if twice:
        raise DataError(f"input folder {path} holds case(s) {twice} twice (e.g. as .nii and .nii.gz); keep one")
    return scans


def read_scan(scan: Scan):
    """A scan as a :class:`~segbench.data.volume.Volume` (HU, no label) in its file's own orientation."""
    from ..data.volume import CaseRef, Volume, load_nifti_case

    if scan.kind == "nifti":
        return load_nifti_case(CaseRef(scan.case_id, scan.path), num_classes=256)
    from ..data.datasets.chaos import read_dicom_series

    series = read_dicom_series(dicom_files(scan.path), rescale=True)
    return Volume(scan.case_id, series.image.astype(np.float32), None, series.spacing, series.affine)


# -- one case --------------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """One case's result on the scan's own grid, in the canonical orientation: the label map ``(Z, Y, X)`` and
    (when asked for) the class probabilities, float16 ``(C, Z, Y, X)``."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


def ensemble_probabilities(members: list[Member], image, tta: bool = False):
    """The mean of the members' class probabilities ``[C, Z, Y, X]`` on the model's grid for one model input."""
    from ..models.inference import case_probabilities

    total = None
    for member in members:
        probs = case_probabilities(member.module, image, tta=tta)
        total = probs if total is None else total.add_(probs)
    return total / len(members)


def predict_volume(members: list[Member], vol, tta: bool = False, probabilities: bool = False) -> Prediction:
    """The ensemble's prediction for one scan ``vol`` (HU, file orientation), on the scan's own grid.

    Preprocessed once (the members preprocess alike: :func:`check_compatible`); each member's class
    probabilities on the preprocessed grid are averaged (mean of softmax), then brought back to the
    scan's canonical grid before the argmax (:func:`~segbench.models.inference.labels_at`).
    """
    import torch

    from ..data.volume import to_canonical
    from ..models.inference import labels_at, probabilities_at

    dm = members[0].datamodule
    target_shape = to_canonical(vol).shape
    image = dm.model_input(dm.preprocess_scan(vol))
    planar = image.dim() == 4
    with torch.inference_mode():
        total = ensemble_probabilities(members, image, tta)
        labels = labels_at(total, target_shape, planar=planar).cpu().numpy()
        probs_out = probabilities_at(total, target_shape, planar=planar) if probabilities else None
    return Prediction(labels, probs_out)


def score_test_split(members: list[Member], output: Path, tta: bool = False) -> dict[str, Any]:
    """The ensemble of ``members`` (e.g. a sweep's folds) on their test split: each case predicted on its own grid,
    written to ``<output>/predictions/`` and scored against its label file into ``<output>/results/``, the
    results contract of a run (``per_case.csv``, ``summary.json``). The members must share the test split."""
    import json

    import torch

    from ..data.volume import write_prediction
    from ..metrics.results import CaseEvaluator
    from ..models.inference import labels_at

    check_compatible(members)
    dm = members[0].datamodule
    tests = []
    for member in members:
        try:
            tests.append(json.loads((member.run_dir / "splits.json").read_text())["test"])
        except (OSError, ValueError, KeyError):
            raise DataError(f"{member.run_dir} has no readable splits.json; pass runs that segbench-train "
                            "finished") from None
    if any(t != tests[0] for t in tests[1:]):
        raise DataError("the runs were tested on different test splits; an ensemble scores one test split")
    dm.prepare_data()
    dm._resolve_splits()
    metrics = OmegaConf.to_container(members[0].cfg.metrics, resolve=True)
    evaluator = CaseEvaluator(list(dm.class_names), metrics.get("convention", "default"),
                              metrics.get("nsd_tolerance_mm", 2.0))
    from tqdm.auto import tqdm

    for case_id in tqdm(tests[0], desc="ensemble: test cases", unit="case", leave=False, disable=None):
        vol = dm._load(case_id)  # canonical, with its label on the scan's own grid
        image = dm.model_input(dm._preprocess(vol))
        with torch.inference_mode():
            labels = labels_at(ensemble_probabilities(members, image, tta), vol.shape,
                               planar=image.dim() == 4).cpu().numpy()
        evaluator.add_case(case_id, labels, vol.label, vol.spacing, spacing_known=vol.spacing_known)
        write_prediction(output / "predictions", case_id, labels, vol.affine)
    config = OmegaConf.to_container(members[0].cfg, resolve=True)
    extra = {"run": {"output_dir": str(output), "ensemble": [str(m.checkpoint) for m in members],
                     "tested": f"ensemble of {len(members)} runs"}, "splits": {"test": tests[0]}}
    return evaluator.write(output / "results", config=config, extra=extra)


def write_case(output: Path, case_id: str, prediction: Prediction, affine: np.ndarray,
               class_names: list[str]) -> Path:
    """``<output>/<case>.nii.gz`` (and ``<case>.npz`` of float16 probabilities), in the scan's own orientation."""
    from ..data.volume import from_canonical, write_prediction
    from ..files import replace_atomically

    path = write_prediction(output, case_id, prediction.labels, affine)
    if prediction.probabilities is not None:
        # the same voxel order as the label map's NIfTI array: (C, X, Y, Z)
        probs = np.stack([from_canonical(p, affine).transpose(2, 1, 0) for p in prediction.probabilities])
        replace_atomically(output / f"{case_id}.npz", lambda tmp: _save_npz(tmp, probs, class_names))
    return path


def _save_npz(path: Path, probabilities: np.ndarray, class_names: list[str]) -> None:
    with open(path, "wb") as fh:  # a file object: np.savez would append .npz to a temporary name
        np.savez_compressed(fh, probabilities=probabilities.astype(np.float16),
                            class_names=np.array(class_names, dtype=str))


# -- the command -----------------------------------------------------------------------------------------------
def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return [str(v) for v in value]
    return [str(value)]


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a torch device; pass auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but torch sees no CUDA device; pass device=cpu or device=auto")
    return device


def predict_task(cfg: DictConfig) -> int:
    """``segbench-predict``: every scan of ``cfg.input`` predicted by the run(s) ``cfg.run`` into ``cfg.output``.

    Returns the number of cases that could not be predicted (each said in one line)."""
    from .console import report

    runs = as_list(cfg.run)
    if not runs:
        raise ConfigError("no run given: pass run=<training run directory> (or run=[runA,runB] for an ensemble)")
    if not isinstance(cfg.tta, bool) or not isinstance(cfg.save_probabilities, bool):
        raise ConfigError(f"tta and save_probabilities are true or false, got tta={cfg.tta!r} "
                          f"save_probabilities={cfg.save_probabilities!r}")
    from ..postprocess import apply_postprocess, check_postprocess

    postprocess = check_postprocess(cfg.get("postprocess", "none"), key="postprocess")
    device = resolve_device(str(cfg.device))
    scans = find_scans(cfg.input)
    members = [load_member(r, cfg.paths, device, str(cfg.checkpoint), cfg.get("trusted_modules") or ())
               for r in runs]
    check_compatible(members)
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    names = list(members[0].datamodule.class_names)
    what = f"an ensemble of {len(members)} runs" if len(members) > 1 else str(members[0].checkpoint)
    print(f"segbench-predict: {len(scans)} case(s) from {cfg.input} with {what}"
          f"{', test-time flips' if cfg.tta else ''}"
          f"{', largest connected component per organ' if postprocess == 'largest_component' else ''} -> {output}")
    start, failed = time.time(), []
    for i, scan in enumerate(scans, 1):
        t0 = time.time()
        try:
            vol = read_scan(scan)
            prediction = predict_volume(members, vol, tta=cfg.tta, probabilities=cfg.save_probabilities)
            prediction.labels = apply_postprocess(prediction.labels, postprocess)  # the probabilities stay raw
            path = write_case(output, scan.case_id, prediction, vol.affine, names)
        except SegbenchError as exc:
            failed.append(scan.case_id)
            print(f"segbench-predict: error: case {scan.case_id} ({scan.path}): {exc}")
            continue
        shape = "x".join(str(n) for n in vol.image.shape[::-1])
        print(f"[{i}/{len(scans)}] {scan.case_id}: {shape} -> {path} ({time.time() - t0:.1f} s)")
    elapsed = time.time() - start
    done = len(scans) - len(failed)
    report(f"segbench-predict: {done} of {len(scans)} case(s) predicted in {elapsed:.1f} s "
           f"({done / max(elapsed, 1e-9):.2f} cases/s) into {output}"
           + (f"; not predicted: {', '.join(failed)}" if failed else ""))
    return len(failed)
