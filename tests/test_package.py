"""segbench as a new user gets it: a wheel installed into a fresh venv, run from an empty directory.

The wheel is built the way a user or a cluster admin builds it (``pip wheel --no-deps``), from the
sdist (so the sdist must carry the configs too), and installed non-editable into a venv whose
other packages (torch, Lightning, ...) come from this Python. ``segbench-train debug=smoke`` then
runs in an empty directory outside the repository: its data and outputs must appear there, and the
installed package must be left exactly as pip wrote it; so must ``segbench-score`` on two tiny cases
written by the test. Every documented public name imports from
the installed wheel, and every ``_target_`` its configs name resolves.

"This Python" may itself be a venv (the README's test command run in one): the new venv is made
without ``--system-site-packages`` (that would expose the *base* interpreter's packages, not the
venv's) and a ``.pth`` file lists the site directories this Python imports from, never the checkout.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import segbench

REPO = Path(segbench.__file__).resolve().parent.parent
#: what the sdist is built from (a copy, so that building writes nothing into the checkout)
SOURCES = ("segbench", "hydra_plugins", "configs", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
#: the public names the README documents (``from segbench.<module> import <name>``)
PUBLIC = {
    "segbench.losses": ["SegLoss", "LossInputs", "build_loss", "available_losses", "DeepSupervisionLoss"],
    "segbench.data": ["DataSource", "CaseRef", "SegDataModule", "PatchDataModule", "load_nifti_case",
                      "save_nifti_label"],
    "segbench.metrics": ["evaluate_case", "evaluate_case_conventions"],
    "segbench.report.runs": ["read_per_case"],
}
#: config targets of optional plugins: (module that must be importable, why it may be absent)
OPTIONAL_TARGETS = {
    "optuna.": ("optuna", "hparams_search=afw_optuna needs the optional hydra-optuna-sweeper plugin "
                          "(pip install segbench[optuna]), which brings optuna"),
}

pytestmark = pytest.mark.skipif(not (REPO / "pyproject.toml").is_file(),
                                reason="segbench is not imported from a source checkout: nothing to build")


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH pointing at a checkout, no segbench overrides."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "SEGBENCH_DATA_DIR", "SEGBENCH_OUTPUT_DIR")}
    env.update(PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def can_build_offline() -> bool:
    """This Python's setuptools can build the wheel (setuptools >= 70.1 has bdist_wheel, older ones need
    the wheel package); otherwise pip builds in an isolated environment it downloads."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    from importlib.metadata import version

    major, minor = (int(p) for p in version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


#: run by a Python: the directories it imports third-party packages from (its sys.path minus what
#: ``python -S`` has, the standard library), as JSON
SITE_DIRS = """
import json, os, subprocess, sys
bare = json.loads(subprocess.run([sys.executable, "-I", "-S", "-c", "import json, sys; print(json.dumps(sys.path))"],
                                 capture_output=True, text=True, check=True).stdout)
print(json.dumps([p for p in sys.path if p and p not in bare and os.path.isdir(p)]))
"""


def site_dirs(python: str | Path, cwd: Path) -> list[str]:
    """The site directories ``python`` imports packages from: its site-packages (a venv's own, or the
    system's), the user site, and what .pth files add -- not the checkout (an old-style editable install's
    path entry), nor PYTHONPATH. (A venv inside the checkout, ``.venv/``, is a site directory like any.)"""
    dirs = json.loads(run([str(python), "-c", SITE_DIRS], cwd, clean_env()).stdout)
    return [d for d in dirs if (Path(d) / "segbench").resolve() != (REPO / "segbench").resolve()]


def make_venv(path: Path, base: str | Path = sys.executable) -> Path:
    """A fresh venv made by ``base`` that sees ``base``'s packages (torch, Lightning, ...); its Python.

    Not ``--system-site-packages``: when ``base`` is a venv, that exposes the base *interpreter*'s
    packages, not the venv's. A ``.pth`` file in the new venv lists ``base``'s site directories instead
    (plain paths: the .pth files there, e.g. an editable segbench's finder, are not run), after the venv's
    own site-packages, so what pip installs into the venv comes first.

    Without its own pip where this pip can install into it (``pip --python``, pip >= 22.3): faster, and
    no ensurepip needed."""
    import pip

    own_pip = tuple(int(p) for p in pip.__version__.split(".")[:2]) < (22, 3)
    run([str(base), "-m", "venv", *([] if own_pip else ["--without-pip"]), str(path)], path.parent)
    python = path / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], path.parent,
                  clean_env()).stdout.strip()
    lines = "".join(f"{d}\n" for d in site_dirs(base, path.parent))
    (Path(purelib) / "_segbench_test_base_site.pth").write_text(lines)
    return python


def pip_install(python: Path, wheel: Path, cwd: Path) -> None:
    import pip

    own_pip = tuple(int(p) for p in pip.__version__.split(".")[:2]) < (22, 3)
    launcher = [str(python), "-m", "pip"] if own_pip else [sys.executable, "-m", "pip", "--python", str(python)]
    # --ignore-installed: this Python may hold segbench already (editable, from the checkout); pip must
    # install the wheel into the venv, never touch that one
    run([*launcher, "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)], cwd, clean_env())


def build_wheel(tmp: Path) -> Path:
    """sdist of a copy of the sources, then ``pip wheel --no-deps`` of that sdist."""
    src, dist = tmp / "src", tmp / "dist"
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    offline = can_build_offline()
    if offline:
        run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"], src)
        (sdist,) = dist.glob("segbench-*.tar.gz")
        target = str(sdist)
    else:
        target = str(src)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *(["--no-build-isolation"] if offline else []),
         "-w", str(dist), target], tmp)
    (wheel,) = dist.glob("segbench-*.whl")
    return wheel


def package_files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def empty_directory(python: Path, venv: Path, tmp_path: Path):
    """``(work, env, package, files)``: an empty working directory, a clean environment, the installed package the
    venv's Python imports there (checked to be the venv's own copy) and its files before a command runs."""
    work = tmp_path / "empty"
    work.mkdir()
    env = clean_env()
    package = Path(run([str(python), "-c", "import segbench; print(segbench.__file__)"], work,
                       env).stdout.strip()).parent
    assert package.is_relative_to(venv), f"segbench imported from {package}, not from the venv"
    return work, env, package, package_files(package)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """The wheel, built from the sources, and the Python of a fresh venv it is installed in."""
    tmp = tmp_path_factory.mktemp("package")
    wheel = build_wheel(tmp)
    python = make_venv(tmp / "venv")
    pip_install(python, wheel, tmp)
    return wheel, python


@pytest.mark.slow  # builds an sdist and a wheel, then trains
def test_wheel_carries_the_configs_and_runs_from_an_empty_directory(installed, tmp_path):
    wheel, python = installed
    venv = python.parent.parent
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("segbench/configs/") for n in names if n.startswith("segbench/configs/"))
    assert shipped == sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml"))

    work = tmp_path / "empty"
    work.mkdir()
    env = clean_env()
    where = run([str(python), "-c", "import segbench, segbench.config as c; print(segbench.__file__); "
                 "print(c.CONFIG_DIR)"], work, env).stdout.split()
    package = Path(where[0]).parent
    # the venv's own copy, not the editable install of the Python it was made from
    assert package.is_relative_to(venv), f"segbench imported from {package}, not from the venv"
    assert Path(where[1]) == package / "configs"
    before = package_files(package)

    proc = run([str(venv / "bin" / "segbench-train"), "debug=smoke", "num_threads=1"], work, env)

    (summary_path,) = (work / "outputs" / "train").glob("*/results/summary.json")
    summary = json.loads(summary_path.read_text())
    assert 0.0 <= summary["mean_dsc"] <= 1.0 and summary["run"]["git"] is None  # no checkout to name
    assert f"results: {summary_path.parent}" in proc.stdout
    assert list((work / "data" / "phantom").glob("*/img/img0001.nii.gz"))  # the phantom is generated here
    assert (work / "data" / "cache").is_dir()
    # debug=smoke tests one case; its prediction is written beside the results
    assert [p.name for p in (summary_path.parent.parent / "predictions").iterdir()] == ["0003.nii.gz"]
    assert package_files(package) == before, "segbench-train wrote into the installed package"
    assert not (package.parent / "outputs").exists() and not (package.parent / "data").exists()

    # segbench-predict of the wheel applies that run to a scan, in the same directory
    import nibabel as nib
    import numpy as np

    (scan,) = (work / "data" / "phantom").glob("*/img/img0003.nii.gz")
    proc = run([str(venv / "bin" / "segbench-predict"), f"run={summary_path.parent.parent}", f"input={scan}",
                "output=predicted"], work, env)
    assert "1 of 1 case(s) predicted" in proc.stdout
    written, source = nib.load(work / "predicted" / "img0003.nii.gz"), nib.load(scan)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert sorted(p.name for p in work.iterdir()) == ["data", "outputs", "predicted"]
    assert package_files(package) == before, "segbench-predict wrote into the installed package"


@pytest.mark.slow  # shares the wheel and venv of the test above
def test_the_installed_wheel_scores_a_folder_from_an_empty_directory(installed, tmp_path):
    """``segbench-score`` of the wheel, started in an empty directory, on two tiny cases written here."""
    import nibabel as nib
    import numpy as np

    wheel, python = installed
    venv = python.parent.parent
    # the ground truth is a 6 x 4 x 2 box (48 voxels), the prediction its last 4 x 4 x 2 (32 voxels, all
    # inside it): DSC = 2 * 32 / (48 + 32) = 0.8
    gt = np.zeros((12, 10, 4), np.uint8)
    gt[2:8, 2:6, 1:3] = 1
    pred = np.zeros_like(gt)
    pred[4:8, 2:6, 1:3] = 1
    affine = np.diag([-0.8, -0.8, 3.0, 1.0])
    files = tmp_path / "files"
    for case in ("0001", "0002"):
        for folder, name, array in (("gt/label", f"label{case}", gt), ("pred", case, pred)):
            (files / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), str(files / folder / f"{name}.nii.gz"))
    work, env, package, before = empty_directory(python, venv, tmp_path)

    proc = run([str(venv / "bin" / "segbench-score"), str(files / "pred"), str(files / "gt"), "--class-names",
                "background,organ"], work, env)

    results = work / "outputs" / "score" / "pred" / "results"  # ./outputs/score/<PRED_DIR's name>
    assert proc.stdout.strip().endswith(f"results: {results}")
    with open(results / "per_case.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["convention"] == "default"]
    assert [(r["case"], r["organ"], float(r["dsc"])) for r in rows] == [("0001", "organ", 0.8), ("0002", "organ", 0.8)]
    assert json.loads((results / "summary.json").read_text())["mean_dsc"] == pytest.approx(0.8)
    assert sorted(p.name for p in work.iterdir()) == ["outputs"]
    assert package_files(package) == before, "segbench-score wrote into the installed package"


@pytest.mark.slow  # shares the wheel and venv of the test above; trains
def test_the_installed_wheel_logs_to_csv_under_the_run_directory(installed, tmp_path):
    """``segbench-train debug=smoke logger=csv`` of the wheel, in an empty directory: the CSV log is written under
    the run directory, with the run's scalars and config, and nothing else is."""
    wheel, python = installed
    venv = python.parent.parent
    work, env, package, before = empty_directory(python, venv, tmp_path)

    proc = run([str(venv / "bin" / "segbench-train"), "debug=smoke", "num_threads=1", "logger=csv"], work, env)

    (run_dir,) = (work / "outputs" / "train").iterdir()
    metrics = run_dir / "csv" / "metrics.csv"
    with open(metrics, newline="") as fh:
        rows = list(csv.DictReader(fh))
    best = json.loads((run_dir / "results" / "summary.json").read_text())["run"]["best_val_dice"]
    assert [float(r["val/dice"]) for r in rows if r["val/dice"]] == [pytest.approx(best, rel=1e-6)]
    assert [r["epoch"] for r in rows if r["train/loss_epoch"]] == ["0"]
    assert yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())["logger"]["csv"]["save_dir"] == str(run_dir)
    assert f"][segbench][INFO] - csv: {metrics}" in proc.stdout
    assert not (run_dir / "tensorboard").exists()  # logger=csv replaces the default TensorBoard log
    assert sorted(p.name for p in work.iterdir()) == ["data", "outputs"]
    assert package_files(package) == before, "segbench-train wrote into the installed package"


#: run by the venv's Python in an empty directory: imports the public names, resolves the targets
RESOLVE = """
import importlib, importlib.util, json, sys
from hydra.utils import get_object

public, targets, optional = json.loads(sys.argv[1])
out = {"files": {}, "skipped": {}, "failed": {}}
for module, names in public.items():
    mod = importlib.import_module(module)
    out["files"][module] = mod.__file__
    for name in names:
        if not hasattr(mod, name):
            out["failed"][f"{module}.{name}"] = "no such name"
for target in targets:
    needs = [(m, why) for prefix, (m, why) in optional.items() if target.startswith(prefix)]
    if needs and importlib.util.find_spec(needs[0][0]) is None:
        out["skipped"][target] = needs[0][1]
        continue
    try:
        get_object(target)
        out["files"][target] = getattr(sys.modules.get(target.rsplit(".", 1)[0]), "__file__", None)
    except Exception as e:
        out["failed"][target] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def config_targets(wheel: Path) -> list[str]:
    """Every ``_target_`` string in the wheel's ``segbench/configs/**/*.yaml``."""
    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    found = set()
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith("segbench/configs/") and name.endswith(".yaml"):
                found.update(walk(yaml.safe_load(archive.read(name))))
    return sorted(found)


@pytest.mark.slow  # shares the wheel and venv of the test above
def test_the_installed_wheel_has_every_public_name_and_config_target(installed, tmp_path):
    wheel, python = installed
    venv = python.parent.parent
    targets = config_targets(wheel)
    # the configs name the data modules, sources, models, callbacks, Lightning, torch and the launcher
    assert {"segbench.data.SegDataModule", "segbench.data.PatchDataModule", "pytorch_lightning.Trainer",
            "hydra_plugins.segbench_launcher.SlurmLauncher"} <= set(targets)
    assert all("${" not in t for t in targets), targets  # plain strings: resolvable without a config
    proc = run([str(python), "-c", RESOLVE, json.dumps([PUBLIC, targets, OPTIONAL_TARGETS])], tmp_path, clean_env())
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    for target, why in result["skipped"].items():
        print(f"skipped {target}: {why}")
    assert set(result["skipped"]) <= {t for t in targets if t.startswith(tuple(OPTIONAL_TARGETS))}
    # segbench's own names and targets (and its Slurm launcher) come from the wheel, not the checkout
    ours = {k: f for k, f in result["files"].items() if k.startswith(("segbench", "hydra_plugins.segbench"))}
    assert ours.keys() >= set(PUBLIC) | {t for t in targets if t.startswith("segbench.")}
    assert "hydra_plugins.segbench_launcher.SlurmLauncher" in ours
    for name, file in ours.items():
        assert file and Path(file).is_relative_to(venv), f"{name} imported from {file}, not from the venv"


def test_a_venv_made_from_a_venv_sees_that_venvs_packages_not_the_checkout(tmp_path):
    """make_venv from a venv (pytest run from one): the new venv imports what the venv it is made from
    imports -- that venv's own packages (here a probe module), and what it sees itself -- and never the
    checkout. (``--system-site-packages`` gave the base interpreter's packages: no probe, no hydra where
    the base has none.)"""
    outer = make_venv(tmp_path / "outer")  # sees this Python's packages, as the wheel test's venv does
    outer_site = run([str(outer), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                     clean_env()).stdout.strip()
    (Path(outer_site) / "segbench_probe_module.py").write_text("")
    inner = make_venv(tmp_path / "inner", base=outer)
    work = tmp_path / "empty"
    work.mkdir()
    code = ("import importlib.util, json, segbench_probe_module, hydra, torch; "
            "spec = importlib.util.find_spec('segbench'); "
            "print(json.dumps([segbench_probe_module.__file__, hydra.__file__, spec and spec.origin]))")
    probe, hydra_file, segbench_file = json.loads(run([str(inner), "-c", code], work, clean_env()).stdout)
    assert Path(probe).parent == Path(outer_site)
    assert hydra_file == run([sys.executable, "-c", "import hydra; print(hydra.__file__)"], work,
                             clean_env()).stdout.strip()
    # no segbench but one installed in a site directory (the checkout's editable install is not run)
    assert segbench_file is None or not Path(segbench_file).resolve().is_relative_to((REPO / "segbench").resolve())


def test_data_and_outputs_follow_the_working_directory_unless_the_environment_says(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from segbench.config import CONFIG_DIR

    def paths() -> tuple[str, str]:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("train")
        return OmegaConf.select(cfg, "paths.data_dir"), OmegaConf.select(cfg, "paths.log_dir")

    monkeypatch.delenv("SEGBENCH_DATA_DIR", raising=False)
    monkeypatch.delenv("SEGBENCH_OUTPUT_DIR", raising=False)
    for where in (tmp_path / "a", tmp_path / "b"):
        where.mkdir()
        monkeypatch.chdir(where)
        assert paths() == (str(where / "data"), str(where / "outputs"))
    monkeypatch.setenv("SEGBENCH_DATA_DIR", "/scratch/data")
    monkeypatch.setenv("SEGBENCH_OUTPUT_DIR", "/scratch/runs")
    assert paths() == ("/scratch/data", "/scratch/runs")
