"""Named evaluation conventions: every number segbench reports states one of these.

The same pair of masks can score HD95 = 0 in one library and 27.5 mm in another
(see ``/work/shared/METRICS.md``). The choices that make the difference are the
fields of :class:`Convention`; each named convention fixes all of them.

All conventions share the surface definition of medpy and MONAI: the surface of a
mask is ``mask XOR erosion(mask)`` with the 6-connected (2D: 4-connected) cross,
and the image edge counts as background, so a mask that touches the image edge has
surface voxels on it. Distances are exact Euclidean distances between voxel centres.
"""

from __future__ import annotations

from dataclasses import dataclass

METRIC_NAMES = ("dsc", "hd", "hd95", "assd", "nsd")


@dataclass(frozen=True)
class Convention:
    """One complete set of metric choices.

    Attributes:
        name: the key in :data:`CONVENTIONS`, written into every results file.
        use_spacing: distances in mm (voxel spacing applied) or in voxels.
        pooled_percentile: HD95 as ONE percentile of the pooled distances of both
            directions (medpy), instead of the max of the two per-direction
            percentiles (MONAI, MetricsReloaded, DeepMind).
        empty_rule: ``"worst_case"`` (segbench: both empty -> NaN; one empty -> DSC 0,
            distances = volume diagonal, NSD 0) or ``"transunet"`` (TransUNet's
            ``calculate_metric_percase``: pred and gt non-empty -> computed;
            pred non-empty and gt empty -> DSC 1, distances 0; otherwise DSC 0, distances 0).
        nsd: whether NSD is defined under this convention (NaN otherwise).
        description: one line for result files and table captions.
    """

    name: str
    use_spacing: bool
    pooled_percentile: bool
    empty_rule: str
    nsd: bool
    description: str


CONVENTIONS: dict[str, Convention] = {
    "default": Convention(
        name="default",
        use_spacing=True,
        pooled_percentile=False,
        empty_rule="worst_case",
        nsd=True,
        description=(
            "default: DSC = 2TP/(2TP+FP+FN); surface = mask XOR 6-connected erosion (image edge is "
            "background); exact Euclidean distances in mm; HD95 = max of the two per-direction 95th "
            "percentiles (linear interpolation); HD = max; ASSD = mean of both directions pooled; "
            "NSD = fraction of surface voxels of both masks within the tolerance (mm); both empty: "
            "all NaN (excluded, counted); exactly one empty: DSC 0, HD = HD95 = ASSD = volume "
            "diagonal (mm), NSD 0"
        ),
    ),
    "transunet": Convention(
        name="transunet",
        use_spacing=False,
        pooled_percentile=True,
        empty_rule="transunet",
        nsd=False,
        description=(
            "transunet: TransUNet calculate_metric_percase = medpy dc and hd95 WITHOUT voxel spacing "
            "(HD95 in voxels, one 95th percentile of both directions pooled); pred and gt non-empty: "
            "computed; pred non-empty and gt empty: DSC 1, HD95 0; pred empty: DSC 0, HD95 0; HD and "
            "ASSD are medpy hd/assd in voxels with the same empty rules; NSD not defined (NaN)"
        ),
    ),
    "medpy": Convention(
        name="medpy",
        use_spacing=True,
        pooled_percentile=True,
        empty_rule="worst_case",
        nsd=True,
        description=(
            "medpy: medpy hd95 in mm (one 95th percentile of both directions pooled, linear "
            "interpolation); DSC, HD, ASSD, NSD and the empty-mask rules as in 'default' (medpy "
            "itself raises on an empty mask)"
        ),
    ),
}


def get_convention(convention: str | Convention) -> Convention:
    """Return the :class:`Convention` named ``convention`` (ValueError listing the valid names)."""
    if isinstance(convention, Convention):
        return convention
    try:
        return CONVENTIONS[convention]
    except (KeyError, TypeError):
        raise ValueError(
            f"convention: unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}"
        ) from None


def describe(convention: str | Convention) -> str:
    """One-line statement of ``convention``, to be written next to every number it produced."""
    return get_convention(convention).description


def hd_unit(convention: str | Convention) -> str:
    """Unit of HD, HD95 and ASSD under ``convention``: ``"mm"`` or ``"voxels"``."""
    return "mm" if get_convention(convention).use_spacing else "voxels"


def case_status(pred_mask_nonempty: bool, gt_mask_nonempty: bool) -> str:
    """Classify one (case, label) pair: ``"ok"``, ``"gt_empty"``, ``"pred_empty"`` or ``"both_empty"``."""
    if pred_mask_nonempty and gt_mask_nonempty:
        return "ok"
    if pred_mask_nonempty:
        return "gt_empty"
    if gt_mask_nonempty:
        return "pred_empty"
    return "both_empty"
