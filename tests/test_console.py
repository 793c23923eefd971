"""What a run prints and leaves: a readable redirected log, no known third-party noise, the results table in
the log file, one checkpoint callback that keeps last.ckpt current, segbench-eval's one-line errors without
an empty run folder, and debug=smoke for every model."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from helpers import cli
from segbench.config import CONFIG_DIR
from segbench.models import MODELS


def test_a_redirected_run_prints_one_line_per_epoch_and_logs_its_results(phantom_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = cli("segbench.train", "debug=smoke", "num_threads=1", "trainer.max_epochs=2",
               f"paths.data_dir={phantom_dir}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "\r" not in console  # no carriage-return progress bars
    epochs = [line for line in proc.stdout.splitlines() if "[segbench][INFO] - epoch " in line]
    assert [line.split(" - ")[1].split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert "train/loss " in epochs[0] and "val/dice " in epochs[0]
    for noise in ("litlogger", "litmodels", "LeafSpec", "multiple `ModelCheckpoint`", "srun"):
        assert noise not in console, noise
    # the results table, verbatim, in the run's log file as on the console
    table = proc.stdout[proc.stdout.index("convention: default"):].strip()
    assert "mean " in table and table.endswith(f"results: {run_dir / 'results'}")
    assert table in (run_dir / "train.log").read_text()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "last.ckpt"



def test_one_checkpoint_callback_rewrites_last_every_epoch(tmp_path):
    import pytorch_lightning as pl

    from segbench.runtime.callbacks import BestAndLastCheckpoint
    from segbench.runtime.console import quiet_third_party

    quiet_third_party()  # as segbench-train does: no LeafSpec FutureWarning from inside Lightning

    class Model(pl.LightningModule):
        """val/dice falls every epoch (1, 0.5, 0.33): the best stays epoch 0."""

        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val/dice", 1.0 / (self.current_epoch + 1))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.DataLoader(torch.ones(4, 2), batch_size=2)
    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, filename="best-{epoch}", monitor="val/dice", mode="max",
                                       save_top_k=1, save_last=True, enable_version_counter=False,
                                       last_every_n_train_steps=None)
    trainer = pl.Trainer(max_epochs=3, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(Model(), data, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-epoch=0.ckpt", "last.ckpt"]
    # Lightning's own save_last would have left last.ckpt at epoch 0, the last improvement
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 2
    with pytest.raises(ValueError, match="last_every_n_train_steps must be >= 1"):
        BestAndLastCheckpoint(last_every_n_train_steps=0)


def test_eval_without_a_checkpoint_is_one_line_and_leaves_no_folder(tmp_path):
    for args, message in ((["hydra.run.dir=outputs/eval/x"], "no checkpoint given: pass ckpt_path="),
                          (["ckpt_path=nowhere.ckpt"], "checkpoint nowhere.ckpt not found")):
        proc = cli("segbench.eval", *args, cwd=tmp_path)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]
        assert proc.stderr.startswith(f"segbench-eval: error: {message}")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_eval_removes_its_empty_run_folder(tmp_path):
    # a checkpoint file that exists passes the command-line check; its run's config does not: Hydra has
    # already made the run directory, which must go again
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "last.ckpt").write_bytes(b"")
    proc = cli("segbench.eval", "ckpt_path=ckpts/last.ckpt", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("segbench-eval: error: training config ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpts"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_smoke_gives_every_model_its_smallest_valid_width(name):
    from segbench.runtime.build import build

    data = ["data=phantom3d"] if name in ("unet3d", "unetr_pp") else []  # the 3D-only models
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}", "debug=smoke", *data])
    # U-Nets take any width: smoke's 4; GroupNorm (8 groups) needs a multiple of 8, Swin UNETR of 12
    assert cfg.model.width == {"segresnet": 8, "swin_unetr": 12}.get(name, 4)
    build(cfg)  # the model's own width / size checks pass (they stopped segresnet and swin_unetr before)
