"""Figures and overlays say what they show: words in titles, the plotted key in the title, per-organ
lines labelled with their group, DSC axes from 0, a paper-size probe, titled overlay columns with an
organ colour key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segbench.report import figures as figures_cli
from test_report import PROBE_SMALL, rows_with_base, sweep, write_run  # noqa: F401  (fixture)


@pytest.fixture
def captured(monkeypatch):
    """The figures segbench-figures draws, instead of written files."""
    figures = []

    def keep(fig, out_dir: Path, stem: str) -> list[Path]:
        figures.append(fig)
        return []

    monkeypatch.setattr(figures_cli, "save_figure", keep)
    return figures


def gamma_sweep(root: Path, bases=None) -> Path:
    """afw_dice at gamma 0.25 / 1.0, seeds 1 and 2, two loss names for --group-by."""
    job = 0
    for name in ("afw_dice", "afw_dice_code"):
        for gamma, base in (bases or {0.25: 0.84, 1.0: 0.78}).items():
            for seed in (1, 2):
                rows = rows_with_base("afw_dice", seed, base)
                write_run(root / str(job), "afw_dice", seed, rows=rows,
                          extra_config={"loss": {"name": name, "gamma": gamma}})
                job += 1
    return root


def test_titles_use_words_and_name_the_plotted_key(tmp_path, captured, sweep):  # noqa: F811 - the sweep fixture
    root = gamma_sweep(tmp_path / "gamma")
    assert figures_cli.main(["gamma", str(root), "--key", "loss.gamma", "--out", str(tmp_path / "f")]) == 0
    assert figures_cli.main(["gamma", str(root), "--key", "seed", "--out", str(tmp_path / "f")]) == 0
    assert figures_cli.main(["organs", str(sweep), "--group-by", "loss.name", "--out", str(tmp_path / "f")]) == 0
    gamma_ax, seed_ax, organs_ax = (fig.axes[0] for fig in captured)
    assert gamma_ax.get_title().startswith("DSC vs gamma (") and gamma_ax.get_xlabel() == "gamma"
    # --key seed plots DSC against the seed, and says so
    assert seed_ax.get_title().startswith("DSC vs seed (") and seed_ax.get_xlabel() == "seed"
    assert organs_ax.get_title().startswith("per-organ DSC by loss (")
    for ax in (gamma_ax, seed_ax, organs_ax):
        assert "loss.name" not in ax.get_title() and "loss.gamma" not in ax.get_title()


def test_per_organ_lines_name_their_group_and_dsc_starts_at_zero(tmp_path, captured):
    # bases this low put mean - std below 0 for the errorbar: the axis must still stop at 0
    root = gamma_sweep(tmp_path / "gamma", bases={0.25: 0.16, 1.0: 0.15})
    argv = ["gamma", str(root), "--group-by", "loss.name", "--per-organ", "--out", str(tmp_path / "f")]
    assert figures_cli.main(argv) == 0
    ax = captured[0].axes[0]
    labels = ax.get_legend_handles_labels()[1]
    organs = ("aorta", "liver", "pancreas")
    assert {f"{group}: {organ}" for group in ("afw_dice", "afw_dice_code") for organ in organs} <= set(labels)
    assert ax.get_ylim()[0] == 0.0
    assert "one line per loss" in ax.get_title()
    # each group's organ lines are drawn in that group's colour
    colours = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert colours["afw_dice: liver"] == colours["afw_dice: pancreas"] != colours["afw_dice_code: liver"]


@pytest.mark.parametrize("paper,width", [("column", 3.5), ("page", 7.0)])
def test_probe_has_paper_sizes(tmp_path, captured, paper, width):
    argv = ["probe", "--losses", "ce,dice,focal", *PROBE_SMALL, "--paper", paper, "--out", str(tmp_path)]
    assert figures_cli.main(argv) == 0
    fig = captured[0]
    assert fig.get_size_inches()[0] == pytest.approx(width)
    assert max(ax.title.get_fontsize() for ax in fig.axes if ax.get_title()) <= 7


def test_overlay_columns_are_titled_with_an_organ_colour_key():
    from segbench.report.overlays import PALETTE, figure_to_rgb, overlay_figure

    label = np.zeros((32, 32), np.int64)
    label[4:12, 4:12], label[20:28, 20:28] = 1, 2
    image = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    fig = overlay_figure([image, image], [label, label], [label, np.zeros_like(label)],
                         ["background", "liver", "spleen"])
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "ground truth", "prediction"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["liver", "spleen"]  # background is not painted
    key_colours = [np.asarray(h.get_facecolor()[:3]) for h in legend.legend_handles]
    np.testing.assert_allclose(key_colours, PALETTE[1:3], atol=1e-6)
    rgb = figure_to_rgb(fig)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
