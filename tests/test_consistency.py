"""Perturbation consistency (segbench.losses.consistency): hand value, invariances, options, training."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import cli
from segbench.losses.consistency import check_consistency, perturbation_consistency


def positional(x: torch.Tensor) -> torch.Tensor:
    """Two-class logits [x + column index, 0]: not mirror-equivariant."""
    column = torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x[:, 0])
    return torch.stack([x[:, 0] + column, torch.zeros_like(x[:, 0])], 1)


def test_flip_by_hand():
    # x = [[0, 0]] (one 1 x 2 image). f(x): class-0 logits [0, 1] -> s0 = [.5, sigmoid(1) = .731059]
    # f(flip x) flipped back: logits [0 + 1, 0 + 0] -> s0 = [.731059, .5]
    # per voxel sum_c (s_c - s'_c)^2 = 2 * (.231059)^2 = .106776; mean over the 2 voxels = .106776
    x = torch.zeros(1, 1, 1, 2)
    value = perturbation_consistency(positional, x, positional(x), "flip")
    d = 1 / (1 + math.exp(-1)) - 0.5
    assert float(value) == pytest.approx(2 * d * d, rel=1e-6)


def test_equivariant_and_noise_free_cases_cost_nothing():
    conv = torch.nn.Conv2d(1, 3, 1)  # a 1 x 1 convolution commutes with the flip
    x = torch.randn(2, 1, 6, 5)
    assert float(perturbation_consistency(conv, x, conv(x), "flip")) == pytest.approx(0.0, abs=1e-12)
    # noise changes a non-constant network's output, and the gradient reaches its weights
    value = perturbation_consistency(conv, x, conv(x), "noise", noise_std=0.5)
    assert float(value) > 1e-4
    value.backward()
    assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0


def test_options_are_checked_with_their_names():
    assert check_consistency(None) == {"weight": 0.0, "perturbation": "noise", "noise_std": 0.1}
    assert check_consistency({"weight": 0.5, "perturbation": "flip"})["weight"] == 0.5
    with pytest.raises(ValueError, match="consistency.weight must be >= 0.0"):
        check_consistency({"weight": -1})
    with pytest.raises(ValueError, match="consistency.perturbation must be one of"):
        check_consistency({"perturbation": "rotate"})
    with pytest.raises(ValueError, match="consistency.noise_std must be > 0.0"):
        check_consistency({"noise_std": 0})
    with pytest.raises(ValueError, match="consistency has no option 'lambda'"):
        check_consistency({"lambda": 1})


@pytest.mark.slow  # a training run
def test_training_with_consistency_logs_it(phantom_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = cli("segbench.train", "debug=smoke", "consistency.weight=0.5", "consistency.perturbation=flip",
               f"paths.data_dir={phantom_dir}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run_dir / "tensorboard").glob("events*"))))
    events.Reload()
    values = [e.value for e in events.Scalars("loss/consistency")]
    assert values and all(math.isfinite(v) and v >= 0 for v in values)
    bad = cli("segbench.train", "debug=smoke", "consistency.weight=-1", f"paths.data_dir={phantom_dir}",
              f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == "segbench-train: error: consistency.weight must be >= 0.0, got -1"
