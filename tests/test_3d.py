"""The 3D path: patch sampling, sliding-window inference, and a 3D phantom run through the command line."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from helpers import cli
from segbench.data.datamodule3d import PatchDataModule
from segbench.data.sources import NiftiFolderSource
from segbench.errors import ConfigError
from segbench.models import UNet3D
from segbench.models.inference import argmax_at, check_inference, sliding_window_logits

ORGANS = ["spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


pytestmark = pytest.mark.usefixtures("one_thread")


# -- sliding-window inference ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_sliding_window_equals_whole_volume_inference_when_the_window_covers_it(mode):
    torch.manual_seed(0)
    net = UNet3D(num_classes=4, width=4, depth=3).eval()
    volume = torch.rand(1, 1, 12, 20, 16)  # sides that are not multiples of the window stride
    with torch.no_grad():
        whole = net(volume)
        windowed = sliding_window_logits(net, volume, roi_size=(12, 20, 16), overlap=0.5, mode=mode)
    torch.testing.assert_close(windowed, whole, atol=1e-5, rtol=1e-5)


def test_overlapping_windows_blend_back_to_the_whole_volume_for_a_pointwise_network():
    # a 1x1x1 convolution sees no context, so every window predicts exactly what the whole volume
    # does at each voxel; blending any number of overlapping windows must then give it back
    # (the Gaussian weights are normalised per voxel), and padding must not leak in
    torch.manual_seed(0)
    net = nn.Conv3d(1, 3, 1)
    volume = torch.rand(1, 1, 13, 21, 17)
    with torch.no_grad():
        windowed = sliding_window_logits(net, volume, roi_size=(8, 8, 8), overlap=0.5, mode="gaussian",
                                         sw_batch_size=3)
        torch.testing.assert_close(windowed, net(volume), atol=1e-5, rtol=1e-5)


def test_inference_options_are_checked():
    assert check_inference(None)["mode"] == "gaussian"
    with pytest.raises(ConfigError, match=r"inference.overlap must be in \[0, 1\), got 1.0"):
        check_inference({"overlap": 1.0})
    with pytest.raises(ConfigError, match="inference has no option"):
        check_inference({"window": 3})


def test_argmax_at_returns_class_maps_on_the_scoring_grid():
    # class 1 wins in the upper half along Z, class 0 in the lower half
    logits = torch.zeros(1, 2, 4, 2, 2)
    logits[0, 0, :2] = 5.0
    logits[0, 1, 2:] = 5.0
    same = argmax_at(logits, (4, 2, 2))
    assert same.dtype == torch.uint8 and same[:2].sum() == 0 and same[2:].min() == 1
    # twice the resolution: the boundary stays halfway
    up = argmax_at(logits, (8, 4, 4))
    assert up.shape == (8, 4, 4)
    assert up[:4].sum() == 0 and up[4:].min() == 1


# -- the patch data module -------------------------------------------------------------------------------------
def patch_module(root, **options) -> PatchDataModule:
    settings = {"source": NiftiFolderSource(root, num_classes=3), "class_names": ["background", "a", "b"],
                "split": {"train": 2, "val": 1, "test": 1}, "patch_size": [8, 16, 16], "samples_per_volume": 3,
                "foreground_prob": 1.0, "batch_size": 2, "augment": {"flip_prob": 0.0}, **options}
    dm = PatchDataModule(**settings)
    dm.prepare_data()
    dm.setup()
    return dm


def test_patches_are_foreground_centred_and_sized(blob_dataset):
    dm = patch_module(blob_dataset)
    assert len(dm.train_set) == 2 * 3  # samples_per_volume patches from each training case
    for i in range(len(dm.train_set)):
        sample = dm.train_set[i]
        assert sample["image"].shape == (1, 8, 16, 16) and sample["label"].shape == (8, 16, 16)
        assert type(sample["image"]) is torch.Tensor  # not a MONAI MetaTensor
        assert sample["case_index"] == i // 3
        # foreground_prob=1: the crop is centred on a labelled voxel (the blobs fill every slice)
        assert sample["label"][4, 8, 8] > 0
        assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0  # HU window applied


def test_validation_modes_and_test_cases(blob_dataset):
    dm = patch_module(blob_dataset, validation="patches", val_samples_per_volume=5)
    assert len(dm.val_set) == 5 and dm.val_set[0]["image"].shape == (1, 8, 16, 16)
    dm = patch_module(blob_dataset)  # sliding_window: the whole validation case
    assert dm.val_case_ids == ["0003"] and dm.val_set[0]["image"].shape == (1, 12, 64, 64)
    test = next(iter(dm.test_dataloader()))
    assert test["case_id"] == "0004" and test["image"].shape == (1, 1, 12, 64, 64)
    assert test["native_shape"] == (12, 64, 64) and test["spacing"] == pytest.approx((5.0, 0.8, 0.8))
    images, labels = dm.overlay_samples(2)
    assert images.shape == (2, 1, 8, 16, 16) and labels.shape == (2, 8, 16, 16)


def test_resampling_and_the_preprocessing_cache_are_shared_with_2d(blob_dataset, tmp_path):
    # blob cases are 12 x 64 x 64 at (5.0, 0.8, 0.8) mm; 1.6 mm in-plane halves Y and X
    options = {"target_spacing": [None, 1.6, 1.6], "cache_dir": str(tmp_path / "cache")}
    dm = patch_module(blob_dataset, **options)
    test = next(iter(dm.test_dataloader()))
    assert test["image"].shape == (1, 1, 12, 32, 32) and test["label"].shape == (12, 32, 32)
    assert test["spacing"] == pytest.approx((5.0, 1.6, 1.6))  # predicted on the resampled grid, like 2D ...
    # ... and scored on the scan's own grid (metrics.grid=original): its label as the file holds it
    assert test["original"].shape == (12, 64, 64) and test["original"].spacing == pytest.approx((5.0, 0.8, 0.8))
    assert test["original"].label.shape == (12, 64, 64)
    assert dm.cache.builds == 5  # every case preprocessed once, and the test case's own label ...
    again = patch_module(blob_dataset, **options)
    assert again.cache.builds == 0 and again.cache.hits == 5  # ... read back by the next run


def test_patch_module_rejects_2d_and_bad_patches(blob_dataset):
    source = NiftiFolderSource(blob_dataset, num_classes=3)
    common = {"source": source, "class_names": ["background", "a", "b"], "split": {"train": 1}}
    with pytest.raises(ConfigError, match="data.spatial_dims=2 but this is a 3D data config"):
        PatchDataModule(**common, spatial_dims=2)
    with pytest.raises(ConfigError, match=r"data.patch_size must be \[Z, Y, X\]"):
        PatchDataModule(**common, patch_size=[32, 32])


# -- end to end --------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a 3D training run
def test_3d_phantom_run_writes_the_results_contract(phantom_dir, tmp_path):
    run_dir = tmp_path / "run3d"
    proc = cli("segbench.train", "debug=smoke", "data=phantom3d", "model=unet3d", "data.patch_size=[16,32,32]",
               "inference.overlap=0", "num_threads=1", f"paths.data_dir={phantom_dir}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run_dir / "results" / "per_case.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["convention"] == "default"]
    assert [r["organ"] for r in rows] == ORGANS and {r["case"] for r in rows} == {"0003"}
    for r in rows:
        assert 0.0 <= float(r["dsc"]) <= 1.0 and int(r["gt_voxels"]) > 0
    summary = json.loads((run_dir / "results" / "summary.json").read_text())
    assert list(summary["per_class"]) == ORGANS and summary["hd_unit"] == "mm"
    assert summary["config"]["data"]["spatial_dims"] == 3
    assert summary["config"]["inference"]["roi_size"] == [16, 32, 32]  # the window is the training patch
    assert json.loads((run_dir / "splits.json").read_text()) == {"train": ["0001"], "val": ["0002"],
                                                                 "test": ["0003"]}
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
