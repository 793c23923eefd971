"""The specification of a phantom dataset (:class:`PhantomSpec`, whose ``key()`` names the cache
folder), the generator version, and the seed of each case."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np

#: Bumped whenever a change to this package changes the generated images: it is part of the
#: cache key, so stale caches are never reused.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate. Equal specs give identical files; ``key()`` names the cache folder.

    Args:
        num_cases: number of cases (ids 0001..).
        size: in-plane matrix (square). Spacing = field of view / size.
        fov_mm: per-case field-of-view range in mm. A bigger patient gets a bigger field of view
            (as a radiographer sets it), which keeps the foreground at the 7-9 % of real scans.
        slice_thickness: per-case random choice of slice thickness in mm.
        z_extent_mm: per-case cranio-caudal coverage range in mm (bigger patient, longer scan).
            The scan starts just above the liver dome and always covers all 8 organs (a range too
            short for that is lengthened to the organs' span, 180-210 mm).
        seed: dataset seed; case ``i`` uses ``case_seed(seed, i)``.
    """

    num_cases: int = 20
    size: int = 448
    fov_mm: tuple[float, float] = (340.0, 420.0)
    slice_thickness: tuple[float, ...] = (2.5, 3.0, 5.0)
    z_extent_mm: tuple[float, float] = (180.0, 230.0)
    seed: int = 0

    def __post_init__(self):
        # normalise sequences from configs (lists, OmegaConf ListConfig) to tuples of floats
        for name in ("fov_mm", "slice_thickness", "z_extent_mm"):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, tuple(float(v) for v in value))
            except (TypeError, ValueError):
                raise ValueError(f"PhantomSpec.{name} must be a sequence of numbers, got {value!r}") from None
        if isinstance(self.num_cases, bool) or not isinstance(self.num_cases, (int, np.integer)) \
                or not 1 <= self.num_cases <= 9999:
            raise ValueError(f"PhantomSpec.num_cases must be an integer in 1..9999 (4-digit case ids), "
                             f"got {self.num_cases!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or not 32 <= self.size <= 1024:
            raise ValueError(f"PhantomSpec.size must be an integer in 32..1024 pixels, got {self.size!r}")
        _check_range("fov_mm", self.fov_mm, 300.0, 600.0, "mm (bodies are 300-380 mm wide)")
        _check_range("z_extent_mm", self.z_extent_mm, 100.0, 600.0,
                     "mm (the 8 organs span 180-210 mm; a shorter scan is lengthened to cover them)")
        if not self.slice_thickness or any(not 0.5 <= t <= 20.0 for t in self.slice_thickness):
            raise ValueError(f"PhantomSpec.slice_thickness must be a non-empty list of thicknesses in "
                             f"0.5..20 mm, got {self.slice_thickness!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"PhantomSpec.seed must be an integer >= 0, got {self.seed!r}")
        object.__setattr__(self, "num_cases", int(self.num_cases))
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "seed", int(self.seed))

    def as_dict(self) -> dict:
        """JSON-ready fields (tuples as lists), as recorded in dataset.json."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {name: list(value) if isinstance(value, tuple) else value for name, value in fields.items()}

    def key(self) -> str:
        """Cache folder name, e.g. ``n20_s448_1a2b3c4d``: every field and the generator version are hashed."""
        payload = json.dumps({"spec": self.as_dict(), "generator_version": GENERATOR_VERSION}, sort_keys=True)
        return f"n{self.num_cases}_s{self.size}_{hashlib.sha1(payload.encode()).hexdigest()[:8]}"


def _check_range(name: str, value: tuple[float, ...], low: float, high: float, unit: str) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(f"PhantomSpec.{name} must be (min, max) with {low:g} <= min <= max <= {high:g} {unit}, "
                         f"got {value!r}")


def case_seed(dataset_seed: int, case_number: int) -> int:
    """The seed of case ``case_number`` (1-based) of a dataset: independent of how many cases exist."""
    return int(np.random.SeedSequence([dataset_seed, case_number]).generate_state(1, dtype=np.uint64)[0] >> 1)
