"""Target-only distance maps: the loss step and the data loader compute the same maps, and the
loss uses the loader's when it gets them (segbench.losses.maps, data.precompute_loss_maps)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy import ndimage

from helpers import cli
from segbench.data import NiftiFolderSource, SegDataModule
from segbench.data.datamodule3d import PatchDataModule
from segbench.errors import ConfigError
from segbench.losses import LossInputs, available_losses, build_loss
from segbench.losses.maps import TargetMap, TargetMapBuilder

pytestmark = pytest.mark.usefixtures("one_thread")

MAP_LOSSES = ["boundary", "hausdorff_dt", "dpce"]


def blobs(batch: int, num_classes: int, spatial: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A label map with one ball per foreground class per sample (some classes left out)."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.arange(n) for n in spatial], indexing="ij")
    target = torch.zeros(batch, *spatial, dtype=torch.long)
    for b in range(batch):
        for c in range(1, num_classes):
            if b % 2 and c == 1:
                continue  # class 1 absent from odd samples
            centre = [int(torch.randint(2, n - 2, (1,), generator=g)) for n in spatial]
            radius = 1 + c % 3
            inside = sum((x - m) ** 2 for x, m in zip(grids, centre)) <= radius ** 2
            target[b][inside] = c
    return target


def loader_maps(loss, target: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """What the training loader hands the loss: the builder per sample, stacked as collate does."""
    builder = loss.map_builder(num_classes)
    samples = [builder(label) for label in target]
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def test_keys_name_kind_classes_and_unit():
    assert TargetMap("signed").key == "signed[1:]@voxel"
    assert TargetMap("unsigned", include_background=True, spacing=(3.0, 0.75)).key == "unsigned[0:]@3x0.75"
    assert TargetMap("penalty", spacing=(2.0, 1.0, 1.0)).key == "penalty@2x1x1"
    with pytest.raises(ValueError, match="kind"):
        TargetMap("chamfer")


def test_which_losses_use_target_maps():
    uses = {name for name in available_losses() if build_loss(name, num_classes=4).target_maps()}
    assert uses == set(MAP_LOSSES)
    assert build_loss("ce_dice", num_classes=4).map_builder(4) is None
    # a compound loss lists its terms' maps once; boundary with an HD-DT region loss needs both kinds
    nested = build_loss("boundary", num_classes=4, region="hausdorff_dt")
    assert [m.key for m in nested.target_maps()] == ["unsigned[1:]@voxel", "signed[1:]@voxel"]


@pytest.mark.parametrize("spatial", [(40, 48), (12, 20, 24)], ids=["2d", "3d"])
@pytest.mark.parametrize("name", MAP_LOSSES)
def test_loader_maps_give_the_same_value_and_gradient(name, spatial):
    num_classes = 4
    target = blobs(3, num_classes, spatial)
    logits = torch.randn(3, num_classes, *spatial, generator=torch.Generator().manual_seed(1))
    loss = build_loss(name, num_classes=num_classes)
    here = logits.clone().requires_grad_(True)
    value_here = loss(here, target)
    value_here.backward()
    there = logits.clone().requires_grad_(True)
    value_there = loss(there, target, maps=loader_maps(loss, target, num_classes))
    value_there.backward()
    assert torch.equal(value_here, value_there)
    assert torch.equal(here.grad, there.grad)


def test_the_given_map_is_the_one_used():
    # boundary term L_B = mean(phi * s[:, 1:]): shifting every phi by +1 raises L_B by exactly
    # mean(s[:, 1:]) - proof that the loss reads the map it is handed instead of recomputing it
    target = blobs(2, 3, (24, 24))
    logits = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    term = build_loss("boundary", num_classes=3).terms["boundary"]
    maps = loader_maps(term, target, 3)
    key = "signed[1:]@voxel"
    base = term(logits, target, maps=maps)
    shifted = term(logits, target, maps={key: maps[key] + 1.0})
    expected = torch.softmax(logits, 1)[:, 1:].mean()
    assert torch.allclose(shifted - base, expected, atol=1e-6)


def test_signed_map_matches_scipy_by_hand():
    # phi = edt(~G) outside G, -(edt(G) - 1) inside: a 3-pixel bar in a 1 x 7 line
    label = torch.tensor([[0, 0, 1, 1, 1, 0, 0]])
    phi = TargetMapBuilder((TargetMap("signed"),), num_classes=2)(label)["signed[1:]@voxel"]
    assert phi.shape == (1, 1, 7)
    assert phi[0, 0].tolist() == [2.0, 1.0, 0.0, -1.0, 0.0, 1.0, 2.0]
    # and on a 2D blob against scipy directly
    target = blobs(1, 2, (30, 30))[0]
    g = (target == 1).numpy()
    reference = ndimage.distance_transform_edt(~g) * ~g - (ndimage.distance_transform_edt(g) - 1) * g
    phi = TargetMapBuilder((TargetMap("signed"),), num_classes=2)(target)["signed[1:]@voxel"][0]
    np.testing.assert_allclose(phi.numpy(), reference, atol=1e-6)


def test_ignored_voxels_are_treated_as_in_the_loss_step():
    target = blobs(1, 3, (20, 20))
    target[0, :3] = 255
    spec = TargetMap("unsigned", include_background=True)
    inputs = LossInputs(torch.zeros(1, 3, 20, 20), target, ignore_index=255)
    from_step = inputs.target_map(spec)
    from_loader = TargetMapBuilder((spec,), num_classes=3, ignore_index=255)(target[0])[spec.key]
    assert torch.equal(from_step[0], from_loader)


def test_a_map_of_the_wrong_shape_or_labels_fails_with_its_name():
    target = blobs(2, 3, (16, 16))
    loss = build_loss("boundary", num_classes=3)
    with pytest.raises(ValueError, match=r"maps\['signed\[1:\]@voxel'\] has shape \(2, 1, 16, 16\)"):
        loss(torch.randn(2, 3, 16, 16), target, maps={"signed[1:]@voxel": torch.zeros(2, 1, 16, 16)})
    with pytest.raises(ValueError, match="label ids must be in \\[0, 2\\]"):
        loss.map_builder(3)(torch.full((4, 4), 7))


def test_builder_survives_pickling_for_loader_workers():
    builder = build_loss("hausdorff_dt", num_classes=3, spacing=[2.0, 1.0]).map_builder(3)
    clone = pickle.loads(pickle.dumps(builder))
    assert clone == builder
    label = blobs(1, 3, (16, 16))[0]
    assert torch.equal(clone(label)["unsigned[1:]@2x1"], builder(label)["unsigned[1:]@2x1"])


# -- the data modules -------------------------------------------------------------------------------------------
def _batch_and_check(dm, loss, num_classes):
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["maps"]) == {m.key for m in loss.target_maps()}
    expected = loader_maps(loss, batch["label"], num_classes)
    for key, value in batch["maps"].items():
        assert torch.equal(value, expected[key])  # maps of the augmented / cropped label the loss sees
    logits = torch.randn(len(batch["label"]), num_classes, *batch["label"].shape[1:])
    assert torch.equal(loss(logits, batch["label"], maps=batch["maps"]), loss(logits, batch["label"]))


def test_slice_loader_yields_the_maps_after_augmentation(blob_dataset):
    loss = build_loss("boundary", num_classes=3)
    dm = SegDataModule(source=NiftiFolderSource(blob_dataset, num_classes=3), class_names=["background", "a", "b"],
                       split={"train": 2, "val": 1, "test": 1}, img_size=32, batch_size=4,
                       augment={"flip_prob": 0.5, "rotate_prob": 1.0, "rotate_range_deg": 30},
                       precompute_loss_maps=True)
    dm.loss_maps = loss.map_builder(3)
    _batch_and_check(dm, loss, 3)


def test_patch_loader_yields_the_maps_of_the_patch(blob_dataset):
    loss = build_loss("hausdorff_dt", num_classes=3)
    dm = PatchDataModule(source=NiftiFolderSource(blob_dataset, num_classes=3), class_names=["background", "a", "b"],
                         split={"train": 2, "val": 1, "test": 1}, patch_size=[8, 16, 16], samples_per_volume=2,
                         batch_size=2, augment={"flip_prob": 0.5}, precompute_loss_maps=True)
    dm.loss_maps = loss.map_builder(3)
    _batch_and_check(dm, loss, 3)


def test_the_option_must_be_a_boolean(blob_dataset):
    with pytest.raises(ConfigError, match="data.precompute_loss_maps must be true or false"):
        SegDataModule(source=NiftiFolderSource(blob_dataset, num_classes=3), class_names=["background", "a", "b"],
                      split={"train": 2, "val": 1, "test": 1}, precompute_loss_maps="yes")


@pytest.mark.slow  # a training run with a loader worker
def test_training_with_loader_maps_runs_end_to_end(phantom_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = cli("segbench.train", "debug=smoke", "loss=boundary", "data.precompute_loss_maps=true",
               "data.num_workers=1", f"paths.data_dir={phantom_dir}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training loader precomputes the loss's maps: signed[1:]@voxel" in proc.stdout
    assert (run_dir / "results" / "summary.json").is_file()


@pytest.mark.parametrize("name", MAP_LOSSES)
def test_a_spacing_of_the_wrong_length_names_the_option(name):
    loss = build_loss(name, num_classes=3, spacing=[3.0, 1.0, 1.0])  # a 3D spacing on 2D inputs
    with pytest.raises(ValueError, match="spacing has 3 entries but the inputs have 2 spatial dims"):
        loss(torch.randn(2, 3, 16, 16), blobs(2, 3, (16, 16)))
