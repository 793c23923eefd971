"""Nothing read back from a run directory or a checkpoint runs code: crafted configs and pickles are refused.

Every payload here would create a marker file if it ran; each test first shows that the payload is
live (run the unsafe way, it does create the marker) where that is cheap, then that segbench's way
refuses it in one line and leaves no marker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from helpers import cli
from segbench.errors import ConfigError
from segbench.runtime.checkpoint import CheckpointError, load_checkpoint
from segbench.runtime.trust import check_targets, checked_config


class Payload:
    """Unpickling this opens (creates) ``marker``: arbitrary code, as far as the test is concerned."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "callbacks": Payload(marker)}, path)
    return path


def crafted_run(tmp_path: Path, config: dict) -> Path:
    """A run directory as someone else could share it: a crafted .hydra/config.yaml and a checkpoint."""
    run = tmp_path / "shared_run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save({"state_dict": {}}, run / "checkpoints" / "last.ckpt")
    return run


def test_the_pickle_payload_is_live_and_weights_only_refuses_it(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = pickle_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(ckpt, weights_only=False)  # the unsafe way: the payload runs
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_segbench_eval_refuses_a_nested_torch_load_payload_in_a_shared_config(tmp_path):
    """The issue's exploit: a model option whose nested _target_ is torch.load(weights_only=False) of a pickle,
    reached through a segbench module's import of torch. The user sees one line naming the target."""
    marker = tmp_path / "pwned"
    payload = pickle_checkpoint(tmp_path / "payload.pt", marker)
    run = crafted_run(tmp_path, {
        "seed": 1, "data": {"_target_": "segbench.data.SegDataModule"},
        "model": {"_target_": "segbench.models.UNet",
                  "width": {"_target_": "segbench.module.torch.load", "f": str(payload), "weights_only": False}}})
    proc = cli("segbench.eval", f"ckpt_path={run}/checkpoints/last.ckpt", f"hydra.run.dir={tmp_path}/eval")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"segbench-eval: error: training config {run}/.hydra/config.yaml sets model.width._target_="
        "'segbench.module.torch.load': not a segbench, torch optimiser/scheduler or Lightning class, refused "
        "(a config read back from a run directory may not instantiate it); if the run used your own module, "
        "name it: trusted_modules=[<module>]"]
    assert not marker.exists()


@pytest.mark.parametrize("target", [
    "builtins.exec", "os.system", "subprocess.run", "torch.load", "segbench.metrics.results.os.system",
    "segbench.data.datamodule.DataLoader", "segbench.files.atomic_write_text", "segbench.no_such_thing",
    "pytorch_lightning.callbacks.os.system", "torch.optim.sgd.torch.load", "segbench.train.main",
])
def test_targets_outside_the_allowlist_are_refused_at_any_depth(target, tmp_path):
    marker = tmp_path / "pwned"
    config = {"model": {"_target_": "segbench.models.UNet",
                        "blocks": [{"norm": {"_target_": target, "_args_": [f"touch {marker}"]}}]}}
    with pytest.raises(ConfigError, match=rf"sets model\.blocks\.0\.norm\._target_='{target}'"):
        check_targets(config)
    assert not marker.exists()


def test_a_target_smuggled_through_an_interpolation_is_seen_after_resolution():
    cfg = OmegaConf.create({"model": "${oc.decode:'{_target_: os.system, _args_: [echo hi]}'}"})
    with pytest.raises(ConfigError, match=r"sets model\._target_='os.system'"):
        checked_config(cfg, source="the run's config")


def test_the_allowlist_admits_the_repository_configs_and_named_user_modules():
    check_targets({"model": {"_target_": "segbench.models.UNet"},
                   "data": {"_target_": "segbench.data.SegDataModule",
                            "source": {"_target_": "segbench.data.PhantomSource"}},
                   "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True},
                   "scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR"},
                   "callbacks": {"ckpt": {"_target_": "pytorch_lightning.callbacks.ModelCheckpoint"}},
                   "logger": {"tb": {"_target_": "pytorch_lightning.loggers.TensorBoardLogger"}},
                   "trainer": {"_target_": "pytorch_lightning.Trainer",
                               "strategy": {"_target_": "pytorch_lightning.strategies.DDPStrategy"}}})
    with pytest.raises(ConfigError, match="trusted_modules"):
        check_targets({"loss": {"_target_": "mylab.losses.MyLoss"}})
    check_targets({"loss": {"_target_": "mylab.losses.MyLoss"}}, trusted_modules=["mylab.losses"])
    with pytest.raises(ConfigError, match=r"trusted_modules=\['mylab.losses'\] does not cover it"):
        check_targets({"loss": {"_target_": "mylab.other.Thing"}}, trusted_modules=["mylab.losses"])


def test_the_repository_configs_pass_the_allowlist():
    """Every composed experiment of the repository is a config segbench-eval must accept back."""
    from hydra import compose, initialize_config_dir

    from segbench.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        for experiment in sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")):
            cfg = compose("train", overrides=[f"experiment={experiment}"])
            check_targets(OmegaConf.to_container(cfg, resolve=False))
        for model in sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")):
            check_targets(OmegaConf.to_container(compose("train", overrides=[f"model={model}"]), resolve=False))


def test_reports_and_the_run_index_instantiate_nothing(tmp_path):
    """segbench-table / the run index read a crafted run directory as data: the payload does not run."""
    from segbench.report.runs import load_run
    from segbench.runtime.rundir import read_status

    marker = tmp_path / "pwned"
    payload = pickle_checkpoint(tmp_path / "payload.pt", marker)
    run = crafted_run(tmp_path, {"model": {"_target_": "torch.load", "f": str(payload), "weights_only": False}})
    pickle_checkpoint(run / "checkpoints" / "last.ckpt", marker)
    (run / "results").mkdir()
    (run / "results" / "error.json").write_text('{"error": "x", "config": {"model": {"_target_": "os.system"}}}')
    (run / "run.json").write_text('{"status": "done", "config": {"x": {"_target_": "os.system"}}}')
    assert load_run(run).config["model"]["_target_"] == "torch.load"  # read as text, never called
    assert read_status(run)["status"] == "done"
    assert not marker.exists()


def test_a_forced_unsafe_torch_default_does_not_reopen_checkpoint_loading(tmp_path):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 flips torch's default only: segbench passes weights_only=True."""
    marker = tmp_path / "pwned"
    ckpt = pickle_checkpoint(tmp_path / "evil.ckpt", marker)
    code = ("import sys; from segbench.runtime.checkpoint import load_checkpoint, CheckpointError\n"
            "try:\n    load_checkpoint(sys.argv[1])\nexcept CheckpointError as e:\n    print('refused')")
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True,
                          env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}, timeout=120)
    assert proc.stdout.strip() == "refused", proc.stderr[-2000:]
    assert not marker.exists()
