"""segbench-predict: new scans predicted in their own geometry, ensembles, test-time flips, bad input; and the
test split's predictions and scores on each scan's own grid (``metrics.grid``).

The geometry is checked with an "oracle" network whose class-1 logit is a steep function of the windowed
intensity: its prediction on the scan's own grid must then be the scan's own threshold mask, whatever the
orientation, spacing and size of the scan, so every step that is undone (the resampling, the resize to the
model size, the reorientation) is undone exactly where it must be.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import cli, run_phantom, write_dicom
from segbench.data import NiftiFolderSource, PatchDataModule, SegDataModule
from segbench.models.inference import case_probabilities, flip_sets, labels_at
from segbench.runtime.predict import Member, find_scans, predict_volume, read_scan, write_case

pytestmark = pytest.mark.usefixtures("one_thread")

RAS_SPACING = (3.0, 0.7, 0.7)   # (sz, sy, sx) mm: anisotropic, as a clinical abdominal CT
RAS_SHAPE = (13, 87, 101)       # (Z, Y, X): not a multiple of any training size


# -- an oracle network and scans whose right answer is known ---------------------------------------------------
class Threshold(torch.nn.Module):
    """Class 1 wherever the windowed intensity exceeds 0.5 (logit 60 (x - 0.5)), class 0 elsewhere."""

    device = torch.device("cpu")
    slice_batch = 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 60.0 * (x - 0.5)], 1)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


def ellipsoid(shape, centre, radii) -> np.ndarray:
    """A boolean (Z, Y, X) ellipsoid; an off-centre one moves under any flip or transpose."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2 < 1


def ras_scan(path: Path, shape=RAS_SHAPE, spacing=RAS_SPACING, label_path: Path | None = None) -> np.ndarray:
    """A RAS-oriented NIfTI (positive diagonal affine, an origin off zero): -500 HU with a 200 HU off-centre
    ellipsoid; returns the ellipsoid in the file's (X, Y, Z) array order."""
    mask = ellipsoid(shape, (shape[0] * 0.68, shape[1] * 0.3, shape[2] * 0.7),
                     (shape[0] * 0.22, shape[1] * 0.18, shape[2] * 0.2))
    image = np.where(mask, 200, -500).astype(np.int16)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    affine[:3, 3] = [-31.5, 12.25, 40.0]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), affine), path)
    if label_path is not None:
        nib.save(nib.Nifti1Image(mask.astype(np.uint8).transpose(2, 1, 0), affine), label_path)
    return mask.transpose(2, 1, 0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def oracle_member(tmp_path: Path, dims: int = 2, **options) -> Member:
    source = NiftiFolderSource(tmp_path / "unused", num_classes=2)
    common = {"source": source, "class_names": ["background", "organ"], "split": {"train": 1}, "cache_dir": None}
    dm = SegDataModule(**common, img_size=48, **options) if dims == 2 else \
        PatchDataModule(**common, patch_size=(8, 32, 32), **options)
    return Member(tmp_path, tmp_path / "none.ckpt", None, dm, Threshold())


@pytest.mark.parametrize("dims, options", [
    (2, {}),                                          # only the in-plane resize to 48 x 48
    (2, {"target_spacing": [None, 1.0, 1.0]}),        # the paper's in-plane 1 mm, then 48 x 48
    (3, {"target_spacing": [2.0, 1.5, 1.5]}),         # 3D: resampled on every axis
    (3, {"target_shape": [16, 40, 40]}),              # 3D: a fixed shape (Table 6)
])
def test_prediction_is_written_on_the_scans_own_grid(tmp_path, dims, options):
    mask = ras_scan(tmp_path / "scan.nii.gz")
    member = oracle_member(tmp_path, dims, **options)
    vol = read_scan(find_scans(tmp_path / "scan.nii.gz")[0])
    out = write_case(tmp_path / "out", "scan", predict_volume([member], vol), vol.affine, ["background", "organ"])
    written, source = nib.load(out), nib.load(tmp_path / "scan.nii.gz")
    assert written.shape == source.shape == RAS_SHAPE[::-1]
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    assert nib.aff2axcodes(written.affine) == ("R", "A", "S")
    pred = np.asarray(written.dataobj)
    # the threshold mask of the scan itself; only voxels on the ellipsoid's boundary may differ (interpolation)
    assert dice(pred, mask) > 0.93, dice(pred, mask)
    # ... and not a mirrored or transposed one: the ellipsoid is off-centre on every axis
    for axis in range(3):
        assert dice(pred, np.flip(mask, axis)) < 0.5


def test_probabilities_go_back_to_the_scan_before_the_argmax(tmp_path):
    """labels_at interpolates probabilities, then takes the argmax: not the labels of the model's grid resized."""
    probs = torch.zeros(3, 1, 2, 2)
    probs[0], probs[1], probs[2] = 0.4, 0.35, 0.25          # class 0 leads on the left column ...
    probs[:, 0, :, 1] = torch.tensor([0.0, 0.5, 0.5])[:, None]  # ... a tie of 1 and 2 on the right
    probs[2, 0, :, 1] = 0.5
    probs[1, 0, :, 1] = 0.5
    labels = labels_at(probs, (1, 2, 4), planar=True)
    # columns at x = 0.25, 0.75 in the model's 2 columns: bilinear weights (1, 0), (0.75, 0.25), (0.25, 0.75), (0, 1)
    # class 0: 0.4, 0.3, 0.1, 0.0; class 1: 0.35, 0.3875, 0.4625, 0.5; class 2: 0.25, 0.3125, 0.4375, 0.5
    assert labels[0, 0].tolist() == [0, 1, 1, 1]
    # 3D (class by class, trilinear, a running maximum) agrees with the argmax of all classes interpolated at once
    rng = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 3, 5, 6, generator=rng).softmax(0)
    expected = torch.nn.functional.interpolate(probs[None], size=(7, 9, 4), mode="trilinear",
                                               align_corners=False)[0].argmax(0)
    assert torch.equal(labels_at(probs, (7, 9, 4)).long(), expected)


def test_test_time_flips_average_the_flipped_predictions():
    """tta: the mean of softmax(net(flip(x))) flipped back, over x and every combination of spatial axes."""
    assert flip_sets(2) == [(2,), (3,), (2, 3)]
    assert len(flip_sets(3)) == 7
    weights = torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 4  # position-dependent

    class Skewed(Threshold):
        def forward(self, x):
            return x * weights

    x = torch.rand(3, 1, 6, 6)
    net = Skewed()
    by_hand = sum(net(x.flip(a) if a else x).softmax(1).flip(a) if a else net(x).softmax(1)
                  for a in [(), (2,), (3,), (2, 3)]) / 4
    got = case_probabilities(net, x, tta=True)
    torch.testing.assert_close(got, by_hand.transpose(0, 1))
    assert not torch.allclose(case_probabilities(net, x, tta=False), got)


def test_a_dicom_series_is_predicted_into_a_nifti_with_its_geometry(tmp_path):
    series = tmp_path / "series"
    mask = ellipsoid((9, 40, 48), (4, 12, 30), (3, 8, 9))
    stored = np.where(mask, 1224, 524)  # HU = stored - 1024: 200 inside, -500 outside
    for k in range(9):
        write_dicom(series / f"slice{k:03d}.dcm", stored[k], 100.0 + 2.5 * k, k + 1, spacing=(2.5, 0.7, 0.9))
    scans = find_scans(series)
    assert [(s.case_id, s.kind) for s in scans] == [("series", "dicom")]
    vol = read_scan(scans[0])
    out = write_case(tmp_path / "out", "series", predict_volume([oracle_member(tmp_path)], vol), vol.affine,
                     ["background", "organ"])
    written = nib.load(out)
    assert written.shape == (48, 40, 9)
    np.testing.assert_allclose(written.affine, vol.affine)
    np.testing.assert_allclose(nib.affines.voxel_sizes(written.affine), (0.9, 0.7, 2.5), atol=1e-6)
    assert dice(np.asarray(written.dataobj), mask.transpose(2, 1, 0)) > 0.93


# -- the command, on trained runs ------------------------------------------------------------------------------
def predict(*args: str, cwd: Path | None = None):
    return cli("segbench.predict", *args, cwd=cwd)


@pytest.fixture(scope="module")
def two_seeds(phantom_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Two runs of one config, seeds 7 and 8, trained long enough (15 epochs of the smoke phantom's 5 batches,
    width 8) that each predicts a liver of its own, not one class everywhere: the members of an ensemble."""
    runs = []
    for seed in (7, 8):
        run = tmp_path_factory.mktemp(f"seed{seed}") / "run"
        proc = cli("segbench.train", "debug=smoke", "num_threads=1", f"seed={seed}", "model.width=8",
                   "trainer.max_epochs=15", "optimizer.lr=0.05", f"paths.data_dir={phantom_dir}",
                   f"hydra.run.dir={run}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(run)
    return runs[0], runs[1]


def phantom_case(run: Path, case_id: str) -> tuple[Path, Path]:
    """A case's image and label files of the phantom ``run`` trained on."""
    root = run_phantom(run)
    return root / "img" / f"img{case_id}.nii.gz", root / "label" / f"label{case_id}.nii.gz"


@pytest.mark.slow  # trains two runs of 15 epochs
def test_an_ensemble_is_the_mean_of_its_members_softmax(two_seeds, phantom_dir, tmp_path):
    first, second = two_seeds
    test_id = json.loads((first / "splits.json").read_text())["test"][0]
    image, _ = phantom_case(first, test_id)
    outputs = {}
    for name, runs in (("a", str(first)), ("b", str(second)), ("ab", f"[{first},{second}]")):
        proc = predict(f"run={runs}", f"input={image}", f"output={tmp_path / name}", "save_probabilities=true")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "1 of 1 case(s) predicted" in proc.stdout and "cases/s" in proc.stdout
        case = tmp_path / name / f"img{test_id}.nii.gz"   # named after the input file
        npz = np.load(tmp_path / name / f"img{test_id}.npz")
        outputs[name] = (np.asarray(nib.load(case).dataobj), npz["probabilities"].astype(np.float32))
        assert npz["probabilities"].dtype == np.float16
        assert list(npz["class_names"])[:2] == ["background", "spleen"]
        assert nib.load(case).shape == nib.load(image).shape == npz["probabilities"].shape[1:]
    (la, pa), (lb, pb), (lab, pab) = outputs["a"], outputs["b"], outputs["ab"]
    # by hand: the mean of the two members' class probabilities (float16 files: 1e-3), and its argmax
    np.testing.assert_allclose(pab, (pa + pb) / 2, atol=2e-3)
    np.testing.assert_allclose(pab.sum(0), 1.0, atol=5e-3)
    decided = np.sort(pab, 0)[-1] - np.sort(pab, 0)[-2] > 5e-3   # voxels not tied within float16 rounding
    assert decided.mean() > 0.95
    np.testing.assert_array_equal(lab[decided], ((pa + pb) / 2).argmax(0)[decided])
    # the ensemble is neither member, and both members predict organs
    assert len(np.unique(la)) > 1 and len(np.unique(lb)) > 1
    assert (lab != la).any() and (lab != lb).any()


@pytest.mark.slow  # trains two runs of 15 epochs (shared with the test above)
def test_the_ensemble_by_hand_on_the_networks(two_seeds, tmp_path):
    """A scan already on the model's grid (64 x 64 slices, canonical orientation): the ensemble's label map is
    argmax((softmax(net_a(x)) + softmax(net_b(x))) / 2) with x the HU window of the scan, computed here with the
    networks built from each run's config and checkpoint weights."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    rng = np.random.default_rng(3)
    hu = np.where(ellipsoid((4, 64, 64), (2, 20, 40), (3, 12, 16)), 60, -80) + rng.normal(0, 30, (4, 64, 64))
    affine = np.diag([-0.8, -0.8, 5.0, 1.0])  # L, P, S: segbench's canonical orientation, nothing to reorient
    nib.save(nib.Nifti1Image(hu.astype(np.float32).transpose(2, 1, 0), affine), tmp_path / "scan.nii.gz")
    proc = predict(f"run=[{two_seeds[0]},{two_seeds[1]}]", f"input={tmp_path / 'scan.nii.gz'}",
                   f"output={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    x = torch.from_numpy(np.clip((hu + 125) / 400, 0, 1).astype(np.float32))[:, None]  # window [-125, 275]
    probs = 0
    for run in two_seeds:
        net = instantiate(OmegaConf.load(run / ".hydra" / "config.yaml").model)
        state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        with torch.no_grad():
            probs = probs + net.eval()(x).softmax(1) / 2
    expected = probs.argmax(1).numpy().transpose(2, 1, 0)
    got = np.asarray(nib.load(tmp_path / "out" / "scan.nii.gz").dataobj)
    assert (got == expected).mean() > 0.999  # float summation order: a tie may fall either way


def test_bad_scans_are_one_line_each_and_the_rest_is_predicted(smoke_run, tmp_path):
    scans = tmp_path / "scans"
    ras_scan(scans / "good.nii.gz", shape=(6, 50, 50))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.int16), np.eye(4)), scans / "fourd.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    nan = np.full((8, 8, 4), -100.0, np.float32)
    nan[2, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), scans / "nan.nii.gz")
    proc = predict(f"run={smoke_run}", f"input={scans}", f"output={tmp_path / 'out'}")
    assert proc.returncode == 1
    errors = [line for line in proc.stdout.splitlines() if line.startswith("segbench-predict: error:")]
    assert len(errors) == 3, proc.stdout
    assert "4D array" in next(e for e in errors if "fourd" in e)
    assert "cannot read" in next(e for e in errors if "broken" in e)
    assert "non-finite" in next(e for e in errors if "case nan " in e)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz"]
    assert "1 of 4 case(s) predicted" in proc.stdout and "not predicted: broken, fourd, nan" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["input={scans}", "output={out}"], "run not given: segbench-predict run=<training run directory>"),
    (["run={run}", "input={empty}", "output={out}"], "holds no images (no .nii / .nii.gz file, no DICOM series)"),
    (["run={run}", "input={scans}/missing.nii.gz", "output={out}"], "input {scans}/missing.nii.gz not found"),
    (["run={scans}", "input={scans}", "output={out}"], "is not a training run directory (no .hydra/config.yaml)"),
    (["run={run}", "input={scans}", "output={out}", "device=tpu"], "device='tpu' is not a torch device"),
    (["run={run}", "input={scans}", "output={out}", "checkpoint=first"], "checkpoint='first' is unknown"),
])
def test_bad_command_lines_are_one_line(smoke_run, tmp_path, args, message):
    scans, empty = tmp_path / "scans", tmp_path / "empty"
    empty.mkdir()
    ras_scan(scans / "a.nii.gz", shape=(4, 20, 20))
    fill = {"run": smoke_run, "scans": scans, "empty": empty, "out": tmp_path / "out"}
    proc = predict(*[a.format(**fill) for a in args])
    assert proc.returncode == 1
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert message.format(**fill) in lines[-1], lines[-3:]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_an_ensemble_of_runs_with_other_classes_or_preprocessing_is_refused(smoke_run, tmp_path):
    import shutil

    from omegaconf import OmegaConf

    ras_scan(tmp_path / "scan.nii.gz", shape=(4, 20, 20))
    for key, value, message in (("class_names", [f"organ{k}" for k in range(9)], "different classes"),
                                ("window", [-100, 200], "preprocess differently (window: [-125.0, 275.0] vs "
                                                        "[-100.0, 200.0])")):
        other = tmp_path / key
        shutil.copytree(smoke_run, other)
        config = OmegaConf.load(other / ".hydra" / "config.yaml")
        config.data[key] = value
        OmegaConf.save(config, other / ".hydra" / "config.yaml")
        proc = predict(f"run=[{smoke_run},{other}]", f"input={tmp_path / 'scan.nii.gz'}",
                       f"output={tmp_path / 'out'}")
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert message in last, last


# -- the test split on the scan's own grid ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def resampled_run(phantom_dir, tmp_path_factory) -> Path:
    """A smoke run that resamples every case in-plane to 1 mm (the paper's 2D setting)."""
    run = tmp_path_factory.mktemp("resampled") / "run"
    proc = cli("segbench.train", "debug=smoke", "num_threads=1", "data.target_spacing=[null,1.0,1.0]",
               f"paths.data_dir={phantom_dir}", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def per_case_dsc(run: Path, convention: str = "default") -> dict[tuple[str, str], float]:
    """``(case, organ) -> DSC`` of a run's ``results/per_case.csv`` (written with 6 significant digits)."""
    with open(run / "results" / "per_case.csv") as fh:
        return {(r["case"], r["organ"]): float(r["dsc"]) for r in csv.DictReader(fh) if r["convention"] == convention}


def test_the_test_split_is_written_and_scored_on_the_scans_own_grid(resampled_run, phantom_dir):
    splits = json.loads((resampled_run / "splits.json").read_text())
    rows = per_case_dsc(resampled_run)
    for case_id in splits["test"]:
        image, label = phantom_case(resampled_run, case_id)
        pred = nib.load(resampled_run / "predictions" / f"{case_id}.nii.gz")
        truth = nib.load(label)
        assert pred.shape == truth.shape
        np.testing.assert_allclose(pred.affine, truth.affine, atol=1e-6)
        p, g = np.asarray(pred.dataobj), np.asarray(truth.dataobj)
        for k, organ in enumerate(["spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta",
                                   "pancreas"], 1):
            both = (p == k).sum() + (g == k).sum()
            if both == 0:
                continue
            by_hand = 2 * ((p == k) & (g == k)).sum() / both
            assert rows[case_id, organ] == pytest.approx(by_hand, rel=1e-5, abs=1e-6), (case_id, organ)
    summary = json.loads((resampled_run / "results" / "summary.json").read_text())
    assert summary["config"]["metrics"]["grid"] == "original"


@pytest.mark.slow  # trains a 3D smoke run
def test_a_3d_run_predicts_by_sliding_windows_in_the_scans_geometry(phantom_dir, tmp_path):
    run = tmp_path / "run3d"
    proc = cli("segbench.train", "debug=smoke", "data=phantom3d", "num_threads=1", "data.target_spacing=[4.0,2.0,2.0]",
               f"paths.data_dir={phantom_dir}", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ras_scan(tmp_path / "scans" / "ct.nii.gz", shape=(9, 70, 75))
    proc = predict(f"run={run}", f"input={tmp_path / 'scans'}", f"output={tmp_path / 'out'}", "tta=true")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "test-time flips" in proc.stdout
    written, source = nib.load(tmp_path / "out" / "ct.nii.gz"), nib.load(tmp_path / "scans" / "ct.nii.gz")
    assert written.shape == source.shape == (75, 70, 9)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
