"""``segbench-score PRED_DIR GT_DIR``: a folder of label maps scored as a run scores its test cases.

* a hand-made case (an anisotropic affine whose voxel axes are not the canonical ones) whose DSC and
  HD95 are worked out by hand here, and checked with nibabel + numpy;
* a real run's own ``predictions/`` against the phantom's label files gives the run's ``per_case.csv``,
  row for row, every column, every convention;
* label maps for both sides, the missing-prediction policy, the matching rule, and every bad input as a
  one-line error with exit status 1;
* ``segbench-table`` puts the scored folder beside a run.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import cli
from segbench.metrics import folders
from segbench.score import main as score_main

PHANTOM_ORGANS = ["spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
METRICS = ("dsc", "hd95", "hd", "assd", "nsd")

#: voxel axis 0 runs along the patient's y (0.8 mm), axis 1 along x (0.7 mm), axis 2 along z (2.5 mm):
#: not the canonical axes, so the scores are right only if the spacing follows the axes when reoriented
AFFINE = np.array([[0.0, 0.7, 0.0, -40.0],
                   [0.8, 0.0, 0.0, 12.5],
                   [0.0, 0.0, 2.5, 300.0],
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (10, 8, 6)  # (i, j, k) voxels of the files


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE, dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array).astype(dtype), affine), str(path))
    return path


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """(gt, pred) in file voxel order (i, j, k).

    class 1: the ground truth is the box i 2..5, j 2..4, k 1..2 (4 x 3 x 2 = 24 voxels); the prediction
    is the same box shifted by one voxel along i (i 3..6, 24 voxels). They share i 3..5: 3 x 3 x 2 = 18.
    class 2: 2 x 2 x 2 = 8 voxels of ground truth, never predicted.
    """
    gt = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    gt[2:6, 2:5, 1:3] = 1
    pred[3:7, 2:5, 1:3] = 1
    gt[7:9, 5:7, 3:5] = 2
    return gt, pred


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def score(*args: str, capsys=None) -> tuple[int, str, str]:
    """``segbench-score`` in this process: (status, stdout, stderr)."""
    status = score_main([*map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("segbench-score: error: ") and "Traceback" not in err, err
    return lines[0].removeprefix("segbench-score: error: ")


# ----------------------------------------------------------------------------------------------
# the numbers


def test_dsc_and_hd95_computed_by_hand_equal_what_segbench_score_reports(tmp_path):
    gt, pred = hand_case()
    save(tmp_path / "gt" / "label0001.nii.gz", gt)
    save(tmp_path / "pred" / "0001.nii.gz", pred)
    out = tmp_path / "out"
    proc = cli("segbench.score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--class-names", "background,a,b",
               "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = {(r["organ"], r["convention"]): r for r in read_rows(out / "results" / "per_case.csv")}
    assert {r["case"] for r in rows.values()} == {"0001"}  # the ground truth's case id (label0001 -> 0001)

    # DSC by hand with nibabel + numpy, from the files: 2 |P & G| / (|P| + |G|) = 2 * 18 / (24 + 24) = 0.75
    g = np.asarray(nib.load(tmp_path / "gt" / "label0001.nii.gz").dataobj) == 1
    p = np.asarray(nib.load(tmp_path / "pred" / "0001.nii.gz").dataobj) == 1
    dsc = 2 * np.logical_and(p, g).sum() / (p.sum() + g.sum())
    assert dsc == 0.75
    for convention in ("default", "transunet"):
        assert float(rows[("a", convention)]["dsc"]) == dsc
    a = rows[("a", "default")]
    assert (int(a["gt_voxels"]), int(a["pred_voxels"]), a["status"], a["hd_unit"]) == (24, 24, "ok", "mm")
    # Every voxel of a 4 x 3 x 2 box is on its surface (2 voxels thick: the 6-connected erosion is empty).
    # P -> G: the 18 shared voxels are at 0, the 6 of the slab i = 6 at one voxel along i, 0.8 mm (axis i
    # runs along the patient's y, 0.8 mm; 0.7 or 2.5 would mean the spacing did not follow the axes);
    # G -> P alike (the slab i = 2). The 95th percentile of 24 values (18 x 0, 6 x 0.8) is at index
    # 23 * 0.95 = 21.85, between two 0.8: HD95 = HD = 0.8 mm; ASSD = 12 * 0.8 / 48 = 0.2 mm; every
    # distance is within the 2 mm NSD tolerance: NSD 1.
    assert float(a["hd95"]) == pytest.approx(0.8) and float(a["hd"]) == pytest.approx(0.8)
    assert float(a["assd"]) == pytest.approx(0.2) and float(a["nsd"]) == 1.0
    # transunet: voxels, one percentile of the 48 pooled distances (36 x 0, 12 x 1) at 47 * 0.95 = 44.65: 1 voxel
    t = rows[("a", "transunet")]
    assert (float(t["hd95"]), t["hd_unit"]) == (1.0, "voxels")
    # class b is never predicted: DSC 0 and HD95 = the volume's diagonal, sqrt(8^2 + 5.6^2 + 15^2) mm
    b = rows[("b", "default")]
    assert (float(b["dsc"]), b["status"]) == (0.0, "pred_empty")
    assert float(b["hd95"]) == pytest.approx(np.sqrt((10 * 0.8) ** 2 + (8 * 0.7) ** 2 + (6 * 2.5) ** 2), rel=1e-5)

    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["mean_dsc"] == pytest.approx((0.75 + 0.0) / 2)
    assert summary["conventions"] == ["default", "transunet"] and summary["num_cases"] == 1
    assert summary["config"]["score"]["name"] == "pred"
    assert summary["config"]["data"]["class_names"] == ["background", "a", "b"]
    # the console: the per-organ table, then one line with the means and where the results are
    assert "convention: default (HD95 in mm)" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == (
        f"segbench-score: pred: 1 case(s) of {tmp_path / 'pred'} scored against {tmp_path / 'gt'} (convention "
        f"default): mean DSC 37.50 %, mean HD95 {summary['mean_hd95']:.2f} mm; results: {out / 'results'}")


def phantom_labels(run: Path) -> Path:
    """The folder of the phantom the run was trained and tested on (its raw BTCV layout: img/, label/)."""
    from segbench.data import PhantomSource

    source = json.loads((run / "results" / "summary.json").read_text())["config"]["data"]["source"]
    return PhantomSource(**{k: v for k, v in source.items() if k != "_target_"}).root


@pytest.fixture(scope="module")
def rescored(smoke_run, tmp_path_factory) -> Path:
    """``segbench-score`` of the smoke run's own predictions against the phantom's labels, with --run."""
    out = tmp_path_factory.mktemp("rescored") / "smoke"
    proc = cli("segbench.score", str(smoke_run / "predictions"), str(phantom_labels(smoke_run)), "--run",
               str(smoke_run), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_runs_own_predictions_reproduce_its_per_case_csv_row_for_row(smoke_run, rescored, tmp_path):
    ours = read_rows(rescored / "results" / "per_case.csv")
    theirs = read_rows(smoke_run / "results" / "per_case.csv")
    assert [r["case"] for r in theirs] == ["0003"] * 16  # debug=smoke tests one case: 8 organs x 2 conventions
    # row for row, every column: the same case ids, organs, conventions, statuses and voxel counts, and
    # the same metric values to the 6 significant digits both files hold (computed from the same arrays)
    assert ours == theirs
    for metric in METRICS:
        np.testing.assert_allclose([float(r[metric]) for r in ours], [float(r[metric]) for r in theirs],
                                   rtol=0, atol=0, equal_nan=True)
    summary = json.loads((rescored / "results" / "summary.json").read_text())
    run_summary = json.loads((smoke_run / "results" / "summary.json").read_text())
    assert summary["by_convention"] == run_summary["by_convention"]
    assert summary["config"]["data"]["name"] == "phantom"
    assert summary["config"]["score"]["name"] == smoke_run.name  # the run's folder: its predictions/' parent

    # without --run: the data config's class names, and the phantom's other 19 label files are not cases
    out = tmp_path / "by_data"
    status = score_main([str(smoke_run / "predictions"), str(phantom_labels(smoke_run)), "--data", "phantom",
                         "--missing", "skip", "--output", str(out), "--no-progress"])
    assert status == 0
    assert read_rows(out / "results" / "per_case.csv") == theirs


def test_segbench_table_puts_the_scored_folder_beside_the_run(smoke_run, rescored, tmp_path):
    named = tmp_path / "nnunet"
    status = score_main([str(smoke_run / "predictions"), str(phantom_labels(smoke_run)), "--run", str(smoke_run),
                         "--name", "nnunet", "--output", str(named), "--no-progress"])
    assert status == 0
    proc = cli("segbench.report.table", str(named), str(smoke_run), "--percent", "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    header, body = lines[0], lines[1:]  # the separator row starts "|:"
    assert "DSC" in header and "spleen" in header
    labels = [line.split("|")[1].strip() for line in body]
    assert labels == ["nnunet", "ce_dice"]  # the scored folder by its --name, the run by its loss
    # the same predictions: the same numbers in both rows
    assert body[0].split("|")[2:] == body[1].split("|")[2:]
    assert "warning" not in proc.stderr


# ----------------------------------------------------------------------------------------------
# label maps, missing predictions, matching


def test_label_maps_translate_both_sides(tmp_path, capsys):
    gt, pred = hand_case()
    # the ground truth in a dataset's raw ids (6 -> class 1, 1 -> class 2, 3 is not a class: background);
    # the prediction in another tool's ids (10 -> 1, 20 -> 2)
    raw_gt = np.select([gt == 1, gt == 2], [6, 1], 0)
    raw_gt[0, 0, 0] = 3
    save(tmp_path / "gt" / "case1.nii.gz", raw_gt)
    save(tmp_path / "pred" / "case1.nii.gz", np.select([pred == 1, pred == 2], [10, 20], 0))
    save(tmp_path / "plain_gt" / "case1.nii.gz", gt)
    save(tmp_path / "plain_pred" / "case1.nii.gz", pred)
    (tmp_path / "map.json").write_text('{"10": 1, "20": 2}')
    status, _, err = score(tmp_path / "pred", tmp_path / "gt", "--class-names", "background,a,b", "--label-map",
                           "{6: 1, 1: 2}", "--pred-label-map", tmp_path / "map.json", "--output", tmp_path / "mapped",
                           capsys=capsys)
    assert status == 0, err
    status, _, err = score(tmp_path / "plain_pred", tmp_path / "plain_gt", "--class-names", "background,a,b",
                           "--output", tmp_path / "plain", capsys=capsys)
    assert status == 0, err
    assert read_rows(tmp_path / "mapped" / "results" / "per_case.csv") == read_rows(
        tmp_path / "plain" / "results" / "per_case.csv")
    config = json.loads((tmp_path / "mapped" / "results" / "summary.json").read_text())["config"]["score"]
    assert config["label_map"] == {"6": 1, "1": 2} and config["pred_label_map"] == {"10": 1, "20": 2}

    # without the prediction's map, its ids are beyond the classes: one line naming the file and the option
    status, _, err = score(tmp_path / "pred", tmp_path / "gt", "--class-names", "background,a,b", "--label-map",
                           "{6: 1, 1: 2}", "--output", tmp_path / "unmapped", capsys=capsys)
    assert status == 1
    lines = err.strip().splitlines()
    assert lines[0] == (f"segbench-score: error: prediction {tmp_path / 'pred' / 'case1.nii.gz'} holds label id(s) "
                        "[10] outside 0..2; map another tool's ids to these classes with --pred-label-map "
                        "'{its_id: class_id}'")
    assert lines[1] == "segbench-score: error: 1 of 1 case(s) cannot be scored; nothing written"
    assert not (tmp_path / "unmapped" / "results").exists()


def test_synapse_data_maps_btcv_ids_and_says_so(tmp_path, capsys):
    gt, pred = hand_case()
    # BTCV ids: 1 spleen, 6 liver (Synapse class 5), 5 esophagus (not a Synapse class)
    raw = np.select([gt == 1, gt == 2], [6, 5], 0)
    save(tmp_path / "RawData" / "Training" / "label" / "label0001.nii.gz", raw)
    save(tmp_path / "pred" / "0001.nii.gz", np.where(pred == 1, 5, 0))
    status, out, err = score(tmp_path / "pred", tmp_path / "RawData" / "Training", "--data", "synapse", "--output",
                             tmp_path / "out", capsys=capsys)
    assert status == 0, err
    assert "ground-truth ids mapped by {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}" in err
    rows = {r["organ"]: r for r in read_rows(tmp_path / "out" / "results" / "per_case.csv")
            if r["convention"] == "default"}
    assert float(rows["liver"]["dsc"]) == 0.75 and rows["spleen"]["status"] == "both_empty"


def test_missing_predictions_are_refused_skipped_or_scored_empty(tmp_path, capsys):
    gt, pred = hand_case()
    for case in ("0001", "0002"):
        save(tmp_path / "data" / "label" / f"label{case}.nii.gz", gt)
    save(tmp_path / "pred" / "0001.nii.gz", pred)
    args = (tmp_path / "pred", tmp_path / "data", "--class-names", "background,a,b")
    status, _, err = score(*args, "--output", tmp_path / "refused", capsys=capsys)
    assert status == 1
    assert one_error_line(err) == (
        f"1 ground-truth case(s) have no prediction in {tmp_path / 'pred'}: label0002.nii.gz; pass --missing skip to "
        "score the predicted cases only, or --missing empty to score them as empty predictions")
    assert not (tmp_path / "refused").exists()

    status, out, _ = score(*args, "--missing", "skip", "--output", tmp_path / "skip", capsys=capsys)
    assert status == 0 and "1 ground-truth case(s) without a prediction left out" in out
    assert {r["case"] for r in read_rows(tmp_path / "skip" / "results" / "per_case.csv")} == {"0001"}

    status, out, _ = score(*args, "--missing", "empty", "--output", tmp_path / "empty", capsys=capsys)
    assert status == 0 and "1 ground-truth case(s) without a prediction scored as empty" in out
    rows = read_rows(tmp_path / "empty" / "results" / "per_case.csv")
    missing = [r for r in rows if r["case"] == "0002" and r["convention"] == "default"]
    assert [(r["dsc"], r["status"], r["pred_voxels"]) for r in missing] == [("0", "pred_empty", "0")] * 2
    summary = json.loads((tmp_path / "empty" / "results" / "summary.json").read_text())
    assert summary["score"]["missing_predictions"] == ["0002"] and summary["num_cases"] == 2
    assert summary["per_class"]["a"]["n_worst_case"] == 1


@pytest.mark.parametrize(("pred", "truth", "case"), [
    ("0003", "label0003", "0003"),                 # a segbench run's predictions / raw BTCV, the phantom
    ("img0003", "label0003", "0003"),              # named after the image
    ("abdomen_001", "abdomen_001", "abdomen_001"),  # nnU-Net: the same name in labelsTr/
    ("abdomen_001_0000", "abdomen_001", "abdomen_001"),  # named after nnU-Net's first channel
    ("Case_00001", "Case_00001", "Case_00001"),    # AbdomenCT-1K
    ("case7_pred", "seg_case7", "case7"),
])
def test_matching_rule(pred, truth, case):
    matching = folders.match_files({pred: Path(f"{pred}.nii.gz")}, {truth: Path(f"{truth}.nii.gz"),
                                                                     "other": Path("other.nii.gz")})
    assert [(p.case, p.prediction.name, p.ground_truth.name) for p in matching.pairs] == [
        (case, f"{pred}.nii.gz", f"{truth}.nii.gz")]
    assert [p.case for p in matching.missing] == ["other"]


def test_nnunet_dataset_names_its_classes(tmp_path, capsys):
    gt, pred = hand_case()
    root = tmp_path / "Dataset001_Blobs"
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2},
                                                   "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    save(root / "labelsTr" / "blob_001.nii.gz", gt)
    save(tmp_path / "pred" / "blob_001.nii.gz", pred)
    status, out, err = score(tmp_path / "pred", root, "--output", tmp_path / "out", capsys=capsys)
    assert status == 0, err
    rows = read_rows(tmp_path / "out" / "results" / "per_case.csv")
    assert {(r["case"], r["organ"]) for r in rows} == {("blob_001", "liver"), ("blob_001", "spleen")}
    # --data nnunet reads the same dataset.json, also through labelsTr/
    status, _, err = score(tmp_path / "pred", root / "labelsTr", "--data", "nnunet", "--output", tmp_path / "out2",
                           capsys=capsys)
    assert status == 0, err
    assert read_rows(tmp_path / "out2" / "results" / "per_case.csv") == rows


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit status 1, nothing written


def bad_folders(tmp_path: Path, kind: str) -> list[str]:
    """PRED_DIR, GT_DIR and options of one kind of bad input (``tmp_path/p``, ``tmp_path/g``)."""
    gt, pred = hand_case()
    p, g = tmp_path / "p", tmp_path / "g"
    names = ["--class-names", "background,a,b"]
    if kind != "no predictions":
        save(p / "0001.nii.gz", pred)
    else:
        p.mkdir()
    save(g / "label0001.nii.gz", gt)
    if kind == "truncated":
        data = gzip.compress(b"\0" * 400)[:30]
        (p / "0001.nii.gz").write_bytes(data)
    elif kind == "other shape":
        save(p / "0001.nii.gz", pred[:, :, :5])
    elif kind == "other affine":
        shifted = AFFINE.copy()
        shifted[0, 3] += 2.0
        save(p / "0001.nii.gz", pred, shifted)
    elif kind == "4D":
        save(p / "0001.nii.gz", pred[..., None].repeat(2, axis=3))
    elif kind == "probabilities":
        save(p / "0001.nii.gz", pred * 0.4, dtype=np.float32)
    elif kind == "orphan":
        save(p / "0009.nii.gz", pred)
    elif kind == "ambiguous":
        save(g / "0001.nii.gz", gt)
        save(p / "label_0001.nii.gz", pred)
        (p / "0001.nii.gz").unlink()
    elif kind == "one case twice":
        save(g / "0001.nii.gz", gt)
        names += ["--missing", "empty"]
    elif kind == "two predictions":
        save(p / "img0001.nii.gz", pred)
    elif kind == "no class names":
        names = []
    elif kind == "ids beyond the classes":
        names = ["--class-names", "background,a"]
    return [str(p), str(g), *names, "--output", str(tmp_path / "out")]


BAD = {
    "no prediction folder": (lambda t: [str(t / "nope"), str(t / "g"), "--class-names", "background,a"],
                             "prediction folder {t}/nope not found; pass the folder of predicted label maps"),
    "no ground-truth folder": (lambda t: [*bad_folders(t, "ok")[:1], str(t / "nope"), "--class-names", "background,a"],
                               "ground-truth folder {t}/nope not found; pass the folder of label maps (or a dataset "
                               "folder with labelsTr/ or label/)"),
    "no predictions": (lambda t: bad_folders(t, "no predictions"),
                       "no NIfTI label maps (.nii.gz / .nii) in the prediction folder {t}/p"),
    "orphan": (lambda t: bad_folders(t, "orphan"),
               "prediction(s) 0009.nii.gz have no ground truth in the ground-truth folder (matched by file name, or "
               "by case id: label0003 = 0003); remove them or pass the right folders"),
    "ambiguous": (lambda t: bad_folders(t, "ambiguous"),
                  "prediction label_0001.nii.gz (case 0001) matches 0001.nii.gz and label0001.nii.gz; keep one "
                  "ground-truth file per case, or name the prediction as its ground-truth file"),
    "two predictions": (lambda t: bad_folders(t, "two predictions"),
                        "predictions 0001.nii.gz and img0001.nii.gz both match ground truth label0001.nii.gz; keep "
                        "one prediction per case"),
    "one case twice": (lambda t: bad_folders(t, "one case twice"),
                       "ground-truth files 0001.nii.gz and label0001.nii.gz both name case 0001; keep one file per "
                       "case"),
    "no class names": (lambda t: bad_folders(t, "no class names"),
                       "which classes? pass --class-names background,<organ>,... (by id), --data <name> (e.g. "
                       "phantom, synapse) or --run <run dir>"),
    "one class name": (lambda t: [*bad_folders(t, "ok")[:2], "--class-names", "background"],
                       "--class-names: expected the class names by id, background first, e.g. background,spleen,liver "
                       "(at least 2, none empty); got 'background'"),
    "unknown data": (lambda t: [*bad_folders(t, "ok")[:2], "--data", "btcv"],
                     "--data btcv: no such data config; choose one of abdomenct1k, abdomenct1k3d, chaos_ct, chaos_mr, "
                     "nifti_folder, nnunet, phantom, phantom3d, synapse"),
    "not a run": (lambda t: [*bad_folders(t, "ok")[:2], "--run", str(t / "g")],
                  "--run {t}/g is not a segbench run directory (no results/summary.json or .hydra/config.yaml)"),
    "bad label map": (lambda t: [*bad_folders(t, "ok"), "--label-map", "6->5"],
                      "--label-map '6->5' is not a label map; pass {{raw_id: class_id, ...}}, e.g. '{{6: 5, 1: 1}}' "
                      "(or a .json / .yaml file holding one)"),
    "label map beyond the classes": (lambda t: [*bad_folders(t, "ok"), "--label-map", "{6: 3}"],
                                     "--label-map maps 6 to class 3, outside the 3 classes 0..2"),
}

#: a bad file among the cases: its line, then the count (nothing written)
BAD_FILES = {
    "truncated": "cannot read prediction {t}/p/0001.nii.gz (",
    "other shape": "prediction {t}/p/0001.nii.gz has shape (10, 8, 5) but its ground truth label0001.nii.gz has "
                   "(10, 8, 6); predictions must be on the ground truth's voxel grid (resample the prediction onto "
                   "it, nearest neighbour)",
    "other affine": "prediction {t}/p/0001.nii.gz and its ground truth label0001.nii.gz have different affines (up to "
                    "2 apart); the prediction is not on the ground truth's grid (resample it onto it, or write it "
                    "with the image's affine)",
    "4D": "prediction {t}/p/0001.nii.gz holds a 4D array (10, 8, 6, 2); expected a 3D label map",
    "ids beyond the classes": "ground truth {t}/g/label0001.nii.gz holds label id(s) [2] outside 0..1; map the "
                              "dataset's ids to classes with --label-map '{{raw_id: class_id}}', or pass the class "
                              "names of all its ids",
    "probabilities": "prediction {t}/p/0001.nii.gz holds non-integer values; expected a label map of class ids "
                     "(not probabilities or an image)",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_is_one_line_and_exit_status_1(kind, tmp_path, capsys):
    args, expected = BAD[kind]
    status, out, err = score(*args(tmp_path), capsys=capsys)
    assert status == 1, out
    assert one_error_line(err) == expected.format(t=tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_file_is_named_with_its_fix_and_nothing_is_written(kind, tmp_path, capsys):
    status, out, err = score(*bad_folders(tmp_path, kind), capsys=capsys)
    assert status == 1, out
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    assert lines[0].startswith("segbench-score: error: " + BAD_FILES[kind].format(t=tmp_path)), lines[0]
    assert lines[1] == "segbench-score: error: 1 of 1 case(s) cannot be scored; nothing written"
    assert not (tmp_path / "out" / "results").exists()


def test_every_bad_file_is_listed_and_usage_errors_exit_2(tmp_path):
    gt, pred = hand_case()
    for case in ("0001", "0002", "0003"):
        save(tmp_path / "g" / f"label{case}.nii.gz", gt)
    save(tmp_path / "p" / "0001.nii.gz", pred[:, :, :5])
    save(tmp_path / "p" / "0002.nii.gz", pred)
    save(tmp_path / "p" / "0003.nii.gz", pred * 0.5, dtype=np.float32)
    proc = cli("segbench.score", str(tmp_path / "p"), str(tmp_path / "g"), "--class-names", "background,a,b",
               "--output", str(tmp_path / "out"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert [line.split(" ")[2:4] for line in lines[:2]] == [["prediction", f"{tmp_path}/p/0001.nii.gz"],
                                                            ["prediction", f"{tmp_path}/p/0003.nii.gz"]]
    assert lines[2] == "segbench-score: error: 2 of 3 case(s) cannot be scored; nothing written"
    assert not (tmp_path / "out").exists()
    # argparse's usage errors: two sources of class names, an unknown convention
    for extra in (["--class-names", "background,a", "--data", "phantom"], ["--convention", "mm"]):
        proc = cli("segbench.score", str(tmp_path / "p"), str(tmp_path / "g"), *extra)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("segbench-score: error: ")


def test_refuses_to_write_into_a_training_run(smoke_run, tmp_path, capsys):
    gt, pred = hand_case()
    save(tmp_path / "g" / "label0001.nii.gz", gt)
    save(tmp_path / "p" / "0001.nii.gz", pred)
    before = (smoke_run / "results" / "per_case.csv").read_bytes()
    status, _, err = score(tmp_path / "p", tmp_path / "g", "--class-names", "background,a,b", "--output", smoke_run,
                           capsys=capsys)
    assert status == 1
    assert one_error_line(err) == (f"output directory {smoke_run} is a segbench run directory; scoring into it would "
                                   "replace its results: pass --output <another folder>")
    assert (smoke_run / "results" / "per_case.csv").read_bytes() == before


def test_default_output_and_name(tmp_path, monkeypatch, capsys):
    gt, pred = hand_case()
    save(tmp_path / "g" / "label0001.nii.gz", gt)
    save(tmp_path / "nnunet_fold0" / "0001.nii.gz", pred)
    monkeypatch.delenv("SEGBENCH_OUTPUT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    status, _, err = score(tmp_path / "nnunet_fold0", tmp_path / "g", "--class-names", "background,a,b", capsys=capsys)
    assert status == 0, err
    assert (tmp_path / "outputs" / "score" / "nnunet_fold0" / "results" / "per_case.csv").is_file()
    # a second score of the same folder replaces its results
    status, _, err = score(tmp_path / "nnunet_fold0", tmp_path / "g", "--class-names", "background,a,b",
                           capsys=capsys)
    assert status == 0, err
