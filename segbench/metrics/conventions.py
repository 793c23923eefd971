"""Named evaluation conventions: every number segbench reports states one of these.

The same pair of masks can score HD95 = 0 in one library and 27.5 mm in another
(medpy's ``hd95``, MONAI's ``compute_hausdorff_distance`` and DeepMind's surface-distance package
differ in the choices below). The choices that make the difference are the
fields of :class:`Convention`; each named convention fixes all of them.

Shared by all conventions (= medpy and MONAI):

* **Surface** of a mask = ``mask XOR erosion(mask)`` with the cross structuring
  element (6-connected in 3D, 4-connected in 2D). The image edge counts as
  background (``border_value=0``): a mask that touches the image edge has surface
  voxels on it. segbench crops each label to the union bounding box of its two masks
  and treats everything outside the crop as background, which is what the full
  volume holds there, so the result does not depend on how much empty space surrounds
  the masks (tested by embedding the pair in a larger volume).
* **Distances**: exact Euclidean distances between voxel centres, from each surface
  voxel to the nearest surface voxel of the other mask; d(P->G) and d(G->P).
* **Percentile**: numpy's default "linear" interpolation (virtual index
  (n - 1) * q / 100), which is also what MONAI's ``torch.quantile`` computes.
  The 2D square case of tests/test_metrics.py (spacing (2, .5)): medpy 2.0 vs MONAI 2.003. The
  difference is pooling, not the interpolation: d(P->G) has 40 values and its
  P95 index 37.05 falls between 2.0 and sqrt(2^2 + .5^2) = 2.0616, giving 2.0031 (the
  per-direction max, MONAI and segbench ``default``), while medpy takes one P95 of the
  76 pooled values, index 71.25, between two 2.0s. ``torch.quantile`` and
  ``np.percentile`` agree on the same array (tests/test_metrics.py).
* **NSD** (normalised surface distance / surface Dice at tolerance tau) is
  surface-VOXEL based: (#{d(P->G) <= tau} + #{d(G->P) <= tau}) / (n_P + n_G). DeepMind's
  surface-distance package instead weights surfels on the half-voxel grid by their
  area: two estimators of the same quantity, not interchangeable number for number.
* **ASSD** is the mean of both directions pooled: (sum d(P->G) + sum d(G->P)) /
  (n_P + n_G), as medpy.assd and MONAI's ``compute_average_surface_distance(symmetric=True)``
  (both concatenate the two directions before the mean).

Empty masks (the rules differ per convention, see :class:`Convention`): "empty"
means no voxel of the label in the map.
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
