"""The AFW-Dice paper's protocol in the experiment configs (PROTOCOL.md A), and the losses they sweep.

Sections:
  1. the baselines of Tables 1 and 2 pool their sums the same way (batch Dice)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from segbench.losses import build_loss

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiment"
LOSS_CONFIGS = ROOT / "configs" / "loss"
ORGANS = ["background", "spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta", "pancreas"]

pytestmark = pytest.mark.usefixtures("one_thread")


def sweep(experiment: str) -> dict[str, str]:
    """The ``hydra.sweeper.params`` of an experiment config."""
    cfg = yaml.safe_load((EXPERIMENTS / f"{experiment}.yaml").read_text())
    return dict(cfg["hydra"]["sweeper"]["params"])


def swept_losses(experiment: str) -> list[str]:
    return [name.strip() for name in str(sweep(experiment)["loss"]).split(",")]


def loss_from_config(name: str):
    """The loss exactly as ``loss=<name>`` builds it for training (its YAML defaults)."""
    cfg = yaml.safe_load((LOSS_CONFIGS / f"{name}.yaml").read_text())
    return build_loss(**cfg, num_classes=len(ORGANS), class_names=ORGANS)


# ============================================================================ 1. pooling
@pytest.mark.parametrize("experiment", ["table1_synapse", "table2_abdomenct1k"])
def test_every_loss_a_table_sweeps_pools_the_batch_the_same_way(experiment):
    """Batch pooling, tested by its definition: a loss whose sums run over the whole batch gives the
    same value on a batch of two slices as on ONE image made of the two slices side by side (the CE
    terms are means over voxels either way). A per-slice Dice does not: its mean of two ratios differs
    from the ratio of the sums. Each loss is built from its config file, as ``loss=<name>`` builds it."""
    names = swept_losses(experiment)
    assert {"ce_dice", "afw_dice"} <= set(names) and len(names) == 4
    g = torch.Generator().manual_seed(0)
    C = len(ORGANS)
    logits = 2 * torch.randn(2, C, 12, 10, generator=g)
    target = torch.randint(0, C, (2, 12, 10), generator=g)
    target[1][target[1] == 4] = 0  # the gallbladder absent from the second slice, as on most slices
    side_by_side_logits = torch.cat([logits[0], logits[1]], dim=-1).unsqueeze(0)   # [1, C, 12, 20]
    side_by_side_target = torch.cat([target[0], target[1]], dim=-1).unsqueeze(0)
    for name in names:
        loss = loss_from_config(name)
        batched = float(loss(logits, target))
        pooled = float(loss(side_by_side_logits, side_by_side_target))
        assert batched == pytest.approx(pooled, rel=1e-5), (experiment, name, batched, pooled)
        # and the test can fail: the same loss scoring each slice separately differs
        if "batch" in yaml.safe_load((LOSS_CONFIGS / f"{name}.yaml").read_text()):
            cfg = yaml.safe_load((LOSS_CONFIGS / f"{name}.yaml").read_text())
            per_slice = build_loss(**{**cfg, "batch": False}, num_classes=C, class_names=ORGANS)
            assert float(per_slice(logits, target)) != pytest.approx(pooled, rel=1e-5), name
