"""Experiment trackers (``logger=``, :mod:`segbench.runtime.loggers`): each gets the same scalars as the run's CSV
log, the run's resolved config and, where it takes images, the validation overlays -- read back from what each one
wrote: CSV and TensorBoard files, a real MLflow tracking server (SQLite, on 127.0.0.1, started and stopped here)
through MLflow's client, a W&B offline run's own record file, an Aim repository. A tracker that is not installed
is named in one line, with its ``pip install``.

The trackers are optional dependencies that the ``dev`` extra installs; a test of one that is missing is skipped
with the reason (the MLflow server's test too: ``pip install -e ".[dev]"`` brings MLflow).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from helpers import cli

#: the one line a run prints per tracker, at its end (segbench.runtime.loggers.where)
TRACKER_LINE = r"\]\[segbench\]\[INFO\] - {}: "


def needs(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed (pip install -e \".[dev]\" brings it)")


def train(phantom_dir: Path, run_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``segbench-train debug=smoke`` into ``run_dir`` with ``args``; must succeed."""
    proc = cli("segbench.train", "debug=smoke", "num_threads=1", f"paths.data_dir={phantom_dir}",
               f"hydra.run.dir={run_dir}", *args, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "results" / "summary.json").read_text())


# -- what each tracker wrote, as {scalar: {step: value}} -------------------------------------------------------
def csv_scalars(path: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key != "step" and value != "":
                    out.setdefault(key, {})[int(row["step"])] = float(value)
    return out


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def assert_same_scalars(got: dict[str, dict[int, float]], expected: dict[str, dict[int, float]], tracker: str):
    assert sorted(got) == sorted(expected), (tracker, sorted(got), sorted(expected))
    for key, series in expected.items():
        assert sorted(got[key]) == sorted(series), (tracker, key, got[key], series)
        for step, value in series.items():
            assert got[key][step] == pytest.approx(value, rel=1e-6), (tracker, key, step)


def check_csv(run_dir: Path) -> dict[str, dict[int, float]]:
    """The run's CSV log: train/loss_epoch and val/dice are there, val/dice's best is the run's best_val_dice,
    and hparams.yaml holds the run's resolved config (summary.json's)."""
    scalars = csv_scalars(run_dir / "csv" / "metrics.csv")
    record = summary(run_dir)
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "val/dice", "lr-SGD", "epoch"} <= set(scalars)
    assert all(math.isfinite(v) for v in scalars["train/loss_epoch"].values())
    assert max(scalars["val/dice"].values()) == pytest.approx(record["run"]["best_val_dice"], rel=1e-6)
    assert yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text()) == record["config"]
    return scalars


# -- CSV, TensorBoard, several at once -----------------------------------------------------------------------------
@pytest.mark.slow  # a training run
def test_logger_many_writes_the_same_scalars_to_csv_and_tensorboard(phantom_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = train(phantom_dir, run_dir, "logger=many")
    scalars = check_csv(run_dir)
    assert_same_scalars(tensorboard_scalars(run_dir / "tensorboard"), scalars, "tensorboard")
    # TensorBoard's hparams.yaml: the resolved config too
    assert yaml.safe_load((run_dir / "tensorboard" / "hparams.yaml").read_text()) == summary(run_dir)["config"]
    lines = [line for line in proc.stdout.splitlines() if "][segbench][INFO] - csv: " in line]
    assert lines and lines[0].endswith(f"csv: {run_dir / 'csv' / 'metrics.csv'}")


def test_a_resumed_run_appends_to_its_csv_log(tmp_path):
    """Lightning's CSVLogger deletes the metrics.csv it finds; a resumed run's earlier epochs are kept."""
    from segbench.runtime.loggers import CSVLogger

    first = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    first.log_hyperparams({"seed": 1})
    first.log_metrics({"train/loss_step": 1.5, "epoch": 0}, step=0)
    first.save()
    again = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor the warning that "previous log files ... will be deleted"
        again.log_hyperparams({"seed": 1})
    again.log_metrics({"train/loss_step": 1.25, "epoch": 1, "val/dice": 0.5}, step=3)
    again.save()
    assert csv_scalars(tmp_path / "csv" / "metrics.csv") == {
        "train/loss_step": {0: 1.5, 3: 1.25}, "epoch": {0: 0.0, 3: 1.0}, "val/dice": {3: 0.5}}


# -- MLflow --------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on 127.0.0.1: SQLite backend store, artifacts proxied into a folder; its URI.
    Started here, stopped (with the workers it started) at the end of the test."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    (tmp_path / "server").mkdir()
    log = open(tmp_path / "mlflow_server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp_path / "server" / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "mlflow_server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the MLflow server did not answer in 300 s"
            time.sleep(0.5)
        yield uri
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started (its own session)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        log.close()


@needs("mlflow")
@pytest.mark.slow  # starts an MLflow server, then trains
def test_mlflow_logger_against_a_real_local_server(mlflow_server, phantom_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    log_dir = tmp_path / "outputs"
    run_dir = log_dir / "train" / "r1"
    proc = train(phantom_dir, run_dir, "logger=[csv,mlflow]", f"logger.mlflow.tracking_uri={mlflow_server}",
                 f"paths.log_dir={log_dir}", env={**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    scalars = check_csv(run_dir)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("train")  # task_name
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "train/r1" and run.info.status == "FINISHED"
    # every scalar, at every step, as the CSV log has it (lr-SGD too: Lightning's own logger drops the '-')
    history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
               for key in run.data.metrics}
    assert_same_scalars(history, scalars, "mlflow")
    # the resolved config: as parameters, flattened, and whole as config.yaml
    config = summary(run_dir)["config"]
    params = run.data.params
    assert params["loss/name"] == "ce_dice" and params["seed"] == "1234" and params["model/width"] == "4"
    assert params["data/class_names"] == str(config["data"]["class_names"])
    assert yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()) \
        == config
    # the validation overlay of epoch 0, stored by the server under its artifacts destination
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any(p.startswith("images/val~overlay+step+0+") and p.endswith(".png") for p in images), images
    assert list((tmp_path / "server" / "artifacts").rglob("val~overlay+step+0+*.png"))
    # where it went, in one line; MLflow's own "View run ... at" lines are not printed
    url = f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
    assert f"mlflow: run train/r1 of experiment train: {url}" in proc.stdout
    assert "View run" not in proc.stdout + proc.stderr


@needs("mlflow")
@pytest.mark.slow  # MLflow's import and its database set-up (SQLite migrations): ~12 s
def test_mlflow_logger_without_a_tracking_uri_keeps_a_sqlite_store_in_the_run_directory(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from segbench.runtime.loggers import MLFlowLogger, close, where

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logger = MLFlowLogger(tracking_uri=None, save_dir=str(tmp_path / "run" / "mlflow"), experiment_name="train",
                          run_name="train/r2")
    logger.log_hyperparams({"loss": {"name": "dice", "note": "x" * 7000}, "seed": 1})
    logger.log_metrics({"lr-SGD": 0.01, "val/dice/kidney (left)": 0.5}, step=3)
    logger.finalize("success")
    close([logger])
    # MLflow sets MLFLOW_TRACKING_URI for its subprocesses; the next job of a sweep must not log into this store
    assert "MLFLOW_TRACKING_URI" not in os.environ
    store = f"sqlite:///{tmp_path / 'run' / 'mlflow' / 'mlflow.db'}"
    assert where(logger) == (f"mlflow: run train/r2 of experiment train: {store} "
                             f"(mlflow ui --backend-store-uri {store})")
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    # a name MLflow refuses loses only the characters it refuses; lr-SGD stays
    assert run.data.metrics == {"lr-SGD": 0.01, "val/dice/kidney _left_": 0.5}
    assert run.data.params["loss/name"] == "dice" and run.data.params["seed"] == "1"
    assert run.data.params["loss/note"].endswith(" ... (cut; in full in config.yaml)")
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path / "run" / "mlflow" / "artifacts")
    assert "x" * 7000 in Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
    # a SQLite store given by URI (MLFLOW_TRACKING_URI=sqlite:///outputs/mlflow.db): artifacts beside it, not in ./mlruns
    shared = MLFlowLogger(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", experiment_name="train")
    assert shared._artifact_location == (tmp_path / "outputs" / "artifacts").as_uri()


# -- W&B -------------------------------------------------------------------------------------------------------------
def wandb_records(path: Path):
    """The records of a W&B run file (``run-<id>.wandb``): a LevelDB-style log -- a 7-byte header (``:W&B``,
    magic, version), then 32 KiB blocks of chunks, each ``crc32 (4) length (2) type (1)`` + data, type 1 a whole
    record, 2 / 3 / 4 its first / middle / last part -- of protobuf ``Record`` s (wandb's own schema)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, record = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        record = chunk if kind in (1, 2) else record + chunk
        if kind in (1, 4):
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(record)
            yield parsed


def wandb_run(folder: Path) -> tuple[dict, dict[str, dict[int, float]], list[dict]]:
    """(config, scalars by Lightning's global step, the history rows with images) of an offline run folder."""
    (path,) = folder.glob("run-*.wandb")
    config, scalars, images = {}, {}, []
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update if i.key != "_wandb"})
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            if any(k.startswith("val/overlay/") for k in row):
                images.append(row)
            for key, value in row.items():
                if not key.startswith(("_", "trainer/global_step", "val/overlay/")):
                    scalars.setdefault(key, {})[int(row["trainer/global_step"])] = float(value)
    return config, scalars, images


@needs("wandb")
@pytest.mark.slow  # a training run
def test_wandb_offline_run_needs_no_account_and_holds_what_the_run_logged(phantom_dir, tmp_path):
    home = tmp_path / "home"  # no ~/.netrc, no W&B settings: no account
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    run_dir = tmp_path / "run"
    proc = train(phantom_dir, run_dir, "logger=[csv,wandb]", env={**env, "HOME": str(home)})
    scalars = check_csv(run_dir)
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    config, history, images = wandb_run(folder)
    assert config == summary(run_dir)["config"]
    assert_same_scalars(history, scalars, "wandb")
    # the overlay of epoch 0, at the epoch's last global step, its file beside the record
    assert [(row["val/overlay/captions"], row["trainer/global_step"]) for row in images] == \
        [(["validation, epoch 0"], max(scalars["train/loss_step"]) + 1)]
    assert (folder / "files" / images[0]["val/overlay/filenames"][0]).is_file()
    assert f"wandb: offline run in {folder}; upload it with: wandb sync {folder}" in proc.stdout
    assert "wandb:" not in proc.stderr, proc.stderr[-2000:]  # no banner, no warning


# -- Aim -------------------------------------------------------------------------------------------------------------
@needs("aim")
@pytest.mark.slow  # a training run
def test_aim_repository_holds_what_the_run_logged(phantom_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = train(phantom_dir, run_dir, "logger=[csv,aim]")
    scalars = check_csv(run_dir)
    from aim import Repo
    from aim.sdk.index_manager import RepoIndexManager
    from aim.storage.context import Context

    repo = Repo(str(run_dir / "aim"))
    (run_hash,) = repo.list_all_runs()
    RepoIndexManager.get_index_manager(repo).index(run_hash)  # what `aim up` does in the background
    run = repo.get_run(run_hash)
    assert run.name == "run" and run.experiment == "train" and run.active is False
    assert run["hparams"] == summary(run_dir)["config"]
    tracked = {seq.name: dict(zip(seq.data.indices_list(), seq.values.values_list())) for seq in run.metrics()}
    epochs = {seq.name: seq.epochs.values_list() for seq in run.metrics()}
    # Aim keeps Lightning's "epoch" as every value's epoch, not as a scalar of its own
    assert_same_scalars(tracked, {k: v for k, v in scalars.items() if k != "epoch"}, "aim")
    assert set(epochs["val/dice"]) == {0}
    overlays = run.get_image_sequence("val/overlay", Context({}))
    assert overlays.data.indices_list() == [0]
    assert overlays.values.values_list()[0].caption == "validation, epoch 0"
    assert f"aim: run in {run_dir / 'aim'} (aim up --repo {run_dir / 'aim'})" in proc.stdout


# -- configs, checks ---------------------------------------------------------------------------------------------------
def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from segbench.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=["paths.output_dir=/runs/outputs/train/r1",
                                                 "paths.log_dir=/runs/outputs", *overrides])


@pytest.mark.parametrize("choice, names", [
    ("tensorboard", ["tensorboard"]), ("csv", ["csv"]), ("many", ["tensorboard", "csv"]),
    ("mlflow", ["mlflow"]), ("wandb", ["wandb"]), ("aim", ["aim"]),
    ("[csv,mlflow,wandb,aim]", ["csv", "mlflow", "wandb", "aim"])])
def test_every_logger_config_composes_and_passes_the_trust_check(choice, names, monkeypatch):
    """What segbench-eval and segbench-predict read back from a run directory may build the loggers' classes."""
    from segbench.runtime.trust import check_targets

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose(f"logger={choice}")
    assert list(cfg.logger) == names
    resolved = OmegaConf.to_container(cfg.logger, resolve=True)
    check_targets(resolved, source="a run directory's config")
    for name in set(names) & {"mlflow", "wandb", "aim"}:  # the tracker's name for the run: its directory
        assert resolved[name]["run_name" if name != "wandb" else "name"] == "train/r1"
    if "mlflow" in names:
        assert resolved["mlflow"]["tracking_uri"] is None  # the run directory's own SQLite store
        assert resolved["mlflow"]["save_dir"] == "/runs/outputs/train/r1/mlflow"
        assert resolved["mlflow"]["experiment_name"] == "train"


def test_the_mlflow_tracking_uri_comes_from_the_config_else_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert compose("logger=mlflow").logger.mlflow.tracking_uri == "http://mlflow.example:5000"
    assert compose("logger=mlflow", "logger.mlflow.tracking_uri=sqlite:///x.db").logger.mlflow.tracking_uri == \
        "sqlite:///x.db"


def test_a_run_may_resume_with_other_loggers(tmp_path):
    from segbench.runtime.rundir import _check_same_config

    old = {"seed": 1, "logger": {"tensorboard": {"name": "tensorboard"}}}
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted", "config": old}))
    _check_same_config(tmp_path, OmegaConf.create({"seed": 1, "logger": {"mlflow": {"save_dir": "x"}}}),
                       "an unfinished run")


@pytest.mark.parametrize("module", ["mlflow", "wandb", "aim"])
def test_a_missing_tracker_package_is_found_from_the_config(module, monkeypatch):
    from segbench.runtime.checks import missing_logger_package

    cfg = compose(f"logger=[csv,{module}]")
    assert missing_logger_package(cfg.logger) is None or importlib.util.find_spec(module) is None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    assert missing_logger_package(cfg.logger) == (
        f"logger={module} needs {module}, an optional dependency: pip install \"segbench[{module}]\" "
        f"(in a checkout: pip install -e \".[{module}]\")")
    assert missing_logger_package(compose("logger=many").logger) is None


@pytest.mark.slow  # a command that starts (imports Lightning): ~10 s on a busy 2-core machine
@pytest.mark.parametrize("choice, module", [("[csv,wandb]", "wandb")])
def test_a_missing_tracker_is_named_in_one_line_with_its_install_command(choice, module, tmp_path):
    """Its package made unimportable (``sys.modules[name] = None`` in a sitecustomize): the run stops before
    anything is built, with one line."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    name = choice.strip("[]").split(",")[-1]
    proc = cli("segbench.train", "debug=smoke", f"logger={choice}", f"hydra.run.dir={tmp_path / 'run'}",
               f"paths.data_dir={tmp_path / 'data'}", env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"segbench-train: error: logger={name} needs {module}, an optional dependency: "
        f"pip install \"segbench[{module}]\" (in a checkout: pip install -e \".[{module}]\")")
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "data").exists()
