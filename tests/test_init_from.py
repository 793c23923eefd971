"""``init_from``: a run that starts from another run's network weights (two-stage training, e.g. Dice then the
boundary loss: ``experiment=two_stage_boundary``).

The fast tests build the network of a composed config in this process and load the session's smoke run into it
(:func:`segbench.runtime.init_from.load_initial_weights`, what ``segbench-train`` calls before ``fit``); the slow
one runs the recipe's second stage as a command and looks at the network, the optimiser and the counters at the
first training step, then interrupts and resumes it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from helpers import cli, script
from segbench.config import CONFIG_DIR
from segbench.errors import CheckpointError, ConfigError
from segbench.runtime.build import build
from segbench.runtime.init_from import check_init_from, load_initial_weights, resolve

pytestmark = pytest.mark.usefixtures("one_thread")

ORGANS = ["spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


def compose_run(phantom_dir: Path, *overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["debug=smoke", f"paths.data_dir={phantom_dir}", *overrides])


def net_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """The network's tensors of a checkpoint, by the network's own keys."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}


def built(phantom_dir: Path, *overrides: str):
    pl.seed_everything(0, verbose=False)
    cfg = compose_run(phantom_dir, *overrides)
    return cfg, build(cfg)[1]


def test_the_network_starts_with_exactly_the_checkpoints_weights(smoke_run, phantom_dir):
    last = smoke_run / "checkpoints" / "last.ckpt"
    cfg, module = built(phantom_dir, f"init_from={last}")
    initial = {k: v.clone() for k, v in module.net.state_dict().items()}
    line = load_initial_weights(resolve(cfg.init_from), module, cfg)
    theirs, ours = net_tensors(last), module.net.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:  # tensor by tensor, bit for bit
        assert torch.equal(ours[key], theirs[key]), key
    assert not all(torch.equal(initial[k], ours[k]) for k in ours)  # not the random initialisation any more
    epoch = torch.load(last, weights_only=True)["epoch"]
    assert line == (f"init_from {last}: loaded {len(theirs)} tensors of UNet (width 4) with 9 classes (epoch {epoch}, "
                    "step 3); optimiser, schedule and epoch start fresh")


def test_a_run_directory_resolves_to_the_checkpoint_its_test_split_scored(smoke_run):
    tested = json.loads((smoke_run / "results" / "summary.json").read_text())["run"]["checkpoint"]
    assert tested and resolve(smoke_run) == smoke_run / "checkpoints" / Path(tested).name


@pytest.mark.parametrize("overrides, expected", [
    (["model.width=8"], "its model is UNet (width 4) with 9 classes, this run builds UNet (width 8) with 9 classes "
                        "(99 of another shape, e.g. net.encoders.0.0.weight (4, 1, 3, 3) vs (8, 1, 3, 3)); init_from "
                        "takes a run of this model, width and class list (or give this run that run's model= and "
                        "data=)"),
    (["model=attention_unet"], "its model is UNet (width 4) with 9 classes, this run builds AttentionUNet (width 4) "
                               "with 9 classes (196 weight(s) missing, e.g. net.net.model.0.conv.0.conv.weight; 118 "
                               "unknown weight(s), e.g. net.encoders.0.0.weight)"),
    (["data.num_classes=8", f"data.class_names=[background,{','.join(ORGANS[:-1])}]"],
     "its model is UNet (width 4) with 9 classes, this run builds UNet (width 4) with 8 classes (2 of another shape, "
     "e.g. net.head.weight (9, 4, 1, 1) vs (8, 4, 1, 1))"),
    ([f"data.class_names=[background,{','.join(reversed(ORGANS))}]"],
     f"its classes are {['background', *ORGANS]}, this run's are {['background', *reversed(ORGANS)]}: its output "
     "channels would stand for other organs"),
], ids=["width", "model", "class count", "class order"])
def test_another_model_width_or_class_list_is_refused_in_one_line(smoke_run, phantom_dir, overrides, expected):
    last = smoke_run / "checkpoints" / "last.ckpt"
    cfg, module = built(phantom_dir, f"init_from={last}", *overrides)
    initial = {k: v.clone() for k, v in module.net.state_dict().items()}
    with pytest.raises(CheckpointError) as caught:
        load_initial_weights(resolve(cfg.init_from), module, cfg)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"init_from {last}: ") and expected in message, message
    assert all(torch.equal(initial[k], v) for k, v in module.net.state_dict().items())  # nothing half-loaded


def test_the_losss_own_parameters_are_not_carried(smoke_run, phantom_dir, tmp_path):
    """AFW-Dice's learnable class weights belong to the other run's loss: the new run's loss starts with its own."""
    checkpoint = torch.load(smoke_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["state_dict"]["loss_fn.log_sigma2"] = torch.full((9,), 3.0)
    torch.save(checkpoint, tmp_path / "afw.ckpt")
    cfg, module = built(phantom_dir, f"init_from={tmp_path / 'afw.ckpt'}", "loss=afw_dice")
    before = module.loss_fn.state_dict()["log_sigma2"].clone()
    line = load_initial_weights(resolve(cfg.init_from), module, cfg)
    assert line.endswith("; optimiser, schedule and epoch start fresh; its loss_fn.* tensors are not carried"), line
    assert torch.equal(module.loss_fn.state_dict()["log_sigma2"], before)


class Payload:
    def __reduce__(self):
        return (open, ("/tmp/segbench_init_from_pwned", "w"))


def test_bad_init_from_values_are_one_line(smoke_run, phantom_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"^init_from=.*/nowhere not found; pass init_from=<a run directory"):
        resolve(tmp_path / "nowhere")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match=r"^init_from=.*/folder: .*/folder is not a training run directory"):
        resolve(tmp_path / "folder")
    cfg, module = built(phantom_dir)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "plain.pt")
    torch.save({"state_dict": {}, "x": Payload()}, tmp_path / "payload.ckpt")
    torch.save({"state_dict": {"loss_fn.w": torch.zeros(2)}}, tmp_path / "no_net.ckpt")
    for name, expected in (("notes.txt", r"is corrupt or truncated .*; delete it or point init_from at another"),
                           ("plain.pt", r"is not a Lightning checkpoint \(no state_dict\)"),
                           ("payload.ckpt", r"holds objects that are not plain tensors and numbers; refused"),
                           ("no_net.ckpt", r"holds no network weights \(no net\.\* tensors")):
        with pytest.raises(CheckpointError) as caught:
            load_initial_weights(resolve(tmp_path / name), module, cfg)
        assert "\n" not in str(caught.value) and caught.match(expected), str(caught.value)
    assert not Path("/tmp/segbench_init_from_pwned").exists()
    with pytest.raises(ConfigError, match=r"^init_from=a and ckpt_path=b are both set: .*; pass one of them$"):
        check_init_from(compose_run(phantom_dir, "init_from=a", "ckpt_path=b"))


def test_run_directories_written_before_init_from_and_postprocess_resume_unchanged(phantom_dir):
    """A run directory of an older segbench lacks the new keys; under their defaults it is the same config."""
    from segbench.runtime.rundir import comparable_config, config_changes, with_added_defaults

    new = comparable_config(compose_run(phantom_dir))
    old = {k: v for k, v in new.items() if k != "init_from"}
    old["test"] = {k: v for k, v in new["test"].items() if k != "postprocess"}
    assert config_changes(with_added_defaults(old, new), new) == []
    other = comparable_config(compose_run(phantom_dir, "init_from=x"))
    assert config_changes(with_added_defaults(old, other), other) == ["init_from: None -> x"]


# -- the recipe's second stage, as a command -------------------------------------------------------------------
RECORDING = '''
"""segbench-train that records, at the first training step, the network's tensors, the optimiser's state and the
loop counters, and the boundary loss's alpha at each epoch's first batch (into SEGBENCH_RECORD)."""
import json, os, sys
import pytorch_lightning as pl
import torch
import segbench.runtime.build as build
import segbench.train as train

RECORD = os.environ["SEGBENCH_RECORD"]


class Record(pl.Callback):
    alphas = []

    def on_train_start(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}, RECORD + ".pt")
        optimizer = trainer.optimizers[0]
        self.start = {"epoch": trainer.current_epoch, "global_step": trainer.global_step,
                      "optimizer_state": len(optimizer.state), "lr": optimizer.param_groups[0]["lr"]}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.alphas.append([trainer.current_epoch, pl_module.loss_fn.alpha])

    def on_train_end(self, trainer, pl_module):
        with open(RECORD + ".json", "w") as fh:
            json.dump({**self.start, "alphas": self.alphas}, fh)


build_trainer = build.build_trainer


def build_trainer_that_records(cfg, output_dir):
    trainer = build_trainer(cfg, output_dir)
    trainer.callbacks.append(Record())
    return trainer


build.build_trainer = build_trainer_that_records  # segbench.runtime.task.run looks it up there at each run
sys.argv[0] = "segbench-train"
train.main()
'''


@pytest.mark.slow  # trains a 2-epoch smoke run, then resumes it (43 s on a loaded 2-core CPU)
def test_stage_two_starts_from_stage_ones_weights_with_a_fresh_optimiser_and_epoch_and_resumes_its_own(
        smoke_run, phantom_dir, tmp_path):
    source = tmp_path / "stage1.ckpt"  # a copy of the smoke run's last.ckpt, deleted before the resume below
    shutil.copy(smoke_run / "checkpoints" / "last.ckpt", source)
    stage2 = tmp_path / "stage2"
    recorder = tmp_path / "recording_train.py"
    recorder.write_text(RECORDING)
    args = ["experiment=two_stage_boundary", "debug=smoke", "num_threads=1", f"paths.data_dir={phantom_dir}",
            f"init_from={source}", "trainer.max_epochs=2", f"hydra.run.dir={stage2}"]
    proc = script(recorder, *args, env={**os.environ, "SEGBENCH_RECORD": str(tmp_path / "record")})
    assert proc.returncode == 0, proc.stderr[-3000:]

    theirs = net_tensors(source)
    started = torch.load(tmp_path / "record.pt", weights_only=True)
    assert started.keys() == theirs.keys()
    assert all(torch.equal(started[k], theirs[k]) for k in theirs)  # stage 1's weights, tensor by tensor
    record = json.loads((tmp_path / "record.json").read_text())
    # a fresh optimiser (no momentum buffers), learning rate and counters: stage 1 had trained 3 steps at lr 0.03
    assert (record["epoch"], record["global_step"], record["optimizer_state"]) == (0, 0, 0)
    assert record["lr"] == pytest.approx(0.01)
    assert record["alphas"] == [[0, pytest.approx(0.01)], [1, pytest.approx(0.02)]]  # the schedule from its start
    last = torch.load(stage2 / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 6)  # both epochs of 3 batches trained
    lines = [line for line in proc.stdout.splitlines() if line.startswith("init_from ")]
    assert lines == [f"init_from {source}: loaded {len(theirs)} tensors of UNet (width 4) with 9 classes (epoch 0, "
                     "step 3); optimiser, schedule and epoch start fresh"]
    assert lines[0] in (stage2 / "train.log").read_text()
    assert json.loads((stage2 / "run.json").read_text())["init_from"] == str(source)
    summary = json.loads((stage2 / "results" / "summary.json").read_text())
    assert summary["run"]["init_from"] == str(source) and summary["config"]["loss"]["name"] == "boundary"

    # cut short (no results yet) and run again: it resumes its own last.ckpt; stage 1's file is not read again
    (stage2 / "results" / "summary.json").unlink()
    source.unlink()
    proc = cli("segbench.train", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {stage2 / 'checkpoints' / 'last.ckpt'} (the run started from init_from={source}" \
        in proc.stdout
    assert not any(line.startswith("init_from ") for line in proc.stdout.splitlines())
    assert json.loads((stage2 / "results" / "summary.json").read_text())["run"]["init_from"] == str(source)
