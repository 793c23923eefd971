"""Test predictions are written as NIfTI by default, on the input's grid with the input's affine.

``predictions/<case>.nii.gz`` must open over its image in 3D Slicer / ITK-SNAP: same shape, same
affine (here an oblique one with a translation, so that a writer that drops the rotation, swaps
axes or writes an identity fails), and it must be the label map that was scored.
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import blob_case, cli


def oblique_affine(spacing=(0.8, 0.7, 4.0), degrees: float = 30.0, origin=(-120.5, 33.25, 410.0)) -> np.ndarray:
    """Voxel (i, j, k) -> mm: x / y spacings rotated by ``degrees`` about z, then shifted to ``origin``."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.fixture(scope="module")
def oblique_dataset(tmp_path_factory) -> Path:
    """3 blob cases (3 classes) of shape (X, Y, Z) = (64, 56, 12) with an oblique affine."""
    root = tmp_path_factory.mktemp("oblique")
    (root / "img").mkdir()
    (root / "label").mkdir()
    for i in range(1, 4):
        image, label = blob_case(i, shape=(12, 56, 64), num_classes=3)  # (Z, Y, X)
        affine = oblique_affine(origin=(-120.5 + i, 33.25, 410.0))
        nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), affine), root / "img" / f"img{i:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), affine), root / "label" / f"label{i:04d}.nii.gz")
    return root


def train(run_dir: Path, data_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = cli("segbench.train", "debug=smoke", "num_threads=1", "data=nifti_folder", f"data.root={data_root}",
               "data.num_classes=3", "data.class_names=[background,a,b]", f"paths.data_dir={run_dir.parent}/data",
               f"hydra.run.dir={run_dir}", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def dice(pred: np.ndarray, gt: np.ndarray, label: int) -> float:
    p, g = pred == label, gt == label
    return 2 * np.logical_and(p, g).sum() / (p.sum() + g.sum())


def test_predictions_are_written_by_default_with_the_inputs_affine(oblique_dataset, tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, oblique_dataset)
    # debug=smoke: cases 0001 / 0002 / 0003 train / val / test
    assert sorted(p.name for p in (run_dir / "predictions").iterdir()) == ["0003.nii.gz"]
    written = nib.load(run_dir / "predictions" / "0003.nii.gz")
    image = nib.load(oblique_dataset / "img" / "img0003.nii.gz")
    assert written.shape == image.shape == (64, 56, 12)
    np.testing.assert_allclose(written.affine, image.affine, atol=1e-5)
    np.testing.assert_allclose(written.get_qform(), image.affine, atol=1e-5)
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 1
    pred = np.asarray(written.dataobj)
    assert pred.dtype == np.uint8 and set(np.unique(pred)) <= {0, 1, 2}
    # the file holds the label map that was scored: its DSC against the label file is per_case.csv's
    gt = np.asarray(nib.load(oblique_dataset / "label" / "label0003.nii.gz").dataobj)
    with open(run_dir / "results" / "per_case.csv") as fh:
        rows = {int(r["label"]): r for r in csv.DictReader(fh) if r["convention"] == "default"}
    for label in (1, 2):
        assert int(rows[label]["pred_voxels"]) == int((pred == label).sum())
        # every case holds both organs, so the DSC is defined (0 when the organ is not predicted)
        assert float(rows[label]["dsc"]) == pytest.approx(dice(pred, gt, label), abs=1e-6)
    # segbench-score of the written prediction against the label file (oblique, anisotropic) gives the
    # run's per_case.csv, row for row
    scored = cli("segbench.score", str(run_dir / "predictions"), str(oblique_dataset), "--run", str(run_dir),
                 "--output", str(tmp_path / "scored"))
    assert scored.returncode == 0, scored.stderr
    assert (tmp_path / "scored" / "results" / "per_case.csv").read_text() == (
        run_dir / "results" / "per_case.csv").read_text()


@pytest.mark.slow  # a second training run
def test_save_predictions_false_writes_none(oblique_dataset, tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, oblique_dataset, "trainer.max_epochs=0", "test.save_predictions=false")
    assert (run_dir / "results" / "per_case.csv").is_file()
    assert not (run_dir / "predictions").exists()
