"""Post-processing of predicted label maps (``test.postprocess``, ``segbench-predict postprocess=``).

``largest_component``: per organ (every label id > 0), keep the largest connected component of its voxels and
set the other components to background (0), as nnU-Net's ``remove_all_but_largest_component`` does (nnU-Net v2:
``acvl_utils.morphology.morphology_helper``, ``skimage.measure.label`` with ``connectivity=None``):

* **connectivity: full, 26 in 3D** (8 in 2D): voxels that share a face, an edge or a corner are connected
  (``scipy.ndimage.label`` with a 3 x 3 x 3 block of ones; skimage's ``connectivity=None`` is "a full
  connectivity of ``input.ndim``"). It is counted on the voxel grid, whatever the spacing. A 2D model's
  prediction is a whole case ``(Z, Y, X)`` here, so its components run across slices too;
* **ties**: every component of the largest size is kept (nnU-Net keeps ``[i for i, j in zip(ids, sizes)
  if j == max(sizes)]``);
* unlike nnU-Net, it is not chosen per organ on a cross-validation: with ``largest_component`` every organ is
  post-processed, and the raw scores are written beside the post-processed ones (:mod:`segbench.metrics.results`)
  so that a table can show either.

Everything runs on the host (numpy / scipy) after the argmax, within each organ's bounding box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConfigError

#: the values of ``test.postprocess`` (and segbench-predict's ``postprocess``)
POSTPROCESS = ("none", "largest_component")
#: what ``largest_component`` does, in the words ``summary.json`` records
DESCRIPTIONS = {
    "largest_component": "per organ, the largest connected component of its voxels is kept (26-connectivity in 3D, "
                         "8 in 2D, on the voxel grid; components tied for the largest size are all kept) and the "
                         "other components are set to background, as nnU-Net's remove_all_but_largest_component",
}


def check_postprocess(value, key: str = "test.postprocess") -> str:
    """``value`` when it is one of :data:`POSTPROCESS`, else one-line :class:`ConfigError`."""
    if value is None:
        return "none"
    if value not in POSTPROCESS:
        raise ConfigError(f"{key}={value!r} is unknown; choose none or largest_component (per organ, the largest "
                          "connected component, 26-connectivity)")
    return str(value)


def largest_component(labels: np.ndarray) -> np.ndarray:
    """A copy of the integer label map ``labels`` (2D or 3D) in which each label id > 0 keeps only its largest
    connected component(s) (full connectivity: 26 in 3D); the voxels of its other components become 0."""
    from scipy import ndimage

    labels = np.asarray(labels)
    out = labels.copy()
    if labels.size == 0 or not labels.any():
        return out
    structure = np.ones((3,) * labels.ndim, dtype=bool)  # full connectivity (26 in 3D)
    # one pass for every organ's bounding box (slices[k - 1] is label k's; None where absent)
    boxes = ndimage.find_objects(labels)
    for index, box in enumerate(boxes):
        if box is None:
            continue
        organ = index + 1
        mask = labels[box] == organ
        components, count = ndimage.label(mask, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components[mask], minlength=count + 1)[1:]
        keep = np.flatnonzero(sizes == sizes.max()) + 1
        drop = mask & ~np.isin(components, keep) if len(keep) > 1 else mask & (components != keep[0])
        out[box][drop] = 0
    return out


def apply_postprocess(labels: np.ndarray, method: str) -> np.ndarray:
    """``labels`` post-processed by ``method`` (:data:`POSTPROCESS`; ``none`` returns ``labels`` itself)."""
    method = check_postprocess(method)
    return labels if method == "none" else largest_component(labels)


def postprocessed_dir(prediction_dir: str | Path) -> Path:
    """Where the post-processed label maps of ``prediction_dir`` go: ``predictions/`` ->
    ``predictions_postprocessed/`` (``predictions_cv/`` -> ``predictions_cv_postprocessed/``)."""
    prediction_dir = Path(prediction_dir)
    return prediction_dir.with_name(prediction_dir.name + "_postprocessed")
