"""A real CT, end to end: train on it, predict a new scan in its own geometry, score the prediction.

``tests/data/real_ct/`` holds TotalSegmentator's example abdominal CT (Apache-2.0; its source, licence and
label ids are in ``SOURCE.md`` there): 122 x 101 x 30 voxels of 3 mm, RAS-oriented, with TotalSegmentator's
117-class label map. Its raw ids reach segbench's 8 Synapse classes through ``data.source.label_map``.

What a new user would try: a run trained with ``data.target_spacing=[null,1,1]`` (the paper's in-plane 1 mm)
predicts a scan that is RAS-oriented, anisotropic (0.7 x 0.7 x 3 mm) and not a multiple of the training size:
the output has the input's shape and affine, and its DSC against the scan's labels, computed here with
nibabel + numpy, is what ``segbench-score`` reports for it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import zoom

from helpers import cli

REAL_CT = Path(__file__).resolve().parent / "data" / "real_ct"
#: TotalSegmentator v2 ``total`` ids -> Synapse class ids (SOURCE.md; spleen, kidneys, gallbladder, liver,
#: stomach, aorta = 52, pancreas = 7)
LABEL_MAP = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 52: 7, 7: 8}
ORGANS = ["spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


def mapped(label: np.ndarray) -> np.ndarray:
    out = np.zeros(label.shape, np.uint8)
    for raw, cls in LABEL_MAP.items():
        out[label == raw] = cls
    return out


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory) -> Path:
    """The real CT as a two-case dataset in the raw BTCV layout: its lower 18 slices (training) and its upper 18
    (testing; 6 slices shared), both with the file's own raw ids and geometry."""
    root = tmp_path_factory.mktemp("real_ct")
    image, label = nib.load(REAL_CT / "image.nii.gz"), nib.load(REAL_CT / "label.nii.gz")
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S") and image.shape == label.shape == (122, 101, 30)
    img, lab = np.asarray(image.dataobj), np.asarray(label.dataobj)
    (root / "img").mkdir()
    (root / "label").mkdir()
    for case, (z0, z1) in (("0001", (0, 18)), ("0002", (12, 30))):
        affine = image.affine.copy()
        affine[:3, 3] = image.affine[:3, :3] @ [0, 0, z0] + image.affine[:3, 3]  # the sub-volume's first slice
        nib.save(nib.Nifti1Image(img[..., z0:z1], affine), root / "img" / f"img{case}.nii.gz")
        nib.save(nib.Nifti1Image(lab[..., z0:z1], affine), root / "label" / f"label{case}.nii.gz")
    return root


@pytest.fixture(scope="module")
def real_run(real_dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("real_run") / "run"
    label_map = "{" + ",".join(f"{k}:{v}" for k, v in LABEL_MAP.items()) + "}"
    proc = cli("segbench.train", "debug=smoke", "num_threads=1", "data=nifti_folder", f"data.root={real_dataset}",
               f"data.source.label_map={label_map}", "data.split.train=1", "data.split.val=0", "data.split.test=1",
               "+data.target_spacing=[null,1.0,1.0]", "data.cache_dir=null", "trainer.max_epochs=2",
               f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_a_real_ct_trains_and_its_test_case_is_scored_on_its_own_grid(real_run, real_dataset):
    """The run's test case (raw ids mapped) is predicted on its own 3 mm grid, not the 1 mm training grid, and
    segbench-score on the run's own predictions reproduces the run's per_case.csv row for row."""
    pred = nib.load(real_run / "predictions" / "0002.nii.gz")
    truth = nib.load(real_dataset / "label" / "label0002.nii.gz")
    assert pred.shape == truth.shape == (122, 101, 18)
    np.testing.assert_allclose(pred.affine, truth.affine, atol=1e-6)
    out = real_run.parent / "score"
    proc = cli("segbench.score", str(real_run / "predictions"), str(real_dataset), "--run", str(real_run),
               "--output", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "results" / "per_case.csv").read_text() == (real_run / "results" / "per_case.csv").read_text()


def test_a_new_anisotropic_ras_scan_is_predicted_in_its_geometry_and_scored_by_hand(real_run, tmp_path):
    # the new scan: the real CT resampled to 0.7 x 0.7 x 3 mm (cubic image, nearest label), RAS as it was:
    # 122 x 3 / 0.7 = 522.9 -> 523 columns, 101 x 3 / 0.7 = 432.9 -> 433 rows, 30 slices; no multiple of 64
    image, label = nib.load(REAL_CT / "image.nii.gz"), nib.load(REAL_CT / "label.nii.gz")
    factors = (523 / 122, 433 / 101, 1.0)
    hu = zoom(np.asarray(image.dataobj).astype(np.float32), factors, order=3, grid_mode=True, mode="nearest")
    raw = zoom(np.asarray(label.dataobj), factors, order=0, grid_mode=True, mode="nearest")
    affine = image.affine.copy()
    affine[:3, :3] = np.diag([3 * 122 / 523, 3 * 101 / 433, 3.0])
    affine[:3, 3] += np.array([affine[0, 0] - 3, affine[1, 1] - 3, 0]) / 2  # the same extent, pixel-area aligned
    (tmp_path / "scans").mkdir()
    (tmp_path / "truth").mkdir()
    nib.save(nib.Nifti1Image(np.round(hu).astype(np.int16), affine), tmp_path / "scans" / "ct.nii.gz")
    nib.save(nib.Nifti1Image(raw.astype(np.uint8), affine), tmp_path / "truth" / "ct.nii.gz")
    assert np.allclose(nib.affines.voxel_sizes(affine), (0.7, 0.7, 3.0), atol=2e-3)

    proc = cli("segbench.predict", f"run={real_run}", f"input={tmp_path / 'scans'}", f"output={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    written, source = nib.load(tmp_path / "out" / "ct.nii.gz"), nib.load(tmp_path / "scans" / "ct.nii.gz")
    assert written.shape == source.shape == (523, 433, 30)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    assert nib.aff2axcodes(written.affine) == ("R", "A", "S")

    label_map = json.dumps({str(k): v for k, v in LABEL_MAP.items()})
    proc = cli("segbench.score", str(tmp_path / "out"), str(tmp_path / "truth"), "--data", "synapse",
               "--label-map", label_map, "--output", str(tmp_path / "score"), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(tmp_path / "score" / "results" / "per_case.csv") as fh:
        reported = {r["organ"]: float(r["dsc"]) for r in csv.DictReader(fh) if r["convention"] == "default"}
    # by hand: DSC = 2 |P & G| / (|P| + |G|) per organ on the scan's own voxels, raw ids mapped as above
    pred, truth = np.asarray(written.dataobj), mapped(raw)
    for k, organ in enumerate(ORGANS, 1):
        p, g = pred == k, truth == k
        if p.sum() + g.sum() == 0:
            continue
        by_hand = 2 * (p & g).sum() / (p.sum() + g.sum())
        assert reported[organ] == pytest.approx(by_hand, rel=1e-5, abs=1e-6), organ
    assert truth.max() == 8 and (pred > 0).any()
