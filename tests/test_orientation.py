"""One case stored in any orientation trains on the same axial slices, scores the same, and its prediction
overlays it.

The phantom case below is saved as the scanner wrote it (LPS: columns to patient left, rows to posterior,
slices to superior), as RAS (x and y flipped), and with permuted axes (stored sagittally: slices run left to
right). nibabel's ``as_reoriented`` moves the voxels and changes the affine together, so all three files
hold the same image in world space; only the array order differs.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from helpers import blob_case, write_case
from segbench.data import NiftiFolderSource, SegDataModule, save_nifti_label
from segbench.data.volume import to_canonical
from segbench.metrics.results import CaseEvaluator

pytestmark = pytest.mark.usefixtures("one_thread")

ORIENTATIONS = {"LPS": ("L", "P", "S"), "RAS": ("R", "A", "S"), "PSL": ("P", "S", "L"), "SLA": ("S", "L", "A")}


def stored_as(src: Path, dst: Path, axcodes: tuple[str, str, str]) -> None:
    """Copy a dataset folder with every file reoriented to ``axcodes`` (same world image, other array order)."""
    for path in sorted(src.rglob("*.nii.gz")):
        img = nib.load(path)
        out = img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(axcodes)))
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(out, target)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("orient")
    lps = base / "LPS"
    for i in range(1, 5):
        # an asymmetric case: organs off-centre in-plane, and in a part of the slices only
        image, label = blob_case(i, shape=(10, 48, 40), num_classes=3)
        label[: 3 + i] = 0
        image = np.where(label > 0, image, -500).astype(np.int16)
        image[:, :4, :6] = 300  # a bright corner marks the orientation of every slice
        write_case(lps, f"{i:04d}", image, label, spacing=(4.0, 0.7, 0.9))
    out = {"LPS": lps}
    for name, codes in ORIENTATIONS.items():
        if name != "LPS":
            stored_as(lps, base / name, codes)
            out[name] = base / name
    return out


def module_for(root: Path) -> SegDataModule:
    dm = SegDataModule(NiftiFolderSource(root, num_classes=3), ["background", "a", "b"],
                       {"train": 2, "val": 1, "test": 1}, img_size=32, batch_size=2, cache_dir=None)
    dm.setup(None)
    return dm


def test_the_files_really_differ_in_array_order(datasets):
    shapes = {name: nib.load(root / "img" / "img0001.nii.gz").shape for name, root in datasets.items()}
    assert shapes == {"LPS": (40, 48, 10), "RAS": (40, 48, 10), "PSL": (48, 10, 40), "SLA": (10, 40, 48)}
    lps = np.asarray(nib.load(datasets["LPS"] / "img" / "img0001.nii.gz").dataobj)
    ras = np.asarray(nib.load(datasets["RAS"] / "img" / "img0001.nii.gz").dataobj)
    assert not np.array_equal(lps, ras) and np.array_equal(lps[::-1, ::-1], ras)


def test_every_orientation_gives_the_same_training_slices_spacing_and_test_volume(datasets):
    ref = module_for(datasets["LPS"])
    for name in ("RAS", "PSL", "SLA"):
        dm = module_for(datasets[name])
        assert torch.equal(dm.train_set.slices.images, ref.train_set.slices.images), name
        assert torch.equal(dm.train_set.slices.labels, ref.train_set.slices.labels), name
        assert torch.equal(dm.val_set.slices.images, ref.val_set.slices.images), name
        vol, ref_vol = dm.test_volumes[0], ref.test_volumes[0]
        assert vol.spacing == ref_vol.spacing == (4.0, pytest.approx(0.7), pytest.approx(0.9)), name
        assert np.array_equal(vol.image, ref_vol.image) and np.array_equal(vol.label, ref_vol.label), name
    # the canonical slices are axial: (Z, Y, X) = (10, 48, 40), the bright corner at the start of rows/columns
    assert ref.test_volumes[0].shape == (10, 48, 40) and ref.test_volumes[0].image[0, 0, 0] == 1.0


def test_every_orientation_scores_the_same_and_its_prediction_overlays_its_input(datasets, tmp_path):
    from segbench.models import UNet
    from segbench.module import SegModule

    torch.manual_seed(0)
    net = UNet(in_channels=1, num_classes=3, width=4)
    module = SegModule(net, {"name": "ce"}, lambda params: torch.optim.SGD(params, lr=0.1), {"name": "none"},
                       ["background", "a", "b"]).eval()
    rows = {}
    for name, root in datasets.items():
        vol = module_for(root).test_volumes[0]
        with torch.no_grad():
            pred = module.predict_volume(torch.from_numpy(vol.image)[:, None], vol.shape[1:])
        # an informative prediction: organs found, plus the network's noise, minus class b in the top slice
        pred[vol.label > 0] = vol.label[vol.label > 0]
        pred[9:][pred[9:] == 2] = 0
        evaluator = CaseEvaluator(["background", "a", "b"])
        rows[name] = evaluator.add_case(vol.case_id, pred, vol.label, vol.spacing)
        # written back in the input's own orientation and affine: voxel for voxel on the input's grid
        out = tmp_path / name / "0004.nii.gz"
        save_nifti_label(out, vol.label, vol.affine)
        written = nib.load(out)
        label_file = nib.load(root / "label" / "label0004.nii.gz")
        assert np.allclose(written.affine, label_file.affine)
        assert np.array_equal(np.asarray(written.dataobj), np.asarray(label_file.dataobj)), name
        save_nifti_label(out, pred, vol.affine)  # and a prediction comes back canonical, unchanged
        back = to_canonical(type(vol)(vol.case_id, np.asarray(nib.load(out).dataobj).transpose(2, 1, 0).astype(
            np.float32), None, vol.spacing, nib.load(out).affine))
        assert np.array_equal(back.image, pred), name
    for name in ("RAS", "PSL", "SLA"):
        assert rows[name] == rows["LPS"], name
    assert 0 < rows["LPS"][1]["dsc"] < 1  # class b is scored, and imperfect
