"""k-fold cross-validation splits, by nnU-Net's convention.

    segbench-train -m data.split.folds=5 data.split.fold=0,1,2,3,4     # the 5 runs of a 5-fold CV

``data.split.folds: K`` splits the *pool* -- the train + val cases that ``data.split`` resolves to
(:func:`segbench.data.datamodule.resolve_split`) -- into K folds; ``data.split.fold: k`` (0-based) makes
fold k the validation cases and the other K - 1 folds the training cases. The test split is not touched:
it holds exactly the cases of the same config without ``folds``.

The folds are nnU-Net's (nnunetv2 ``generate_crossval_split``, called by ``nnUNetTrainer.do_split`` on
``np.sort`` of the training identifiers): scikit-learn's ``KFold(n_splits=K, shuffle=True,
random_state=seed)`` over the pool's case ids in sorted (lexicographic) order, seed 12345 by default
(``data.split.fold_seed``). :func:`kfold_indices` reproduces KFold without importing scikit-learn: the
indices ``0..n-1`` shuffled by ``np.random.RandomState(seed)``, cut into K consecutive folds, the first
``n % K`` of them one case larger; each fold's ids, like KFold's ``split``, in sorted order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

#: nnU-Net's seed of its 5-fold split (``generate_crossval_split(..., seed=12345)``)
NNUNET_SEED = 12345
#: the keys of ``data.split`` that this module reads
FOLD_KEYS = ("folds", "fold", "fold_seed")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_fold_options(split: dict[str, Any]) -> tuple[int, int, int] | None:
    """``(folds, fold, fold_seed)`` of a ``data.split`` spec, or None when cross-validation is off
    (``folds`` null); a wrong value is a one-line :class:`ConfigError`. The pool size is checked later,
    when the cases are known (:func:`cross_validation_split`)."""
    folds, fold = split.get("folds"), split.get("fold")
    seed = split.get("fold_seed", NNUNET_SEED)
    if folds is None:
        if fold is not None:
            raise ConfigError(f"data.split.fold={fold} needs data.split.folds=<K>, the number of folds "
                              "(e.g. data.split.folds=5 data.split.fold=0,1,2,3,4 -m)")
        return None
    if not _is_int(folds) or folds < 2:
        raise ConfigError(f"data.split.folds={folds!r} is not a number of folds; pass an integer >= 2 "
                          "(e.g. 5), or null for no cross-validation")
    if fold is None:
        raise ConfigError(f"data.split.folds={folds} needs data.split.fold=<k>, the validation fold "
                          f"(0..{folds - 1}; data.split.fold={','.join(map(str, range(folds)))} -m runs them all)")
    if not _is_int(fold) or not 0 <= fold < folds:
        raise ConfigError(f"data.split.fold={fold!r} is not a fold of data.split.folds={folds}; pass an integer "
                          f"in 0..{folds - 1} (0-based)")
    if seed is None:
        seed = NNUNET_SEED
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"data.split.fold_seed={seed!r} must be an integer >= 0 (default {NNUNET_SEED}, "
                          "nnU-Net's)")
    return int(folds), int(fold), int(seed)


def kfold_indices(n: int, folds: int, seed: int = NNUNET_SEED) -> list[list[int]]:
    """The validation indices of each fold of scikit-learn's ``KFold(folds, shuffle=True, random_state=seed)``
    over ``n`` items, each fold's indices sorted (as ``KFold.split`` yields them)."""
    if not 2 <= folds <= n:
        raise ValueError(f"need 2 <= folds <= n, got folds={folds}, n={n}")
    indices = np.arange(n)
    np.random.RandomState(seed).shuffle(indices)
    sizes = np.full(folds, n // folds, dtype=int)
    sizes[: n % folds] += 1
    out, start = [], 0
    for size in sizes:
        out.append(sorted(int(i) for i in indices[start:start + size]))
        start += size
    return out


def kfold_case_ids(pool: Sequence[str], folds: int, seed: int = NNUNET_SEED) -> list[list[str]]:
    """nnU-Net's folds of ``pool``: :func:`kfold_indices` over the case ids in sorted order; fold ``i``'s
    validation case ids (sorted)."""
    ids = sorted(pool)
    return [[ids[i] for i in fold] for fold in kfold_indices(len(ids), folds, seed)]


def cross_validation_split(splits: dict[str, list[str]], options: tuple[int, int, int]) -> dict[str, Any]:
    """``splits`` (``train``, ``val``, ``test`` lists) with fold ``fold`` of the train + val pool as ``val``
    and the other folds as ``train`` (both in sorted order), ``test`` unchanged, and the record of the
    folds: ``folds`` (each fold's validation cases), ``fold`` and ``fold_seed``."""
    folds, fold, seed = options
    pool = [*splits["train"], *splits["val"]]
    if folds > len(pool):
        raise DataError(f"data.split.folds={folds} but the train + val cases hold only {len(pool)} case(s) to "
                        f"cross-validate; pass data.split.folds <= {len(pool)}, or move cases from "
                        "data.split.test into the pool")
    fold_ids = kfold_case_ids(pool, folds, seed)
    val = set(fold_ids[fold])
    return {"train": [c for c in sorted(pool) if c not in val], "val": list(fold_ids[fold]),
            "test": list(splits["test"]), "folds": fold_ids, "fold": fold, "fold_seed": seed}
