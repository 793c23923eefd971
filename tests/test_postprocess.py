"""Post-processing at test time (``test.postprocess: largest_component``, :mod:`segbench.postprocess`): per organ,
the largest connected component (26-connectivity in 3D, ties kept, as nnU-Net); the raw scores stay where and as
they are, the post-processed ones go beside them (``results/postprocessed/``), and ``segbench-table
--postprocessed`` shows them."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from helpers import cli, console, run_phantom
from segbench.errors import ConfigError
from segbench.metrics.results import CaseEvaluator
from segbench.postprocess import check_postprocess, largest_component
from segbench.report import table as table_cli

CLASSES = ["background", "organ_a", "organ_b"]
SPACING = (2.5, 0.8, 0.8)  # (z, y, x) mm


def cube_and_far_blob() -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: organ_a a 3 x 3 x 3 cube (z, y, x in 1..3), organ_b a 2 x 2 x 2 cube elsewhere. Prediction:
    the same, plus two organ_a voxels far along x, at (2, 2, 20) and (2, 2, 21)."""
    gt = np.zeros((5, 8, 24), np.uint8)
    gt[1:4, 1:4, 1:4] = 1
    gt[1:3, 5:7, 10:12] = 2
    pred = gt.copy()
    pred[2, 2, 20:22] = 1
    return pred, gt


def rows(evaluator: CaseEvaluator, organ: str, convention: str = "default") -> dict:
    (row,) = [r for r in evaluator.rows if r["organ"] == organ and r["convention"] == convention]
    return row


def test_largest_component_lowers_hd95_to_the_value_computed_by_hand():
    pred, gt = cube_and_far_blob()
    evaluator = CaseEvaluator(CLASSES, postprocess="largest_component")
    evaluator.add_case("case", pred, gt, SPACING)
    raw, post = rows(evaluator, "organ_a"), rows(evaluator.postprocessed, "organ_a")
    # Surfaces (mask XOR its 6-connected erosion): the cube's erosion is its centre alone, so its surface is 26
    # voxels, shared by both masks; each blob voxel is a surface voxel of the prediction (28 in all).
    # d(P->G): 26 zeros; (2,2,20) and (2,2,21) are nearest to (2,2,3), 17 and 18 voxels along x of 0.8 mm:
    #   13.6 and 14.4 mm. Sorted: 26 x 0, 13.6, 14.4; n = 28, P95 at index 27 * 0.95 = 25.65, between
    #   sorted[25] = 0 and sorted[26] = 13.6: 0.65 * 13.6 = 8.84 mm.
    # d(G->P): 26 zeros (every cube surface voxel is on the prediction's surface): P95 = 0.
    # HD95 = max(8.84, 0) = 8.84 mm; HD = 14.4 mm; DSC = 2 * 27 / (27 + 29) = 54 / 56.
    assert raw["hd95"] == pytest.approx(0.65 * 17 * 0.8, abs=1e-9) == pytest.approx(8.84)
    assert raw["hd"] == pytest.approx(14.4) and raw["dsc"] == pytest.approx(54 / 56)
    # the far blob is the smaller component: removed, the prediction is the ground truth
    assert (post["hd95"], post["hd"], post["dsc"], post["pred_voxels"]) == (0.0, 0.0, 1.0, 27)
    # transunet (voxels, ONE P95 of both directions pooled): 54 distances, index 53 * 0.95 = 50.35 falls among
    # the 52 zeros, so the blob does not show in its HD95 at all, before or after
    assert rows(evaluator, "organ_a", "transunet")["hd95"] == 0.0
    # organ_b has one component: the same row before and after
    assert rows(evaluator, "organ_b") == rows(evaluator.postprocessed, "organ_b")


def test_components_are_26_connected_and_ties_are_all_kept():
    labels = np.zeros((6, 9, 9), np.uint8)
    labels[1:4, 1:4, 1:4] = 1
    labels[4, 4, 4] = 1       # touches the cube at a corner only: 26-connected, kept
    labels[2, 4, 4] = 1       # shares an edge with the cube: kept
    labels[1, 1, 6] = 1       # two voxels away from the cube: removed
    labels[1:3, 6:8, 6:8] = 2  # organ 2: two components of 8 voxels, tied for the largest: both kept
    labels[4:6, 6:8, 6:8] = 2
    labels[0, 0, 0] = 2       # ... and a smaller one: removed
    out = largest_component(labels)
    removed = np.argwhere(out != labels)
    assert sorted(map(tuple, removed)) == [(0, 0, 0), (1, 1, 6)]
    assert out[0, 0, 0] == out[1, 1, 6] == 0
    assert labels[0, 0, 0] == 2  # the input is not changed


def test_one_component_per_organ_and_2d_maps():
    pred, gt = cube_and_far_blob()
    np.testing.assert_array_equal(largest_component(gt), gt)
    np.testing.assert_array_equal(largest_component(np.zeros((3, 4, 5), np.uint8)), 0)
    plane = np.zeros((6, 6), np.int64)
    plane[0:2, 0:2] = 3
    plane[2, 2] = 3           # a diagonal neighbour in 2D: 8-connected, kept
    plane[5, 5] = 3           # removed
    expected = plane.copy()
    expected[5, 5] = 0
    np.testing.assert_array_equal(largest_component(plane), expected)


def test_an_unknown_postprocess_is_one_line():
    with pytest.raises(ConfigError, match=r"^test\.postprocess='biggest' is unknown; choose none or largest_component"):
        CaseEvaluator(CLASSES, postprocess="biggest")
    assert check_postprocess(None) == "none"


def write_results(results: Path, postprocess: str) -> dict:
    pred, gt = cube_and_far_blob()
    evaluator = CaseEvaluator(CLASSES, postprocess=postprocess)
    evaluator.add_case("0001", pred, gt, SPACING)
    evaluator.add_case("0002", gt, gt, SPACING)
    return evaluator.write(results, config={"loss": {"name": "dice"}, "test": {"postprocess": postprocess}},
                           extra={"run": {"output_dir": "x"}})


def test_the_raw_results_stay_as_they_are_and_the_postprocessed_go_beside_them(tmp_path):
    write_results(tmp_path / "none" / "results", "none")
    summary = write_results(tmp_path / "lcc" / "results", "largest_component")
    none, lcc = tmp_path / "none" / "results", tmp_path / "lcc" / "results"
    assert sorted(p.name for p in none.iterdir()) == ["per_case.csv", "summary.json"]
    assert (lcc / "per_case.csv").read_bytes() == (none / "per_case.csv").read_bytes()
    stored = json.loads((lcc / "summary.json").read_text())
    pointer = stored.pop("postprocessed")
    stored["config"]["test"]["postprocess"] = "none"
    # the raw summary.json is the one a run without post-processing writes, byte for byte, but for the pointer
    assert json.dumps(stored, indent=2) == (none / "summary.json").read_text()
    post = json.loads((lcc / "postprocessed" / "summary.json").read_text())
    assert pointer == {"method": "largest_component", "description": pointer["description"],
                       "summary": "postprocessed/summary.json", "per_case": "postprocessed/per_case.csv",
                       "convention": "default", "hd_unit": "mm", "mean_dsc": post["mean_dsc"],
                       "mean_hd95": post["mean_hd95"]}
    assert "26-connectivity" in pointer["description"]
    assert post["postprocess"] == {"method": "largest_component", "description": pointer["description"],
                                   "raw": "../summary.json"}
    assert post["run"] == {"output_dir": "x"} and post["config"] == summary["config"]
    # organ_a: case 0001 HD95 8.84 mm raw, 0 after; case 0002 0 both: means 4.42 -> 0; organ_b 0 throughout
    assert stored["per_class"]["organ_a"]["hd95"] == pytest.approx(4.42)
    assert post["per_class"]["organ_a"]["hd95"] == 0.0 and post["mean_hd95"] == 0.0
    assert summary["postprocessed"]["mean_dsc"] == 1.0 and stored["mean_dsc"] == pytest.approx((54 / 56 + 3) / 4)
    assert len((lcc / "postprocessed" / "per_case.csv").read_text().splitlines()) == 1 + 2 * 2 * 2  # cases x organs x conventions


def fake_run(run_dir: Path, postprocess: str) -> Path:
    config = {"seed": 1, "loss": {"name": "dice"}, "model": {"_target_": "segbench.models.UNet"},
              "data": {"name": "synthetic", "class_names": CLASSES}, "metrics": {"convention": "default"}}
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    write_results(run_dir / "results", postprocess)
    return run_dir


def mean_cells(markdown: str) -> list[str]:
    (row,) = [line for line in markdown.splitlines() if line.startswith("| dice |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_segbench_table_postprocessed_shows_those_scores_and_refuses_runs_without_them(tmp_path, capsys):
    run = fake_run(tmp_path / "lcc", "largest_component")
    table_cli.main([str(run), "--percent", "--out", str(tmp_path / "raw")])
    raw = capsys.readouterr().out
    assert mean_cells(raw)[2:4] == [f"{100 * (54 / 56 + 3) / 4:.2f}", "2.21"]  # HD95 (4.42 + 0) / 2
    table_cli.main([str(run), "--percent", "--postprocessed", "--out", str(tmp_path / "post")])
    post = capsys.readouterr().out
    assert mean_cells(post)[2:4] == ["100.00", "0.00"]
    assert "Scores of the post-processed test predictions (test.postprocess=largest_component)." in post
    assert "post-processed" not in raw
    plain = fake_run(tmp_path / "plain", "none")
    with pytest.raises(SystemExit) as caught:
        table_cli.main([str(run), str(plain), "--postprocessed", "--out", str(tmp_path / "refused")])
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"segbench-table: error: --postprocessed: {plain} has no post-processed scores (results/"
                     "postprocessed/summary.json: it was tested with test.postprocess=none); score it with "
                     "segbench-eval ckpt_path=<its checkpoint> test.postprocess=largest_component and table that, or "
                     "leave out --postprocessed"]
    with pytest.raises(SystemExit):
        table_cli.main([str(run), "--postprocessed", "--cv", "--out", str(tmp_path / "cv")])
    assert "--postprocessed does not combine with --cv yet" in capsys.readouterr().err


@pytest.mark.slow  # a smoke training run and two segbench-table commands (30 s on a loaded 2-core CPU)
def test_a_smoke_run_with_largest_component_writes_both_score_sets(smoke_run, phantom_dir, tmp_path):
    run = tmp_path / "run"
    proc = cli("segbench.train", "debug=smoke", "num_threads=1", f"paths.data_dir={phantom_dir}",
               f"hydra.run.dir={run}", "test.postprocess=largest_component")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the raw scores are the smoke run's, byte for byte (same config and seed: same weights, same predictions)
    assert (run / "results" / "per_case.csv").read_bytes() == (smoke_run / "results" / "per_case.csv").read_bytes()
    summary = json.loads((run / "results" / "summary.json").read_text())
    post = json.loads((run / "results" / "postprocessed" / "summary.json").read_text())
    assert summary["postprocessed"]["summary"] == "postprocessed/summary.json"
    assert summary["postprocessed"]["mean_dsc"] == post["mean_dsc"]
    assert "postprocessed" not in json.loads((smoke_run / "results" / "summary.json").read_text())
    assert "post-processed (largest_component), convention default: mean DSC" in proc.stdout
    (case,) = json.loads((run / "splits.json").read_text())["test"]
    raw = np.asarray(nib.load(run / "predictions" / f"{case}.nii.gz").dataobj)
    after = np.asarray(nib.load(run / "predictions_postprocessed" / f"{case}.nii.gz").dataobj)
    np.testing.assert_array_equal(after, largest_component(raw))  # 26-connectivity does not see the axis order
    proc = console("table", str(run), "--postprocessed", "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    assert "Scores of the post-processed test predictions" in proc.stdout
    proc = console("table", str(run), str(smoke_run), "--postprocessed", "--out", str(tmp_path / "report"))
    assert proc.returncode == 2 and "has no post-processed scores" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # two segbench-predict commands (20 s each on a loaded 2-core CPU, mostly start-up)
def test_segbench_predict_writes_the_largest_components(smoke_run, phantom_dir, tmp_path):
    scan = sorted((run_phantom(smoke_run) / "img").iterdir())[0]
    for postprocess in ("none", "largest_component"):
        proc = cli("segbench.predict", f"run={smoke_run}", f"input={scan}", f"output={tmp_path / postprocess}",
                   f"postprocess={postprocess}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    (name,) = [p.name for p in (tmp_path / "none").iterdir()]
    raw, after = (nib.load(tmp_path / d / name) for d in ("none", "largest_component"))
    np.testing.assert_array_equal(np.asarray(after.dataobj), largest_component(np.asarray(raw.dataobj)))
    np.testing.assert_array_equal(after.affine, raw.affine)
