"""Faults: non-finite scans and losses, a full disk during a checkpoint write, a corrupt last.ckpt, bad cases.

Each one stops with one line before it can cost a training budget, or is stepped around with one line
saying so; none leaves a run that cannot resume or a run marked done that is not.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from helpers import blob_case, cli, write_case
from segbench.data import NiftiFolderSource, SegDataModule
from segbench.errors import DataError
from segbench.runtime.checkpoint import CheckpointError, check_training_checkpoint, safe_checkpoint_io


def datamodule(root: Path, **options) -> SegDataModule:
    return SegDataModule(NiftiFolderSource(root, num_classes=3), ["background", "a", "b"],
                         {"train": 2, "val": 1, "test": 1}, img_size=32, batch_size=2,
                         **{"cache_dir": None, **options})


def float_case(root: Path, case_id: str, image: np.ndarray, label: np.ndarray) -> None:
    """Like helpers.write_case, but a float32 image (NIfTI can hold NaN / inf only in floats)."""
    write_case(root, case_id, np.nan_to_num(image, posinf=0, neginf=0).astype(np.int16), label)
    affine = np.diag([-0.8, -0.8, 5.0, 1.0])
    nib.save(nib.Nifti1Image(image.astype(np.float32).transpose(2, 1, 0), affine), root / "img" / f"img{case_id}.nii.gz")


@pytest.fixture
def nan_dataset(tmp_path) -> Path:
    root = tmp_path / "nan"
    for i in range(1, 5):
        image, label = blob_case(i, num_classes=3)
        image = image.astype(np.float32)
        if i == 4:  # the test case: 7 NaN and 2 infinite voxels
            image[0, 0, :7] = np.nan
            image[1, 0, :2] = [np.inf, -np.inf]
        float_case(root, f"{i:04d}", image, label)
    return root


# -- non-finite image values -------------------------------------------------------------------------------
def test_a_non_finite_scan_is_refused_at_load_naming_the_case_and_the_count(nan_dataset):
    dm = datamodule(nan_dataset)
    dm.setup("fit")  # train and val cases are finite
    with pytest.raises(DataError, match=r"^case 0004 \(.*img0004\.nii\.gz\) holds 9 non-finite image value\(s\) "
                                        r"\(NaN or inf\) of 49152; .*data\.nonfinite_fill=<value>"):
        dm.preflight()  # 12 x 64 x 64 = 49152 voxels


def test_nonfinite_fill_replaces_them_explicitly(nan_dataset):
    dm = datamodule(nan_dataset, nonfinite_fill=-1000)
    dm.setup(None)
    image = dm.test_volumes[0].image
    assert np.isfinite(image).all()
    # -1000 HU is below the window [-125, 275]: it maps to 0, like the background (-500 HU)
    assert image[0, 0, :7].tolist() == [0.0] * 7 and image[1, 0, :2].tolist() == [0.0, 0.0]
    with pytest.raises(Exception, match="nonfinite_fill must be a finite number"):
        datamodule(nan_dataset, nonfinite_fill=float("nan"))


# -- non-finite training loss ------------------------------------------------------------------------------
def test_the_loss_watch_adds_no_host_sync(monkeypatch):
    """observe() runs in training_step: tensor ops only; any host read would go through these."""
    from segbench.runtime.nonfinite import LossWatch

    watch = LossWatch("ce_dice")
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, _n=name, **k: pytest.fail(f"host sync via {_n}"))
    watch.observe(0, torch.tensor(0.5), {"loss/consistency": torch.tensor(0.1)})
    watch.observe(1, torch.tensor(float("nan")), {"loss/consistency": torch.tensor(0.2)})
    watch.observe(2, torch.tensor(float("inf")), {"loss/consistency": torch.tensor(0.3)})
    monkeypatch.undo()
    assert int(watch.first_step) == 1  # the first bad step is kept, later ones do not overwrite it
    assert watch.message(1, {}).startswith("training loss is not finite at step 1 (loss ce_dice = nan; logged "
                                           "parts: loss/consistency=0.2)")


@pytest.mark.slow  # a training run
def test_a_diverging_run_stops_in_one_line_and_is_recorded_failed(phantom_dir, tmp_path):
    run = tmp_path / "run"
    proc = cli("segbench.train", "debug=smoke", "optimizer.lr=1e30", "num_threads=1", f"paths.data_dir={phantom_dir}",
               f"hydra.run.dir={run}")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    # lr 1e30: the first update blows the weights up, so the second step's loss (step 1) is NaN; on a CPU
    # the watch is read in the same step, so training stops there, before any checkpoint
    assert last.startswith("segbench-train: error: training loss is not finite at step 1 (loss ce_dice = nan")
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("training loss is not finite at step 1")
    assert not (run / "results" / "summary.json").exists()
    assert not (run / "checkpoints").exists()


# -- checkpoints: atomic writes, a corrupt last.ckpt -------------------------------------------------------
def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    io = safe_checkpoint_io()
    path = tmp_path / "checkpoints" / "last.ckpt"
    good = {"state_dict": {"w": torch.ones(3)}, "epoch": 1}
    io.save_checkpoint(good, path)

    def disk_full(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"^cannot write checkpoint .*last\.ckpt \(No space left on device\); "
                                              "free disk space"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))


def unfinished_copy(smoke_run: Path, tmp_path: Path) -> tuple[Path, object]:
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    (run / "results" / "summary.json").unlink()
    cfg = OmegaConf.create(json.loads((run / "run.json").read_text())["config"])
    return run, cfg


def test_resume_skips_a_corrupt_last_checkpoint_for_the_newest_sound_one(smoke_run, tmp_path, capsys):
    from segbench.runtime.rundir import resume_checkpoint

    run, cfg = unfinished_copy(smoke_run, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # what a full disk left
    assert check_training_checkpoint(last) is not None
    chosen = resume_checkpoint(run, cfg)
    assert chosen == run / "checkpoints" / "best-epoch000.ckpt"
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"checkpoint {last} is corrupt or truncated")
    assert out[0].endswith("skipping it: resuming from best-epoch000.ckpt, the newest sound checkpoint")


def test_resume_starts_over_when_no_checkpoint_is_sound(smoke_run, tmp_path, capsys):
    from segbench.runtime.rundir import resume_checkpoint

    run, cfg = unfinished_copy(smoke_run, tmp_path)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "checkpoints" / "best-epoch000.ckpt").write_bytes(b"not a zip")
    assert resume_checkpoint(run, cfg) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].endswith("no other sound checkpoint: training starts over")
    assert out[0].startswith(f"checkpoint {run}/checkpoints/last.ckpt is empty (0 bytes")


@pytest.mark.slow  # a second run
def test_a_truncated_last_checkpoint_no_longer_blocks_the_same_command(smoke_run, phantom_dir, tmp_path):
    """The same command (a Slurm requeue) after a full disk truncated last.ckpt: it resumes and finishes."""
    run, _ = unfinished_copy(smoke_run, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    proc = cli("segbench.train", "debug=smoke", "num_threads=1", f"paths.data_dir={phantom_dir}",
               f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping it: resuming from best-epoch000.ckpt, the newest sound checkpoint" in proc.stdout
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    # best-epoch000.ckpt is the end of the smoke run's only epoch: nothing is left to train, the test runs
    assert json.loads((run / "results" / "summary.json").read_text())["run"]["resumed_from"].endswith(
        "best-epoch000.ckpt")


# -- pre-flight --------------------------------------------------------------------------------------------
@pytest.mark.slow  # a CLI run (as the bad-input matrix)
def test_a_truncated_test_case_stops_the_run_before_training(tmp_path):
    root = tmp_path / "ds"
    for i in range(1, 4):
        write_case(root, f"{i:04d}", *blob_case(i, num_classes=3))
    test_image = root / "img" / "img0003.nii.gz"
    test_image.write_bytes(test_image.read_bytes()[:200])
    proc = cli("segbench.train", "debug=smoke", "data=nifti_folder", f"data.root={root}", "data.cache_dir=null",
               f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"segbench-train: error: cannot read {test_image} (")
    assert "Epoch 0" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow  # a CLI run (as the bad-input matrix)
def test_a_missing_test_label_stops_the_run_before_training(tmp_path):
    root = tmp_path / "ds"
    for i in range(1, 4):
        write_case(root, f"{i:04d}", *blob_case(i, num_classes=3))
    (root / "label" / "label0003.nii.gz").unlink()
    proc = cli("segbench.train", "debug=smoke", "data=nifti_folder", f"data.root={root}", "data.cache_dir=null",
               f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"segbench-train: error: missing file {root}/label/label0003.nii.gz; check data.root or regenerate the dataset")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_preflight_checks_every_split_once_and_the_cache_makes_the_second_run_cheap(blob_dataset, tmp_path,
                                                                                       monkeypatch):
    loads = []
    load = NiftiFolderSource.load
    monkeypatch.setattr(NiftiFolderSource, "load", lambda self, ref: loads.append(ref.case_id) or load(self, ref))
    first = datamodule(blob_dataset, cache_dir=str(tmp_path / "cache"))
    first.setup("fit")
    first.preflight()
    assert sorted(loads) == ["0001", "0002", "0003", "0004"]  # train 2 + val 1 at setup, the test case here
    loads.clear()
    second = datamodule(blob_dataset, cache_dir=str(tmp_path / "cache"))
    second.setup("fit")
    second.preflight()
    assert loads == [] and second.cache.builds == 0  # everything from the cache: no case read again


def test_an_unwritable_cache_falls_back_to_no_cache(blob_dataset, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    dm = datamodule(blob_dataset, cache_dir=str(blocker / "cache"))
    assert dm.cache is None
    assert "is not writable (Not a directory); running without the preprocessing cache" in caplog.text
    dm.setup("fit")
    dm.preflight()
    assert len(dm.splits["test"]) == 1
