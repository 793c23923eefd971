"""Dataset sources: where the cases of a dataset are and how to read them.

A source lists :class:`CaseRef` objects and loads them as :class:`Volume`.
The data module does everything else (splits, windowing, slicing, augmentation, the
preprocessing cache), so a new dataset layout is one small :class:`DataSource` subclass
-- in segbench, or in the user's own module -- plus a data config naming it in
``source._target_``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataError
from .volume import CaseRef, Volume, load_nifti_case


class DataSource:
    """Base class of a dataset source (public API): where the cases are and how to read one.

    A source answers three calls; the data module does everything else:

    * :meth:`prepare`: make the data available (download, unpack, generate); nothing by default;
    * :meth:`cases`: every labelled case as a :class:`CaseRef` (id, image path, label path), in a
      fixed order (``data.split`` counts take cases in this order);
    * :meth:`load`: one case as a :class:`Volume`: image ``(Z, Y, X)`` in HU, label ``(Z, Y, X)``
      class ids ``0..num_classes-1``, spacing ``(sz, sy, sx)`` mm, the affine of the image file
      (predictions are written with it). :func:`~segbench.data.volume.load_nifti_case` reads and
      checks a NIfTI pair.

    The smallest complete source, for ``<root>/<case>/image.nii.gz`` + ``label.nii.gz``, in the
    user's own ``my_module.py`` (docs/extending.md)::

        from pathlib import Path
        from segbench.data import CaseRef, DataSource, load_nifti_case

        class MySource(DataSource):
            def __init__(self, root, num_classes):
                self.root, self.num_classes = Path(root), int(num_classes)

            def cases(self):
                return [CaseRef(d.name, d / "image.nii.gz", d / "label.nii.gz")
                        for d in sorted(self.root.iterdir()) if d.is_dir()]

            def load(self, ref):
                return load_nifti_case(ref, self.num_classes)

    The preprocessing cache keys a source by its class and its public attributes, and each case by
    its files' paths, sizes and modification times (``case_files(ref)``, when a case has more files
    than ``ref.image`` and ``ref.label``).
    """

    def prepare(self) -> None:
        """Make the data available (generate, unpack, ...). Nothing to do for a folder on disk."""

    def cases(self) -> list[CaseRef]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define cases()")

    def load(self, ref: CaseRef) -> Volume:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define load(ref)")

    def normalize(self, vol: Volume) -> Volume:
        """A new scan's intensities as :meth:`load` gives a case's (``segbench-predict`` reads scans itself):
        unchanged by default, HU that the data module windows (``data.window``). A source whose ``load``
        normalises intensities itself (MR percentiles: ``Volume.normalized``) does the same here."""
        return vol


class NiftiFolderSource(DataSource):
    """The raw BTCV layout: ``root/img/img0001.nii.gz`` + ``root/label/label0001.nii.gz``.

    Args:
        root: dataset folder.
        num_classes: number of classes including background (label ids must be below it).
        label_map: optional raw id -> class id mapping (unlisted ids become background),
            e.g. BTCV's 13 organs to the 8 Synapse classes.
    """

    image_dir = "img"
    label_dir = "label"
    pattern = re.compile(r"^img(\d+)\.nii(\.gz)?$")

    def __init__(self, root: str | Path, num_classes: int, label_map: dict[int, int] | None = None):
        self.root = Path(root)
        self.num_classes = int(num_classes)
        self.label_map = {int(k): int(v) for k, v in label_map.items()} if label_map else None

    def cases(self) -> list[CaseRef]:
        img_dir = self.root / self.image_dir
        if not img_dir.is_dir():
            raise DataError(f"data directory {img_dir} not found; set data.root=/path/to/dataset "
                            f"(expected {self.image_dir}/imgXXXX.nii.gz and {self.label_dir}/labelXXXX.nii.gz)")
        refs = []
        for path in sorted(img_dir.iterdir()):
            match = self.pattern.match(path.name)
            if match:
                case_id = match.group(1)
                label = self.root / self.label_dir / path.name.replace("img", "label", 1)
                refs.append(CaseRef(case_id, path, label))
        if not refs:
            raise DataError(f"no imgXXXX.nii.gz files in {img_dir}; set data.root to the dataset folder")
        return refs

    def load(self, ref: CaseRef) -> Volume:
        return load_nifti_case(ref, self.num_classes, self.label_map)


class PhantomSource(NiftiFolderSource):
    """The procedural abdominal CT phantom, generated on first use into ``root``.

    Args mirror :class:`segbench.data.phantom.PhantomSpec` (``num_cases``, ``size``,
    ``seed``, ``slice_thickness``).
    """

    def __init__(self, root: str | Path, num_cases: int = 20, size: int = 448, seed: int = 0,
                 slice_thickness: list[float] | None = None, num_classes: int = 9):
        from .phantom import PhantomSpec

        super().__init__(root, num_classes)
        kwargs = {"num_cases": int(num_cases), "size": int(size), "seed": int(seed)}
        if slice_thickness:
            kwargs["slice_thickness"] = tuple(float(t) for t in slice_thickness)
        try:
            self.spec = PhantomSpec(**kwargs)
        except ValueError as exc:
            raise DataError(f"data.phantom: {exc}") from None
        self.base = Path(root)
        self.root = self.base / self.spec.key()

    def prepare(self) -> None:
        from .phantom import ensure_phantom

        self.root = ensure_phantom(self.base, self.spec)
