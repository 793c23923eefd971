"""A user's own loss, dataset and experiment, outside segbench, exactly as docs/extending.md writes them.

The page "Extending segbench" (docs/extending.md) is the specification: the files after each
``<!-- user-file: PATH -->`` marker are written into an empty directory outside the package, three
cases are put in ``my_data/<case>/``, and the commands after ``<!-- user-commands -->`` are run there
as a user types them (the console scripts of this Python). Also: a plain ``nn.Module`` loss trains,
and wrong user losses stop at start-up in one line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import segbench
from helpers import blob_case, cli
from segbench.errors import ConfigError
from segbench.losses import LossInputs, ModuleLoss, SegLoss, loss_from_config

REPO = Path(segbench.__file__).resolve().parent.parent
PAGE = REPO / "docs" / "extending.md"   # the page "Extending segbench" (once the README's section)

pytestmark = pytest.mark.skipif(not PAGE.is_file(), reason="segbench is not imported from a source checkout")


def readme_section() -> str:
    """The whole page: its files and commands are what a user copies."""
    return PAGE.read_text()


def readme_files(section: str) -> dict[str, str]:
    """``{path: content}`` of every fenced block after a ``<!-- user-file: PATH -->`` marker."""
    blocks = re.findall(r"<!-- user-file: (\S+) -->\n```\w*\n(.*?)```", section, flags=re.S)
    return dict(blocks)


def readme_commands(section: str) -> list[str]:
    block = re.search(r"<!-- user-commands -->\n```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def console_script(name: str) -> list[str]:
    """The entry point as the user types it: the console script installed beside this Python."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    module = {"segbench-train": "segbench.train:cli", "segbench-eval": "segbench.eval:cli",
              "segbench-table": "segbench.report.table:main"}[name]
    mod, func = module.split(":")
    return [sys.executable, "-c", f"import sys; sys.path.remove(''); from {mod} import {func}; {func}()"]


def user_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SEGBENCH_DATA_DIR", "SEGBENCH_OUTPUT_DIR")}
    # this segbench (a checkout on PYTHONPATH or installed editable), and nothing of the user's directory
    env["PYTHONPATH"] = str(REPO)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def write_user_cases(root: Path, n: int = 3) -> None:
    """``my_data/case<i>/image.nii.gz + label.nii.gz``: blobs whose HU encode the class (conftest)."""
    affine = np.diag([-0.8, -0.8, 5.0, 1.0])
    for i in range(1, n + 1):
        image, label = blob_case(i, num_classes=3)
        case = root / f"case{i}"
        case.mkdir(parents=True)
        nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), affine), case / "image.nii.gz")
        nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), affine), case / "label.nii.gz")


@pytest.mark.slow  # the page's commands: runs
def test_readme_user_loss_dataset_and_experiment_from_an_outside_directory(tmp_path):
    section = readme_section()
    files = readme_files(section)
    assert set(files) == {"my_module.py", "my_configs/loss/my_loss.yaml", "my_configs/data/my_data.yaml",
                          "my_configs/experiment/my_experiment.yaml"}
    project = tmp_path / "my_project"
    for path, content in files.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(content)
    write_user_cases(project / "my_data")

    outputs = []
    for command in readme_commands(section):
        argv = shlex.split(command)
        proc = subprocess.run(console_script(argv[0]) + argv[1:], cwd=project, env=user_env(), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)

    # loss=my_loss data=my_data: a timestamped run under ./outputs/train
    (first,) = (project / "outputs" / "train").glob("*/results/summary.json")
    run = project / "outputs" / "my_experiment" / "first"
    for summary_path in (first, run / "results" / "summary.json"):
        summary = json.loads(summary_path.read_text())
        assert summary["config"]["loss"] == {"_target_": "my_module.MyLoss", "name": "my_loss", "ce_weight": 0.5,
                                             "smooth": 1.0e-5}
        assert summary["config"]["data"]["source"]["_target_"] == "my_module.MySource"
        assert list(summary["per_class"]) == ["organ_a", "organ_b"]
        # debug=smoke splits the 3 cases 1 / 1 / 1 in case order
        assert summary["splits"] == {"train": ["case1"], "val": ["case2"], "test": ["case3"]}
    assert summary["config"]["trainer"]["max_epochs"] == 1  # the experiment's 50, shrunk by debug=smoke
    prediction = nib.load(run / "predictions" / "case3.nii.gz")
    assert prediction.shape == (64, 64, 12)
    np.testing.assert_allclose(prediction.affine, np.diag([-0.8, -0.8, 5.0, 1.0]))
    assert (project / "data" / "cache").is_dir()  # the cache follows the working directory too
    # the table: one row labelled by the loss config's name, one run
    assert re.search(r"^\| my_loss \| 1 \|", outputs[2], flags=re.M), outputs[2]
    assert (project / "outputs" / "report" / "table.md").is_file()

    # segbench-eval rebuilds the user's loss and source from the run's own config, from the same folder --
    # only once the user names their module: a run directory's config is not trusted to import code
    ckpt = "outputs/my_experiment/first/checkpoints/last.ckpt"
    eval_cmd = console_script("segbench-eval") + [f"ckpt_path={ckpt}", "hydra.run.dir=outputs/ev"]
    refused = subprocess.run(eval_cmd, cwd=project, env=user_env(), capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1
    assert "my_module.MySource" in refused.stderr and "trusted_modules=[<module>]" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    proc = subprocess.run(eval_cmd + ["trusted_modules=[my_module]"], cwd=project, env=user_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rescored = json.loads((project / "outputs" / "ev" / "results" / "summary.json").read_text())
    assert rescored["config"]["loss"]["_target_"] == "my_module.MyLoss"
    assert list(rescored["per_class"]) == ["organ_a", "organ_b"]

    # the page's loss computes what its docstring says: perfect logits -> CE ~ 0 and Dice ~ 1
    sys.path.insert(0, str(project))
    try:
        import my_module
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("my_module", None)
    target = torch.tensor([[[0, 1], [2, 2]]])
    logits = 50.0 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert float(my_module.MyLoss(ce_weight=0.5)(logits, target)) == pytest.approx(0.0, abs=1e-6)
    # all-uniform logits: CE = ln 3; soft TP of organ 1 = 1/3 (1 voxel), FP = 3 * 1/3 = 1, FN = 2/3:
    # Dice_1 = (2/3) / (2/3 + 1 + 2/3) = 2/7; organ 2: TP = 2/3, FP = 2/3, FN = 4/3 -> Dice_2 = (4/3) / (4/3 + 2) = 2/5
    uniform = torch.zeros(1, 3, 2, 2)
    expected = 0.5 * np.log(3) + 1 - (2 / 7 + 2 / 5) / 2
    assert float(my_module.MyLoss(ce_weight=0.5, smooth=0.0)(uniform, target)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow  # a training run
def test_a_plain_nn_module_loss_trains_through_every_hook(tmp_path, phantom_dir):
    proc = cli("segbench.train", "debug=smoke", "num_threads=1", "~loss", "+loss._target_=torch.nn.CrossEntropyLoss",
               "+loss.label_smoothing=0.1", f"paths.data_dir={phantom_dir}", f"hydra.run.dir={tmp_path}/run",
               env=user_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "results" / "summary.json").read_text())
    assert summary["config"]["loss"] == {"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.1}


def test_a_plain_module_is_wrapped_and_gets_segloss_hooks():
    loss = loss_from_config({"_target_": "torch.nn.CrossEntropyLoss", "reduction": "sum"}, num_classes=3)
    assert isinstance(loss, ModuleLoss) and isinstance(loss, SegLoss)
    loss.on_train_epoch_start(0, 10)
    assert loss.log_values() == {} and loss.map_builder(3) is None
    logits, target = torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 2]]])
    # 4 voxels, uniform softmax: sum of -ln(1/3)
    assert float(loss(logits, target, maps=None)) == pytest.approx(4 * np.log(3), rel=1e-6)


class NoCompute(SegLoss):
    pass


class Scaled(SegLoss):
    def __init__(self, scale: float, num_classes: int):
        super().__init__()
        self.scale, self.num_classes = scale, num_classes

    def compute(self, inputs: LossInputs) -> torch.Tensor:
        return self.scale * inputs.logits.sum() * 0 + self.scale * inputs.num_classes


def test_a_segloss_target_gets_its_options_and_the_context():
    loss = loss_from_config({"_target_": f"{__name__}.Scaled", "name": "scaled", "scale": 2.0}, num_classes=4,
                            class_names=["bg", "a", "b", "c"])
    assert isinstance(loss, Scaled) and loss.num_classes == 4
    assert float(loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))) == 8.0


@pytest.mark.parametrize("config,message", [
    ({"_target_": "no_such_module.Loss"}, "loss._target_=no_such_module.Loss: cannot import no_such_module"),
    ({"_target_": "torch.nn.NoSuchLoss"}, "module torch.nn has no 'NoSuchLoss'"),
    ({"_target_": "torch.nn.functional.cross_entropy"}, "is not a torch.nn.Module class; subclass "
                                                        "segbench.losses.SegLoss"),
    ({"_target_": f"{__name__}.NoCompute"}, "subclasses SegLoss but defines no compute(inputs)"),
    ({"_target_": f"{__name__}.Scaled", "scale": 1.0, "gamma": 2}, "has no option 'gamma'; its options are: scale"),
    ({"_target_": f"{__name__}.Scaled", "name": "dice", "scale": 1.0}, "loss.name='dice' is a built-in loss"),
    ({"ce_weight": 1.0}, "neither 'name'"),
])
def test_wrong_user_losses_are_refused_in_one_line(config, message):
    with pytest.raises(ConfigError) as info:
        loss_from_config(config, num_classes=3)
    assert message in str(info.value) and "\n" not in str(info.value)
