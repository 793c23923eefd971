"""AbdomenCT-1K (Ma et al., TPAMI 2022): 1000+ abdominal CT scans, 4 organs.

Layout (nnU-Net-like; the release spreads images over ``AbdomenCT-1K-ImagePart1..3/`` and
keeps masks in ``Mask/``, so files are found anywhere under ``data.root``)::

    Case_00001_0000.nii.gz   image (HU)
    Case_00001.nii.gz        mask: 0 background, 1 liver, 2 kidney, 3 spleen, 4 pancreas

Images without a mask are skipped (reported once); a mask without its image is an error.
The AFW-Dice paper's protocol draws 100 cases at random and splits them 6:1:3; see
``configs/data/abdomenct1k.yaml`` (``data.split.subset=null`` uses every case).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ...errors import DataError
from ...files import natural_key
from ..volume import CaseRef, Volume, load_nifti_case
from .common import check_label_values, require_root

log = logging.getLogger("segbench.data")

CLASSES = ["background", "liver", "kidney", "spleen", "pancreas"]
IMAGE_RE = re.compile(r"^(Case_\d+)_0000\.nii(\.gz)?$")
MASK_RE = re.compile(r"^(Case_\d+)\.nii(\.gz)?$")
LAYOUT = "Case_XXXXX_0000.nii.gz images + Case_XXXXX.nii.gz masks anywhere under data.root"


class AbdomenCT1KSource:
    """AbdomenCT-1K cases under ``root`` (any folder depth)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def prepare(self) -> None:
        require_root(self.root, "AbdomenCT-1K", LAYOUT)

    def cases(self) -> list[CaseRef]:
        require_root(self.root, "AbdomenCT-1K", LAYOUT)
        images: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        for path in self.root.rglob("Case_*.nii*"):
            for pattern, found in ((IMAGE_RE, images), (MASK_RE, masks)):
                match = pattern.match(path.name)
                if match:
                    case = match.group(1)
                    if case in found:
                        raise DataError(f"{case} appears twice: {found[case]} and {path}; keep one copy under "
                                        "data.root")
                    found[case] = path
        orphans = sorted(set(masks) - set(images), key=natural_key)
        if orphans:
            raise DataError(f"mask {masks[orphans[0]]} has no image {orphans[0]}_0000.nii.gz under {self.root}")
        unlabelled = set(images) - set(masks)
        if unlabelled:
            log.info("AbdomenCT-1K: %d image(s) without a mask are skipped (e.g. %s)", len(unlabelled),
                     min(unlabelled, key=natural_key))
        if not masks:
            raise DataError(f"no AbdomenCT-1K image/mask pairs under {self.root} ({LAYOUT})")
        return [CaseRef(c, images[c], masks[c]) for c in sorted(masks, key=natural_key)]

    def load(self, ref: CaseRef) -> Volume:
        vol = load_nifti_case(ref, 256)
        check_label_values(vol.label, range(len(CLASSES)), ref.label,
                           "AbdomenCT-1K's 0..4 (1 liver, 2 kidney, 3 spleen, 4 pancreas)")
        return vol
