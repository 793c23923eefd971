"""segbench as a new user gets it: a wheel installed into a fresh venv, run from an empty directory.

The wheel is built the way a user or a cluster admin builds it (``pip wheel --no-deps``), from the
sdist (so the sdist must carry the configs too), and installed non-editable into a venv whose
other packages (torch, Lightning, ...) come from this Python. ``segbench-train debug=smoke`` then
runs in an empty directory outside the repository: its data and outputs must appear there, and the
installed package must be left exactly as pip wrote it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import segbench

REPO = Path(segbench.__file__).resolve().parent.parent
#: what the sdist is built from (a copy, so that building writes nothing into the checkout)
SOURCES = ("segbench", "configs", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")

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


def make_venv(path: Path) -> Path:
    """A fresh venv that sees this Python's packages (torch, Lightning, ...); its Python.

    Without its own pip where this pip can install into it (``pip --python``, pip >= 22.3): faster, and
    no ensurepip needed."""
    import pip

    own_pip = tuple(int(p) for p in pip.__version__.split(".")[:2]) < (22, 3)
    run([sys.executable, "-m", "venv", "--system-site-packages", *([] if own_pip else ["--without-pip"]), str(path)],
        path.parent)
    return path / "bin" / "python"


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


def test_wheel_carries_the_configs_and_runs_from_an_empty_directory(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("segbench/configs/") for n in names if n.startswith("segbench/configs/"))
    assert shipped == sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml"))

    venv = tmp_path / "venv"
    python = make_venv(venv)
    pip_install(python, wheel, tmp_path)

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
