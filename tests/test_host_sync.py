"""No host sync in the training step: counted during real training steps on the CPU.

On a GPU, every Python-level read of a device tensor's value (``.item()``, ``float(t)``,
``int(t)``, ``bool(t)`` / ``if t:``, ``.tolist()``, ``.cpu()``, ``.numpy()``) makes the host wait
until the GPU has finished all queued work, so the next step cannot be queued behind the
current one. On the CPU those calls are free but still visible: :func:`count_host_syncs`
replaces them on ``torch.Tensor`` with counting wrappers, and :func:`fit_counting` switches the
counting on only while ``training_step`` runs (Lightning's own loop may read values outside it,
every ``log_every_n_steps`` steps, to write the logs).
"""

from __future__ import annotations

import contextlib
import traceback
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from segbench.config import CONFIG_DIR
from segbench.losses import available_losses
from segbench.runtime.build import build

pytestmark = pytest.mark.usefixtures("one_thread")

#: the Tensor methods through which Python reads a tensor's value on the host
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
STEPS = 2


@contextlib.contextmanager
def count_host_syncs():
    """Within the block, every call of a :data:`SYNC_METHODS` method on any tensor is recorded
    (``(method, where it was called from)``) in the list it yields."""
    calls: list[tuple[str, str]] = []
    saved = {name: torch.Tensor.__dict__.get(name) for name in SYNC_METHODS}

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            calls.append((name, f"{Path(caller.filename).name}:{caller.lineno} {caller.line}"))
            return original(self, *args, **kwargs)
        return wrapper

    for name in SYNC_METHODS:
        setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    try:
        yield calls
    finally:
        for name, original in saved.items():
            if original is None:
                delattr(torch.Tensor, name)   # inherited from torch._C.TensorBase again
            else:
                setattr(torch.Tensor, name, original)


@pytest.fixture
def cuda_kernels(monkeypatch):
    """The distance transforms pick their kernels as for a CUDA tensor (the torch kernels, not scipy's
    host one, which must read a CPU tensor), so that the GPU's code path is what gets counted."""
    from segbench.ops import edt

    monkeypatch.setattr(edt, "_dispatch_device", lambda x: "cuda")


def compose_run(phantom_dir: Path, *overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["debug=smoke", f"paths.data_dir={phantom_dir}", *overrides])


def fit_counting(cfg, module_class=None) -> list[list[tuple[str, str]]]:
    """Fit :data:`STEPS` real training steps (the real data module and loader, augmentation on);
    returns the host reads made inside each ``training_step``."""
    pl.seed_everything(0, verbose=False)
    datamodule, module = build(cfg)
    if module_class is not None:
        module.__class__ = module_class
    per_step = []
    step = module.training_step

    def counted_step(*args, **kwargs):
        with count_host_syncs() as calls:
            out = step(*args, **kwargs)
        per_step.append(calls)
        return out

    module.training_step = counted_step
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1)
    trainer.fit(module, datamodule=datamodule)
    assert len(per_step) == STEPS
    return per_step


# -- the counter itself ------------------------------------------------------------------------------------
@pytest.mark.parametrize("read", [
    lambda t: t.item(), lambda t: t.tolist(), lambda t: t.cpu(), lambda t: t.numpy(), lambda t: float(t),
    lambda t: int(t), lambda t: bool(t), lambda t: "yes" if t > 0 else "no", lambda t: range(t),
])
def test_the_counter_sees_every_kind_of_host_read(read):
    t = torch.tensor(3)
    with count_host_syncs() as calls:
        read(t)
    assert len(calls) == 1, calls


def test_the_patches_are_undone():
    before = {name: torch.Tensor.__dict__.get(name) for name in SYNC_METHODS}
    with count_host_syncs():
        pass
    assert {name: torch.Tensor.__dict__.get(name) for name in SYNC_METHODS} == before


def test_a_step_that_reads_its_loss_is_caught(phantom_dir):
    """The test below can fail: a training step that logs ``loss.item()`` makes one host read a step."""
    from segbench.module import SegModule

    class ReadsItsLoss(SegModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train/loss_value", loss.item())
            return loss

    per_step = fit_counting(compose_run(phantom_dir, "loss=ce_dice"), ReadsItsLoss)
    assert [[name for name, _ in calls] for calls in per_step] == [["item"]] * STEPS


# -- every registered loss, 2D; the compound and AFW losses also in 3D ---------------------------------------
@pytest.mark.parametrize("loss", available_losses())
def test_training_step_makes_no_host_sync(loss, phantom_dir, cuda_kernels):
    per_step = fit_counting(compose_run(phantom_dir, f"loss={loss}"))
    assert per_step == [[]] * STEPS, f"loss={loss}: host reads in training_step: {per_step[0]}"


@pytest.mark.parametrize("loss", ["ce_dice", "afw_dice", "unified_focal", "boundary"])
def test_training_step_makes_no_host_sync_in_3d(loss, phantom_dir, cuda_kernels):
    per_step = fit_counting(compose_run(phantom_dir, f"loss={loss}", "data=phantom3d", "model=unet3d",
                                        "data.patch_size=[8,32,32]", "data.batch_size=2"))
    assert per_step == [[]] * STEPS, f"loss={loss} (3D): host reads in training_step: {per_step[0]}"


@pytest.mark.parametrize("extra", [["consistency.weight=0.1"], ["loss=afw_dice", "data.precompute_loss_maps=true"],
                                   ["loss=boundary", "data.precompute_loss_maps=true"],
                                   ["data.pipeline=device"],   # batches augmented in on_after_batch_transfer
                                   ["loss=boundary", "data.precompute_loss_maps=true", "data.pipeline=device"],
                                   ["data.pipeline=device", "data=phantom3d", "model=unet3d",
                                    "data.patch_size=[8,32,32]"]])
def test_training_step_options_make_no_host_sync(extra, phantom_dir, cuda_kernels):
    per_step = fit_counting(compose_run(phantom_dir, *extra))
    assert per_step == [[]] * STEPS, f"{extra}: host reads in training_step: {per_step[0]}"


# -- deep supervision: the loss at every scale, the targets / images / maps resampled on the device --------------
@pytest.mark.parametrize("extra", [["loss=ce_dice"], ["loss=afw_dice"], ["loss=hausdorff_dt"], ["loss=level_set"],
                                   ["loss=boundary", "data.precompute_loss_maps=true"],
                                   ["consistency.weight=0.1"],
                                   ["loss=dpce", "data=phantom3d", "model=unet3d", "data.patch_size=[8,32,32]"]])
def test_deep_supervision_adds_no_host_sync(extra, phantom_dir, cuda_kernels):
    per_step = fit_counting(compose_run(phantom_dir, "model.deep_supervision=true", *extra))
    assert per_step == [[]] * STEPS, f"{extra} with deep supervision: host reads in training_step: {per_step[0]}"


# -- on a GPU: PyTorch's own detector of synchronising CUDA calls (scripts/gpu_checks.sh runs this) -------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("loss", ["ce_dice", "afw_dice", "unified_focal", "boundary", "hausdorff_dt",
                                  "hausdorff_cv", "topk_ce", "afw_dice model.deep_supervision=true",
                                  "boundary model.deep_supervision=true"])
def test_training_step_makes_no_cuda_sync(loss, phantom_dir):
    """``torch.cuda.set_sync_debug_mode("warn")`` while ``training_step`` runs on the GPU, in bf16: every
    synchronising CUDA call (a read-back, ``nonzero``, a blocking copy) would warn."""
    import warnings

    pl.seed_everything(0, verbose=False)
    loss, *extra = loss.split()
    datamodule, module = build(compose_run(phantom_dir, f"loss={loss}", *extra, "trainer=gpu"))
    caught: list[list[str]] = []
    step = module.training_step

    def watched_step(*args, **kwargs):
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = step(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        caught.append([str(r.message).splitlines()[0] for r in records if "synchroniz" in str(r.message)])
        return out

    module.training_step = watched_step
    pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=STEPS, limit_val_batches=0,
               logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(module, datamodule=datamodule)
    assert caught == [[]] * STEPS, f"loss={loss}: synchronising CUDA calls in training_step: {caught[0]}"
