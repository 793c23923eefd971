"""The bad-input matrix: every input a user can get wrong stops with exit code 1 and one line naming the
thing and the fix (no traceback), before anything is trained. The README's "When something is wrong"
section shows these lines.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from helpers import blob_case, cli, write_case


def blobs(root: Path, edit=None) -> Path:
    for i in range(1, 4):
        write_case(root, f"{i:04d}", *blob_case(i, num_classes=3))
    if edit:
        edit(root)
    return root


def nan_in_case_3(root: Path) -> None:
    path = root / "img" / "img0003.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[:5, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), path)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def other_model_run(smoke: Path, tmp: Path) -> Path:
    """The smoke run's checkpoint next to the config of a wider network."""
    run = tmp / "other"
    shutil.copytree(smoke / ".hydra", run / ".hydra")
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["model"]["width"] = 8
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "checkpoints").mkdir()
    shutil.copy(smoke / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    return run


def run_with_checkpoint(smoke: Path, tmp: Path, content: bytes) -> Path:
    run = tmp / "shared"
    shutil.copytree(smoke / ".hydra", run / ".hydra")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(content)
    return run


class Payload:
    def __reduce__(self):
        return (open, ("/tmp/segbench_bad_input_pwned", "w"))


def pickled(tmp: Path) -> bytes:
    torch.save({"state_dict": {}, "x": Payload()}, tmp / "p.ckpt")
    return (tmp / "p.ckpt").read_bytes()


def torch_file_without_state_dict(tmp: Path) -> Path:
    torch.save({"weights": torch.zeros(3)}, tmp / "plain.pt")
    return tmp / "plain.pt"


def synapse_with_list(tmp: Path, entry: str) -> Path:
    root = tmp / "synapse"
    (root / "train_npz").mkdir(parents=True)
    (root / "lists_Synapse").mkdir()
    (root / "lists_Synapse" / "train.txt").write_text(f"{entry}\n")
    return root


# (id, entry point, arguments(tmp, phantom, smoke), expected last stderr line (regex, after "<entry>: error: "))
CASES = [
    ("max_epochs=-1", "train", lambda t, p, s: ["debug=smoke", "trainer.max_epochs=-1"],
     r"^trainer\.max_epochs=-1 trains without end, but scheduler\.name=poly decays the learning rate to 0 at the "
     r"last step; set trainer\.max_epochs=<epochs> or scheduler\.name=none"),
    ("max_epochs=-5", "train", lambda t, p, s: ["debug=smoke", "trainer.max_epochs=-5"],
     r"trainer\.max_epochs=-5 is invalid; pass a number of epochs >= 0"),
    ("unwritable output dir", "train",
     lambda t, p, s: ["debug=smoke", f"hydra.run.dir={t}/a_file/run"],
     r"output directory .*/a_file/run is not writable \(Not a directory\); pass hydra\.run\.dir="),
    ("NaN in a scan", "train",
     lambda t, p, s: ["debug=smoke", "data=nifti_folder", f"data.root={blobs(t / 'ds', nan_in_case_3)}"],
     r"case 0003 \(.*img0003\.nii\.gz\) holds 5 non-finite image value\(s\) \(NaN or inf\) of 49152; fix or drop "
     r"the scan, or pass data\.nonfinite_fill=<value>"),
    ("truncated test case", "train",
     lambda t, p, s: ["debug=smoke", "data=nifti_folder", "data.cache_dir=null",
                      f"data.root={blobs(t / 'ds', lambda r: truncate(r / 'img' / 'img0003.nii.gz'))}"],
     r"cannot read .*img0003\.nii\.gz \(.*\); the file is corrupt or truncated"),
    ("missing test label", "train",
     lambda t, p, s: ["debug=smoke", "data=nifti_folder",
                      f"data.root={blobs(t / 'ds', lambda r: (r / 'label' / 'label0003.nii.gz').unlink())}"],
     r"missing file .*label0003\.nii\.gz; check data\.root"),
    ("label out of range", "train",
     lambda t, p, s: ["debug=smoke", "data=nifti_folder", "data.num_classes=2", "data.class_names=[bg,a]",
                      f"data.root={blobs(t / 'ds')}"],
     r"label0001\.nii\.gz holds label id\(s\) \[2\] outside 0\.\.1; map the dataset\'s ids to classes with data\.source\.label_map"),
    ("missing data directory", "train",
     lambda t, p, s: ["debug=smoke", "data=nifti_folder", f"data.root={t}/nowhere"],
     r"data directory .*/nowhere/img not found; set data\.root="),
    ("data.root not set", "train", lambda t, p, s: ["debug=smoke", "data=nifti_folder"],
     r"data\.root not set: pass data\.root=<the dataset's directory>, or data=phantom"),
    ("unknown loss option", "train", lambda t, p, s: ["debug=smoke", "loss=ce", "+loss.gamma=2"],
     r"loss 'ce' has no option 'gamma'; its options are: "),
    ("case in val and test", "train",
     lambda t, p, s: ["debug=smoke", "data.split.train=[0001]", "data.split.val=[0002]", "data.split.test=[0002]"],
     r"data\.split: case\(s\) \['0002'\] are in both val and test; each case belongs to one split only"),
    ("list entry leaves the root", "train",
     lambda t, p, s: ["debug=smoke", "data=synapse", f"data.root={synapse_with_list(t, '../../../etc/passwd')}"],
     r"lists_Synapse/train\.txt lists '\.\./\.\./\.\./etc/passwd', which points outside .*train_npz; list entries "
     r"must name files inside the dataset folder"),
    ("absolute list entry", "train",
     lambda t, p, s: ["debug=smoke", "data=synapse", f"data.root={synapse_with_list(t, '/etc/passwd')}"],
     r"lists_Synapse/train\.txt lists '/etc/passwd', which points outside"),
    ("corrupt ckpt_path to train", "train",
     lambda t, p, s: ["debug=smoke", f"ckpt_path={run_with_checkpoint(s, t, b'garbage' * 10)}/checkpoints/last.ckpt"],
     r"checkpoint .*/last\.ckpt is corrupt or truncated \(.*\); delete it or point ckpt_path at another checkpoint"),
    ("unknown test checkpoint", "train", lambda t, p, s: ["debug=smoke", "test.checkpoint=final"],
     r"test\.checkpoint='final' is unknown; choose best or last"),
    ("report convention not scored", "train", lambda t, p, s: ["debug=smoke", "metrics.report_convention=medpy"],
     r"metrics\.report_convention='medpy' is not scored by this run; choose one of default, transunet"),
    ("unknown optimized_metric", "train", lambda t, p, s: ["debug=smoke", "optimized_metric=speed"],
     r"optimized_metric='speed' is unknown; choose one of mean_dsc, val/dice"),
    ("unknown data pipeline", "train", lambda t, p, s: ["debug=smoke", "data.pipeline=gpu"],
     r"^data\.pipeline='gpu' is unknown; choose auto \(device on CUDA, loader otherwise\), device \(batches cut and "
     r"augmented on the training device\) or loader \(CPU workers\)$"),
    ("negative device cache budget", "train", lambda t, p, s: ["debug=smoke", "data.device_cache_gb=-2"],
     r"^data\.device_cache_gb=-2 is not a budget; pass auto \(40% of the free device memory on CUDA\) or a number "
     r"of GB >= 0 \(0: keep the data in host memory\)$"),
    ("non-numeric device cache budget", "train", lambda t, p, s: ["debug=smoke", "data=phantom3d", "model=unet3d",
                                                                    "data.device_cache_gb=lots"],
     r"^data\.device_cache_gb='lots' is not a budget; pass auto"),
    ("init_from not found", "train", lambda t, p, s: ["debug=smoke", f"init_from={t}/stage1"],
     r"^init_from=.*/stage1 not found; pass init_from=<a run directory \(outputs/train/<run>\) or a checkpoint file "
     r"\(<run>/checkpoints/last\.ckpt\)>$"),
    ("init_from not a Lightning checkpoint", "train",
     lambda t, p, s: ["debug=smoke", f"init_from={torch_file_without_state_dict(t)}"],
     r"^init_from: checkpoint .*/plain\.pt is not a Lightning checkpoint \(no state_dict\); pass a file from a run's "
     r"checkpoints/ folder$"),
    ("init_from another model", "train", lambda t, p, s: ["debug=smoke", "model.width=8", f"init_from={s}"],
     r"^init_from .*/checkpoints/best-epoch000\.ckpt: its model is UNet \(width 4\) with 9 classes, this run builds "
     r"UNet \(width 8\) with 9 classes \(99 of another shape, e\.g\. net\.encoders\.0\.0\.weight \(4, 1, 3, 3\) vs "
     r"\(8, 1, 3, 3\)\); init_from takes a run of this model, width and class list"),
    ("init_from with ckpt_path", "train",
     lambda t, p, s: ["debug=smoke", f"init_from={s}", f"ckpt_path={s}/checkpoints/last.ckpt"],
     r"^init_from=.* and ckpt_path=.*/last\.ckpt are both set: ckpt_path continues a run's training state \(weights, "
     r"optimiser, epoch\), init_from starts a new run from another run's weights only; pass one of them$"),
    ("unknown test.postprocess", "train", lambda t, p, s: ["debug=smoke", "test.postprocess=biggest"],
     r"^test\.postprocess='biggest' is unknown; choose none or largest_component"),
    ("class-aware fraction over 1", "train", lambda t, p, s: ["debug=smoke", "data.class_aware_sampling.fraction=1.5"],
     r"^data\.class_aware_sampling\.fraction must be a number in \[0, 1\] \(the share of each training batch drawn "
     r"around a chosen class; 0: off\), got 1\.5$"),
    ("class-aware unknown class", "train",
     lambda t, p, s: ["debug=smoke", "data.class_aware_sampling.fraction=0.3",
                      "data.class_aware_sampling.classes=[galbladder]"],
     r"^data\.class_aware_sampling\.classes names 'galbladder', which is not a class of data\.class_names \(spleen, "),
    ("class-aware class absent from training", "train",
     lambda t, p, s: ["debug=smoke", "data=nifti_folder", f"data.root={blobs(t / 'ds')}", "data.num_classes=4",
                      "data.class_names=[bg,a,b,c]", "data.class_aware_sampling.fraction=0.3",
                      "data.class_aware_sampling.classes=[c]"],
     r"^data\.class_aware_sampling\.classes names c \(id 3\), which no training slice holds; drop it, or choose "
     r"uniform or rare"),
    ("corrupt checkpoint", "eval",
     lambda t, p, s: [f"ckpt_path={run_with_checkpoint(s, t, (s / 'checkpoints' / 'last.ckpt').read_bytes()[:5000])}"
                      "/checkpoints/last.ckpt"],
     r"checkpoint .*/last\.ckpt is corrupt or truncated \(.*\); delete it or point ckpt_path at another checkpoint"),
    ("empty checkpoint", "eval",
     lambda t, p, s: [f"ckpt_path={run_with_checkpoint(s, t, b'')}/checkpoints/last.ckpt"],
     r"checkpoint .*/last\.ckpt is empty \(0 bytes: a write that never finished\)"),
    ("other-model checkpoint", "eval",
     lambda t, p, s: [f"ckpt_path={other_model_run(s, t)}/checkpoints/last.ckpt"],
     r"checkpoint .*/last\.ckpt was trained with another model than this config builds \(\d+ of another shape, "
     r"e\.g\. net\..*\); pass the config of the run it comes from"),
    ("pickle payload checkpoint", "eval",
     lambda t, p, s: [f"ckpt_path={run_with_checkpoint(s, t, pickled(t))}/checkpoints/last.ckpt"],
     r"checkpoint .*/last\.ckpt holds objects that are not plain tensors and numbers; refused to unpickle it"),
    ("missing checkpoint", "eval", lambda t, p, s: [f"ckpt_path={t}/none.ckpt"],
     r"checkpoint .*/none\.ckpt not found; pass ckpt_path=<run>/checkpoints/last\.ckpt"),
]


#: one case of each kind runs in the fast tier (pytest -m "not slow"); every case runs by default
FAST_CASES = {"NaN in a scan", "case in val and test", "list entry leaves the root", "corrupt ckpt_path to train",
              "other-model checkpoint"}


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0], marks=() if c[0] in FAST_CASES else pytest.mark.slow)
                                  for c in CASES])
def test_bad_input_stops_with_one_line_and_exit_code_1(case, phantom_dir, smoke_run, tmp_path):
    name, entry, make_args, expected = case
    (tmp_path / "a_file").write_text("")
    args = make_args(tmp_path, phantom_dir, smoke_run)
    run_dir = [] if any(a.startswith("hydra.run.dir=") for a in args) else [f"hydra.run.dir={tmp_path}/out"]
    proc = cli(f"segbench.{entry}", *args, f"paths.data_dir={phantom_dir}", "num_threads=1", *run_dir) \
        if entry == "train" else cli("segbench.eval", *args, f"paths.data_dir={phantom_dir}", *run_dir)
    assert proc.returncode == 1, (name, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    prefix = f"segbench-{entry}: error: "
    assert last.startswith(prefix) and re.search(expected, last[len(prefix):]), last
    assert not (tmp_path / "out" / "checkpoints").exists()  # stopped before training
    assert not Path("/tmp/segbench_bad_input_pwned").exists()
