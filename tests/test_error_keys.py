"""Error messages name real keys: every ``group.key`` that segbench's messages tell the user to set must
be a key a user can set -- a key of a config file of that group, or an option of a class that group
instantiates (a model's, a loss's, a data module's or a source's constructor argument, a Trainer
argument). ``data.label_map`` (Hydra refuses it; the key is ``data.source.label_map``) is the bug
this guards against."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import yaml

import segbench
from segbench.config import CONFIG_DIR

PACKAGE = Path(segbench.__file__).parent
GROUPS = ("data", "model", "loss", "trainer", "test", "metrics", "inference", "consistency", "scheduler",
          "optimizer", "callbacks", "paths", "logger")
KEY = re.compile(r"(?<![\w./])(" + "|".join(GROUPS) + r")\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)")


def dotted_keys(node, prefix: str = "") -> set[str]:
    keys = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "defaults" and not prefix:
                continue
            keys.add(f"{prefix}{key}")
            keys |= dotted_keys(value, f"{prefix}{key}.")
    return keys


def config_keys() -> set[str]:
    """``group.key`` of every config file: a group's own files, and the root configs and experiment /
    debug overlays (``# @package _global_``)."""
    root = Path(CONFIG_DIR)
    keys: set[str] = set()
    for path in root.rglob("*.yaml"):
        content = yaml.safe_load(path.read_text()) or {}
        group = path.relative_to(root).parts[0]
        if group in GROUPS and len(path.relative_to(root).parts) == 2:
            keys |= {f"{group}.{k}" for k in dotted_keys(content)}
        else:
            keys |= dotted_keys(content)
    return keys


def constructor_options() -> set[str]:
    """Keys a user adds with ``+group.option``: the constructor arguments of what each group builds."""
    import pytorch_lightning as pl

    from segbench import data as data_pkg
    from segbench.data.datamodule3d import PatchDataModule
    from segbench.losses import LOSSES
    from segbench.models import MODELS

    def params(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]

    keys = {f"model.{p}" for cls in MODELS.values() for p in params(cls)}
    keys |= {f"loss.{p}" for cls in LOSSES.values() for p in params(cls)}
    keys |= {f"data.{p}" for cls in (data_pkg.SegDataModule, PatchDataModule) for p in params(cls)}
    sources = [getattr(data_pkg, n) for n in data_pkg.__all__ if n.endswith("Source")]
    keys |= {f"data.source.{p}" for cls in sources for p in params(cls)}
    keys |= {f"trainer.{p}" for p in params(pl.Trainer)}
    return keys


def message_keys() -> dict[str, list[str]]:
    """``group.key`` -> where it appears, over every string literal (f-string parts included) of the package."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for group, rest in KEY.findall(node.value):
                    found.setdefault(f"{group}.{rest}".rstrip("."), []).append(f"{path.name}:{node.lineno}")
    return found


def test_every_key_an_error_message_names_exists():
    # loss._target_: a user's own loss class (README, "Add your own loss / dataset")
    known = config_keys() | constructor_options() | {"loss._target_"}
    found = message_keys()
    assert "data.source.label_map" in found  # the fixed message is seen by this scan
    unknown = {key: where for key, where in found.items()
               if key not in known and not any(k.startswith(key + ".") for k in known)}
    assert not unknown, f"messages name keys no config or constructor has: {unknown}"


@pytest.mark.parametrize("key", ["data.label_map", "model.feature_size", "trainer.gpus"])
def test_the_check_catches_a_made_up_key(key):
    assert key not in config_keys() | constructor_options()
