"""Data pipeline: reading NIfTI, HU window, slicing / resizing, splits and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import blob_case, write_case
from segbench.data import NiftiFolderSource, SegDataModule, resize_slices, window_hu
from segbench.data.volume import CaseRef, load_nifti_case
from segbench.errors import DataError

NAMES = ["background", "a", "b"]


def make_dm(root, **kw):
    args = dict(source=NiftiFolderSource(root, num_classes=3), class_names=NAMES,
                split={"train": 2, "val": 1, "test": 1}, img_size=32, batch_size=4, augment={})
    args.update(kw)
    return SegDataModule(**args)


def test_nifti_roundtrip_keeps_axis_order_and_spacing(tmp_path):
    image, label = blob_case(0, shape=(7, 40, 50))
    write_case(tmp_path, "0001", image, label, spacing=(3.0, 0.7, 0.9))
    vol = load_nifti_case(CaseRef("0001", tmp_path / "img/img0001.nii.gz", tmp_path / "label/label0001.nii.gz"),
                          num_classes=3)
    assert vol.image.shape == (7, 40, 50)            # (Z, Y, X)
    assert vol.spacing == pytest.approx((3.0, 0.7, 0.9))  # (sz, sy, sx), array-axis order
    np.testing.assert_array_equal(vol.label, label)
    np.testing.assert_array_equal(vol.image, image.astype(np.float32))


def test_hu_window_maps_to_unit_interval():
    hu = np.array([-1000, -125, 75, 275, 1000], np.float32)
    # (clip(hu, -125, 275) + 125) / 400: -125 -> 0, 75 -> 200/400 = 0.5, 275 -> 1
    np.testing.assert_allclose(window_hu(hu, (-125, 275)), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(window_hu(hu, (50, 350)), [0, 0, 25 / 300, 225 / 300, 1])


def test_resize_keeps_label_ids_and_range():
    _, label = blob_case(3, shape=(4, 64, 64))
    small = resize_slices(label, 32, is_label=True)
    assert small.shape == (4, 32, 32) and small.dtype == np.uint8
    assert set(np.unique(small)) <= set(np.unique(label))
    img = resize_slices(np.random.default_rng(0).random((4, 64, 64), dtype=np.float32), 48, is_label=False)
    assert img.shape == (4, 48, 48) and img.min() >= 0 and img.max() <= 1


def test_datamodule_slices_and_batches(blob_dataset):
    dm = make_dm(blob_dataset)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.splits == {"train": ["0001", "0002"], "val": ["0003"], "test": ["0004"]}
    assert len(dm.train_set) == 2 * 12  # 2 cases x 12 axial slices
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["label"].shape == (4, 32, 32)
    assert batch["label"].dtype == torch.long
    dm.setup("test")
    item = dm.test_dataloader().dataset[0]
    assert item["image"].shape == (12, 1, 32, 32) and item["label"].shape == (12, 64, 64)
    assert item["case_id"] == "0004"


def test_augmentation_moves_image_and_label_together(blob_dataset):
    dm = make_dm(blob_dataset, augment={"flip_prob": 1.0, "rotate_prob": 1.0, "rotate_range_deg": 30})
    dm.setup("fit")
    torch.manual_seed(0)
    sample = dm.train_set[5]
    # the image encodes the label (class k at 100k HU -> window (100k+125)/400), so after any joint
    # flip/rotation, foreground pixels of the label still sit on bright pixels
    fg = sample["label"] > 0
    assert fg.any()
    assert sample["image"][0][fg].mean() > 0.5 > sample["image"][0][~fg].mean()


def test_predict_volume_resizes_back_to_native(blob_dataset):
    from segbench.module import SegModule

    class Threshold(torch.nn.Module):
        # logits from intensity: class k where the windowed image is near (100k + 125) / 400
        def forward(self, x):
            centres = torch.tensor([0.0, 225 / 400, 325 / 400]).view(1, 3, 1, 1)
            return -((x - centres) ** 2) * 1e3

    module = SegModule(Threshold(), {"name": "ce"}, torch.optim.SGD, {"name": "none"}, NAMES)
    dm = make_dm(blob_dataset)
    dm.setup("test")
    item = dm.test_dataloader().dataset[0]
    pred = module.predict_volume(item["image"], item["native_shape"][1:])
    gt = item["label"]   # a NumPy array: the test label stays on the host, where it is scored
    assert pred.shape == gt.shape == (12, 64, 64)
    dice = {k: 2 * ((pred == k) & (gt == k)).sum() / ((pred == k).sum() + (gt == k).sum()) for k in (1, 2)}
    # class 2 (the brightest) survives 64 -> 32 -> 64 almost exactly, so the resize back is aligned;
    # class 1 also collects the blurred rim of class 2 (intermediate intensities), hence the lower bound
    assert dice[2] > 0.9 and dice[1] > 0.75


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        NiftiFolderSource(tmp_path / "nowhere", num_classes=3).cases()


def test_label_ids_out_of_range(tmp_path):
    image, label = blob_case(1)
    label[0, 0, 0] = 7
    write_case(tmp_path, "0001", image, label)
    src = NiftiFolderSource(tmp_path, num_classes=3)
    with pytest.raises(DataError, match=r"label id\(s\) \[7\] outside 0..2"):
        src.load(src.cases()[0])


def test_label_map_applies_before_range_check(tmp_path):
    image, label = blob_case(1)
    write_case(tmp_path, "0001", image, np.where(label == 2, 11, label))  # BTCV pancreas id 11
    src = NiftiFolderSource(tmp_path, num_classes=3, label_map={1: 1, 11: 2})
    np.testing.assert_array_equal(src.load(src.cases()[0]).label, label)


def test_shape_and_affine_mismatch(tmp_path):
    image, label = blob_case(1)
    write_case(tmp_path, "0001", image, label[:, :-1])
    write_case(tmp_path, "0002", image, label, label_affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    src = NiftiFolderSource(tmp_path, num_classes=3)
    refs = src.cases()
    with pytest.raises(DataError, match="label0001.nii.gz has shape"):
        src.load(refs[0])
    with pytest.raises(DataError, match="different affines"):
        src.load(refs[1])


def test_truncated_file(tmp_path):
    image, label = blob_case(1)
    write_case(tmp_path, "0001", image, label)
    path = tmp_path / "img/img0001.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    src = NiftiFolderSource(tmp_path, num_classes=3)
    with pytest.raises(DataError, match="img0001.nii.gz.*corrupt or truncated"):
        src.load(src.cases()[0])


def test_split_errors(blob_dataset):
    with pytest.raises(DataError, match="lower the split counts"):
        make_dm(blob_dataset, split={"train": 3, "val": 1, "test": 3}).setup("fit")
    with pytest.raises(DataError, match="data.split.train is empty"):
        make_dm(blob_dataset, split={"train": 0, "val": 1, "test": 1}).setup("fit")
    with pytest.raises(DataError, match="not in the dataset"):
        make_dm(blob_dataset, split={"train": ["0001"], "val": [], "test": ["0042"]}).setup("fit")


def test_3d_on_a_2d_data_config_points_to_the_3d_configs(blob_dataset):
    from segbench.errors import ConfigError

    with pytest.raises(ConfigError, match="use data=phantom3d or data=abdomenct1k3d instead of data=phantom"):
        make_dm(blob_dataset, spatial_dims=3, name="phantom")


@pytest.mark.parametrize("dims", [2, 3])
def test_augmentation_runs_untracked_and_equals_monai_compose_bit_for_bit(dims):
    """The training transforms run with MONAI's MetaTensor tracking off (the speed-up of UntrackedCompose): the
    same random states must give exactly what MONAI's own Compose gives, as plain tensors, and leave MONAI's
    global tracking flag as it was."""
    from monai.data import MetaTensor, get_track_meta
    from monai.transforms import Compose

    from segbench.data.datamodule import build_augmentation
    from segbench.data.datamodule3d import crop_transform

    aug = {"flip_prob": 0.5, "rotate_prob": 0.5, "rotate_range_deg": 30}
    rng = np.random.default_rng(dims)
    shape = (1, 24, 24) if dims == 2 else (1, 10, 20, 20)
    samples = [{"image": torch.from_numpy(rng.random(shape, dtype=np.float32)),
                "label": torch.from_numpy(rng.integers(0, 4, shape).astype(np.float32))} for _ in range(24)]
    fast = build_augmentation(aug, spatial_dims=dims)
    pipelines = [fast] + ([crop_transform((8, 12, 12), 0.7)] if dims == 3 else [])
    for ours in pipelines:
        reference = Compose(list(ours.transforms))   # the same transform objects, MONAI's tracking on
        outputs = {}
        for name, pipeline in (("ours", ours), ("monai", reference)):
            pipeline.set_random_state(seed=7)
            outputs[name] = [pipeline(dict(s)) for s in samples]
        assert get_track_meta()   # restored after every call
        for a, b in zip(outputs["ours"], outputs["monai"]):
            a, b = (a[0], b[0]) if isinstance(a, list) else (a, b)   # the crop returns a list of one patch
            for key in ("image", "label"):
                assert type(a[key]) is torch.Tensor and isinstance(b[key], MetaTensor)
                assert torch.equal(a[key], b[key].as_tensor())
        if ours is fast:   # the random draws were made: some samples were flipped or rotated, some not
            changed = [not torch.equal(o["image"], s["image"]) for o, s in zip(outputs["ours"], samples)]
            assert any(changed) and not all(changed)
