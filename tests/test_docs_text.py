"""The docs' description of the default run and of the outputs cannot drift from the code: the numbers are read
from the composed config, the TensorBoard tags from a real (smoke) run. (The pages: docs/getting-started.md,
"What the default run does"; docs/outputs.md, the run directory's table.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from helpers import cli
from segbench.config import CONFIG_DIR

DOCS = Path(__file__).resolve().parents[1] / "docs"
GETTING_STARTED = (DOCS / "getting-started.md").read_text()
OUTPUTS = (DOCS / "outputs.md").read_text()


def section(title: str, text: str = GETTING_STARTED) -> str:
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start:end]


def short(x: float) -> str:
    """1e-4 as the docs write it (Python writes 0.0001)."""
    return f"{x:.0e}".replace("e-0", "e-") if x < 1e-3 else f"{x:g}"


def test_quickstart_description_matches_its_config():
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train")  # segbench-train with no arguments = experiment=quickstart
    text = " ".join(section("## What the default run does").split())
    widths = "-".join(str(cfg.model.width * 2 ** i) for i in range(cfg.model.depth if "depth" in cfg.model else 5))
    expected = [
        f"at width {cfg.model.width} ({widths};",
        f"{cfg.data.img_size} x {cfg.data.img_size} axial slices",
        f"batch {cfg.data.batch_size},",
        f"SGD (lr {cfg.optimizer.lr}, momentum {cfg.optimizer.momentum}, "
        f"weight decay {short(cfg.optimizer.weight_decay)})",
        f"poly decay per {cfg.scheduler.interval}",
        f"for {cfg.trainer.max_epochs} epochs",
        f"splits it {cfg.data.split.train} train / {cfg.data.split.val} validation / {cfg.data.split.test} test",
        f"({cfg.data.phantom.num_cases} cases, {cfg.data.phantom.size} x {cfg.data.phantom.size} in-plane",
        f"seed {cfg.seed}",
    ]
    for phrase in expected:
        assert phrase in text, f"docs/getting-started.md's default-run description lacks {phrase!r}"
    assert f"{cfg.trainer.max_epochs} short" in text or f"{cfg.trainer.max_epochs} epochs" in text


@pytest.mark.slow  # a training run
def test_tensorboard_tags_in_the_readme_are_the_ones_a_run_writes(phantom_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    # the paper's loss (its learnable weights) under deep supervision (each scale's loss): every tag the README names
    proc = cli("segbench.train", "debug=smoke", "loss=afw_dice", "model.deep_supervision=true", "num_threads=1",
               f"paths.data_dir={phantom_dir}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    written = set(events.Tags()["scalars"]) | set(events.Tags()["images"])
    row = next(line for line in OUTPUTS.splitlines() if line.startswith("| `tensorboard/` |"))
    documented = set(re.findall(r"`([A-Za-z0-9_-]+(?:/[A-Za-z0-9_<>-]+)*)`", row)) - {"tensorboard/"}
    patterns = {tag: re.compile("^" + re.sub(r"<[a-z_ ]+>", "[^/]+(/[^/]+)?", tag) + "$") for tag in documented}
    for tag in written:  # every tag the run writes is in docs/outputs.md (literally or as a <pattern>)
        assert any(p.match(tag) for p in patterns.values()), f"TensorBoard tag {tag!r} is not in docs/outputs.md"
    for tag, pattern in patterns.items():  # and every tag the page names is written
        assert any(pattern.match(t) for t in written), f"docs/outputs.md names {tag!r}, which no run writes"
