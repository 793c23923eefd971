"""Deep supervision, nnU-Net's regime (``model.deep_supervision``; :mod:`segbench.losses.deep_supervision`,
:mod:`segbench.models.deep_supervision`).

The hand case: ONE 8 x 8 image, 2 classes, class 1 on the odd rows, class 0 on the even ones::

    row 0   0 0 0 0 0 0 0 0
    row 1   1 1 1 1 1 1 1 1       nearest-exact keeps the centre voxel of each block, floor((i + 1/2) n_in / n_out):
    row 2   0 0 0 0 0 0 0 0         1/2 (4 x 4): rows and columns 1, 3, 5, 7 -> every voxel class 1
    ...                             1/4 (2 x 2): rows and columns 2, 6       -> every voxel class 0
    row 7   1 1 1 1 1 1 1 1       (torch's legacy "nearest" keeps 0, 2, 4, 6 and 0, 4: class 0 at both scales)

Logits ``(0, ln 3)`` at every voxel of every scale: ``s^1 = 3/4``, ``s^0 = 1/4``, so the CE of a scale whose
class-1 fraction is ``f`` is ``f ln(4/3) + (1 - f) ln 4 = ln 4 - f ln 3``:

    full (f = 1/2): ln 4 - ln 3 / 2     1/2 (f = 1): ln 4 - ln 3     1/4 (f = 0): ln 4

nnU-Net's weights for the paper U-Net's four decoder outputs: ``1, 1/2, 1/4, 0`` (the lowest 0), normalised by
``7/4``: ``4/7, 2/7, 1/7`` (and no head at 1/8). The loss:

    4/7 (ln 4 - ln 3 / 2) + 2/7 (ln 4 - ln 3) + 1/7 ln 4 = ln 4 - (2/7 + 2/7) ln 3 = ln 4 - 4/7 ln 3 = 0.758516
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from helpers import cli
from segbench.config import CONFIG_DIR
from segbench.errors import ConfigError, unwrap
from segbench.losses import DeepSupervisionLoss, available_losses, build_loss
from segbench.losses.deep_supervision import downsample_image, downsample_labels, nnunet_weights
from segbench.models.deep_supervision import SUPPORTED
from segbench.runtime.build import build

pytestmark = pytest.mark.usefixtures("one_thread")


def compose_run(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def odd_rows() -> torch.Tensor:
    """The hand case's ``[1, 8, 8]`` target: class 1 on rows 1, 3, 5, 7."""
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[:, 1::2] = 1
    return target


# -- the weights and the targets, by hand --------------------------------------------------------------------------
def test_weights_are_nnunets():
    # nnU-Net: 1 / 2**i per decoder output, the lowest set to 0, normalised to sum 1
    nnunet = [1.0, 0.5, 0.25, 0.0]
    nnunet = [w / sum(nnunet) for w in nnunet]                      # 4/7, 2/7, 1/7, 0
    assert nnunet_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert nnunet_weights(3) == pytest.approx(nnunet[:3])
    assert nnunet_weights(2) == pytest.approx([2 / 3, 1 / 3])        # unet3d (depth 4): 1, 1/2 of 1, 1/2, 1/4
    assert nnunet_weights(1) == [1.0]


def test_loss_is_the_weighted_sum_of_the_scales_by_hand():
    loss = DeepSupervisionLoss(build_loss("ce"), outputs=3)
    logits = [torch.stack([torch.zeros(n, n), torch.full((n, n), math.log(3.0))])[None] for n in (8, 4, 2)]
    expected = math.log(4) - 4 / 7 * math.log(3)                     # the module docstring: 0.758516
    assert loss(logits, odd_rows()).item() == pytest.approx(expected, rel=1e-6)
    # each scale's own (unweighted) CE is logged: ln 4 - f ln 3 with f = 1/2, 1, 0
    scales = {k: v.item() for k, v in loss.log_values().items()}
    assert scales == pytest.approx({"ds/scale0": math.log(4) - math.log(3) / 2, "ds/scale1": math.log(4) - math.log(3),
                                    "ds/scale2": math.log(4)}, rel=1e-6)


def test_targets_are_downsampled_as_written_by_hand():
    # 8 x 8 labels 0..3 in 2 x 2 blocks, block (r, c) holds (r + c) % 4 and its top-left voxel 9 (the odd one out)
    target = torch.tensor([[(r // 2 + c // 2) % 4 for c in range(8)] for r in range(8)])
    target[0::2, 0::2] = 9
    # 1/2: voxels (1, 3, 5, 7) x (1, 3, 5, 7): the bottom-right voxel of each block, never the 9
    assert downsample_labels(target[None], (4, 4))[0].tolist() == [[0, 1, 2, 3],
                                                                   [1, 2, 3, 0],
                                                                   [2, 3, 0, 1],
                                                                   [3, 0, 1, 2]]
    # 1/4: voxels (2, 6) x (2, 6): top-left voxels of blocks (1, 1), (1, 3), (3, 1), (3, 3), all 9
    assert downsample_labels(target[None], (2, 2))[0].tolist() == [[9, 9], [9, 9]]
    # UNETR++'s scales are anisotropic, 1 / (2, 4, 4): z keeps 1, 3 of 4 and y, x keep 2, 6 of 8
    volume = torch.arange(4 * 8 * 8).reshape(1, 4, 8, 8)
    small = downsample_labels(volume, (2, 2, 2))[0]
    assert small.tolist() == [[[1 * 64 + 2 * 8 + 2, 1 * 64 + 2 * 8 + 6], [1 * 64 + 6 * 8 + 2, 1 * 64 + 6 * 8 + 6]],
                              [[3 * 64 + 2 * 8 + 2, 3 * 64 + 2 * 8 + 6], [3 * 64 + 6 * 8 + 2, 3 * 64 + 6 * 8 + 6]]]
    assert small.dtype == volume.dtype
    # the image is averaged over each block: 2 x 2 blocks of 0, 1, 2, 3 -> 1.5
    image = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).repeat(4, 4)[None, None]
    assert torch.equal(downsample_image(image, (4, 4)), torch.full((1, 1, 4, 4), 1.5))


def test_any_loss_at_each_scale_is_the_loss_of_the_hand_downsampled_target():
    torch.manual_seed(0)
    target = odd_rows().repeat(2, 1, 1)
    target[1, :, 4:] = 2                                             # a second sample with a third class
    logits = [torch.randn(2, 3, n, n, requires_grad=True) for n in (8, 4, 2)]
    by_hand = [target,
               target[:, 1::2, 1::2],                                # rows / columns 1, 3, 5, 7
               target[:, 2::4, 2::4]]                                # rows / columns 2, 6
    for name in ("ce_dice", "afw_dice", "boundary", "dpce"):
        loss = build_loss(name, num_classes=3)
        expected = sum(w * loss(x, t) for w, x, t in zip((4 / 7, 2 / 7, 1 / 7), logits, by_hand))
        torch.testing.assert_close(DeepSupervisionLoss(loss, 3)(logits, target), expected)


def test_one_tensor_is_the_full_resolution_loss_alone():
    # validation and test pass the full-resolution logits only: the configured loss, unweighted
    torch.manual_seed(0)
    inner = build_loss("ce_dice")
    logits = torch.randn(2, 3, 8, 8)
    assert torch.equal(DeepSupervisionLoss(inner, 3)(logits, odd_rows().repeat(2, 1, 1)),
                       inner(logits, odd_rows().repeat(2, 1, 1)))


def test_precomputed_maps_serve_the_full_resolution_only():
    # the loader's maps are full-resolution maps: scale 0 reads them, the lower scales compute their own
    torch.manual_seed(0)
    loss = build_loss("boundary", num_classes=2)
    target = odd_rows()
    builder = loss.map_builder(2)
    maps = {key: value[None] for key, value in builder(target[0]).items()}
    logits = [torch.randn(1, 2, n, n) for n in (8, 4, 2)]
    wrapped = DeepSupervisionLoss(loss, 3)
    assert wrapped.map_builder(2) == builder
    torch.testing.assert_close(wrapped(logits, target, maps=maps), wrapped(logits, target))


# -- the networks ----------------------------------------------------------------------------------------------
#: per supporting model: a small config, the input and the output sizes under ``true``
NETWORKS = {
    "unet": (["data=phantom", "data.img_size=32", "model.width=2"], (32, 32), [(32, 32), (16, 16), (8, 8)]),
    "unetpp": (["data=phantom", "data.img_size=32", "model.width=2"], (32, 32), [(32, 32), (16, 16), (8, 8)]),
    "attention_unet": (["data=phantom", "data.img_size=32", "model.width=2"], (32, 32),
                       [(32, 32), (16, 16), (8, 8)]),
    "unet3d": (["data=phantom3d", "data.patch_size=[16,16,16]", "model.width=2"], (16, 16, 16),
               [(16, 16, 16), (8, 8, 8)]),
    # the authors' heads: 1 / (2, 4, 4) and 1 / (4, 8, 8)
    "unetr_pp": (["data=phantom3d", "data.patch_size=[16,32,32]", "model.width=4", "model.depths=[1,1,1,1]",
                  "model.decoder_depth=1", "model.num_heads=2", "model.proj_size=[8,8,8,4]",
                  "model.decoder_proj_size=8"], (16, 32, 32), [(16, 32, 32), (8, 8, 8), (4, 4, 4)]),
}


def test_every_supporting_model_is_tested():
    assert sorted(NETWORKS) == sorted(SUPPORTED)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_heads_in_training_and_the_full_resolution_alone_in_eval(name):
    overrides, shape, sizes = NETWORKS[name]
    torch.manual_seed(0)
    _, module = build(compose_run(f"model={name}", *overrides, "model.deep_supervision=true"))
    _, plain = build(compose_run(f"model={name}", *overrides))
    assert isinstance(module.loss_fn, DeepSupervisionLoss) and not isinstance(plain.loss_fn, DeepSupervisionLoss)
    # without deep supervision the network has no head: its parameters and checkpoints are as before
    assert not any("ds_heads" in key for key in plain.state_dict())
    x = torch.randn(2, 1, *shape)
    module.train()
    outputs = module(x)
    assert [tuple(o.shape[2:]) for o in outputs] == sizes and all(o.shape[:2] == (2, 9) for o in outputs)
    # eval mode: one tensor, the plain network's output with the same weights (the heads are not used)
    heads_only = plain.load_state_dict(module.state_dict(), strict=False).unexpected_keys
    assert heads_only and all(".ds_heads." in key for key in heads_only)
    module.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(module(x), plain(x))


@pytest.mark.parametrize("name", ["transunet", "unetr", "swin_unetr", "segresnet"])
def test_models_without_decoder_scales_refuse_it_in_one_line(name):
    with pytest.raises(Exception) as info:
        build(compose_run(f"model={name}", "model.deep_supervision=true"))
    error = unwrap(info.value)
    assert isinstance(error, ConfigError)
    assert str(error) == (f"model={name} has no deep supervision (model.deep_supervision=True); the models with it "
                          "are unet, unet3d, unetpp, attention_unet, unetr_pp; pass model.deep_supervision=false")


def test_a_number_of_heads_and_its_limits():
    _, module = build(compose_run("model=unet", "model.width=2", "data.img_size=32", "model.deep_supervision=3"))
    assert module.net.deep_supervision == 3 and module.loss_fn.weights == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    with pytest.raises(Exception) as info:
        build(compose_run("model=unet", "model.deep_supervision=4"))
    assert str(unwrap(info.value)) == ("model.deep_supervision=4 is not a choice for model=unet; pass false, true "
                                       "(nnU-Net's heads) or a number of heads from 1 to 3 (its lower decoder scales)")


# -- every registered loss, two steps in 2D ------------------------------------------------------------------------
@pytest.mark.parametrize("loss", available_losses())
def test_every_loss_trains_two_steps_with_finite_gradients_on_every_head(loss):
    torch.manual_seed(0)
    _, module = build(compose_run("model=unet", "model.width=2", "data=phantom", "data.img_size=32",
                                  "model.deep_supervision=true", f"loss={loss}"))
    heads = [module.net.head, *module.net.ds_heads]
    assert len(heads) == 3  # full resolution, 1/2, 1/4
    # the loss's own parameters (AFW-Dice's log sigma^2) reach the optimiser through the module, as without
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in module.loss_fn.parameters())
    image = torch.rand(2, 1, 32, 32)
    label = (image[:, 0] * 9).long().clamp(max=8)     # every class present, in intensity bands
    module.train()
    for step in range(2):
        outputs = module(image)
        value = module.loss_fn(outputs, label, image=image)  # read by level_set only
        assert torch.isfinite(value), f"{loss}: step {step} loss {value}"
        optimizer.zero_grad()
        value.backward()
        for k, head in enumerate(heads):
            for p in head.parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"{loss}: head {k} gradient"
                assert p.grad.abs().sum() > 0, f"{loss}: head {k} gets no gradient"
        for p in module.loss_fn.parameters():
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{loss}: loss parameter gradient"
        optimizer.step()
    logged = module.loss_fn.log_values()
    assert [key for key in logged if key.startswith("ds/")] == ["ds/scale0", "ds/scale1", "ds/scale2"]


# -- smoke runs -------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a training run per model: 18-27 s each on the shared 2-core CPU (unet 46 s with segbench-eval)
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_smoke_run_with_deep_supervision_writes_results(name, phantom_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = ["data=phantom3d", "data.patch_size=[16,32,32]"] if name in ("unet3d", "unetr_pp") else []
    run = tmp_path / "run"
    proc = cli("segbench.train", "debug=smoke", f"model={name}", *data, "model.deep_supervision=true",
               "num_threads=1", f"paths.data_dir={phantom_dir}", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "results" / "summary.json").read_text())
    assert summary["config"]["model"]["deep_supervision"] is True and len(summary["per_class"]) == 8
    assert (run / "results" / "per_case.csv").is_file()
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scales = sorted(tag for tag in events.Tags()["scalars"] if tag.startswith("loss/ds/"))
    assert scales == [f"loss/ds/scale{k}" for k in range(len(NETWORKS[name][2]))]
    if name == "unet":  # scored again from its checkpoint (heads included), the full-resolution output alone
        proc = cli("segbench.eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                   f"hydra.run.dir={tmp_path / 'eval'}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (tmp_path / "eval" / "results" / "per_case.csv").read_bytes() == \
            (run / "results" / "per_case.csv").read_bytes()
