"""A procedural abdominal CT phantom: segbench's built-in dataset, generated on first use.

A new user trains on it with no download. It is built as a fair stand-in for Synapse
(BTCV), not an easy toy: portal-venous-phase Hounsfield units, so the pancreas and the
gallbladder have little contrast to the bowel, duodenum and vessels around them;
unlabelled look-alikes next to every target (IVC beside the aorta, duodenum and jejunum
around the pancreas, colon and duodenum under the gallbladder); realistic organ volumes,
so the small organs are a few hundred voxels per slice at most and the background is
over 90 % of the scan; smooth random deformation, per-case size and position
variation, partial-volume blur and noise.

Conventions
-----------
Arrays are ``(Z, Y, X)``: Z = slice, inferior -> superior; Y = row, anterior ->
posterior; X = column, patient right -> patient left (radiological display: the
patient's right is on the image's left, anterior at the top). Spacing is
``(sz, sy, sx)`` in mm in the same order. The anatomy is laid out in a *body frame*
in mm with the same axis directions: x to the patient's left, y posterior, z superior;
origin at the centre of the body outline in-plane and at the centre of the L1
vertebral body in z. Every anatomical coordinate in the tables below is for an average
adult (patient scale 1) and is multiplied by the case's patient scale.

Anatomy (adult; volumes at patient scale 1)
-------------------------------------------
=========== ============ ==================================================================
structure   volume       where
=========== ============ ==================================================================
liver       1500 mL      right upper quadrant under the right dome of the diaphragm; thick
                         right lobe hugging the lateral wall down to ~L3, thin left lobe
                         crossing the midline anteriorly, over the stomach
spleen      200 mL       left upper quadrant, posterolateral, crescent against the ribs
kidneys     150 mL each  either side of the spine (T12-L3), lateral to psoas, upper poles
                         tilted medially/posteriorly, hilum anteromedial with sinus fat;
                         the right one 16 mm lower (the liver pushes it down)
stomach     300 mL       left upper quadrant, anterior: fundus under the left dome, body
                         down and forward, antrum crossing to the pylorus right of midline;
                         wall, fluid contents and a gas pocket in the anterior part
pancreas    70 mL        thin lobulated tube in front of the spine, aorta and SMA: head in
                         the duodenal C-loop right of midline, neck in front of the portal
                         confluence, tail rising to the splenic hilum; splenic vein behind
gallbladder 30 mL        pear-shaped, in the fossa of the liver's inferior surface, fundus
                         poking below the liver edge forwards and downwards
aorta       21 mm tube   just in front of and left of the vertebral bodies, whole scan
=========== ============ ==================================================================

Unlabelled structures (label 0): body outline with subcutaneous fat and body-wall
muscle, visceral fat, vertebral bodies with discs and posterior elements, paraspinal,
psoas and quadratus muscles, ribs 7-12, lung bases and heart above the diaphragm, IVC,
portal/splenic/superior mesenteric/renal veins, celiac/hepatic/splenic/superior
mesenteric arteries, duodenal C-loop, jejunal loops, colon with faeces and gas.

Hounsfield units (portal venous phase, PROTOCOL.md section E; each case draws every
tissue uniformly from its range, see ``TISSUE_TABLE``):

=============================== =========== ===============================================
tissue                          HU          note
=============================== =========== ===============================================
liver / intrahepatic vessels    100-130 / 150-190  vessels are part of the liver label
spleen                          110-130
kidney cortex / medulla         150-200 / 100-140
pancreas                        80-120      collapsed bowel: pancreas -30..+10, bowel wall 70-110
gallbladder bile / wall         0-20 / 40-70  fluid-filled bowel 5-30
stomach wall / contents / gas   60-90 / 0-40 / -1000
aorta (and arteries)            160-230     IVC 95-130, portal/splenic/renal veins 150-190
fat subcutaneous / visceral     -115..-90 / -105..-80
muscle / disc / bone            40-60 / 70-100 / 180-280 cancellous, 600-900 cortex, ribs 300-500
lung / air                      -900..-830 / -1000
=============================== =========== ===============================================

Variation per case: patient scale 0.92-1.08 (positions x scale, volumes x scale**3), each
organ's volume x 0.9-1.1, organ-group offsets (sd 4 mm), body offset, subcutaneous fat
10-35 mm, smooth random deformation of every organ (and lobulation of the pancreas), HU
per tissue, noise sd 10-25 HU, in-plane blur sd 0.5-0.8 mm. Every labelled organ is grown
(by thresholding its deformed shape function) to exactly its drawn volume.

Cache layout (raw BTCV): ``root/<spec.key()>/img/img0001.nii.gz``,
``label/label0001.nii.gz``, ..., ``dataset.json`` (written last, once every case exists).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import zlib
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage
from scipy.interpolate import make_interp_spline

from segbench import SYNAPSE_ORGANS
from segbench.files import TEMPORARY_PREFIX, replace_atomically

try:  # POSIX advisory locks; without them (Windows) concurrent generators are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

#: Bumped whenever a change to this module changes the generated images: it is part of the
#: cache key, so stale caches are never reused.
GENERATOR_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Tissues: one id per tissue in the painted map; the label and the image both come from it.
# ---------------------------------------------------------------------------------------------


class Tissue(IntEnum):
    AIR = 0
    LUNG = 1
    SUBCUTANEOUS_FAT = 2
    VISCERAL_FAT = 3  # the free space organs are placed into
    MUSCLE = 4
    CANCELLOUS_BONE = 5
    CORTICAL_BONE = 6
    RIB = 7
    DISC = 8
    SPINAL_CANAL = 9
    HEART = 10
    AORTA = 11
    ARTERY = 12
    IVC = 13
    VEIN = 14
    LIVER = 15
    LIVER_VESSEL = 16
    SPLEEN = 17
    KIDNEY_R_CORTEX = 18
    KIDNEY_R_MEDULLA = 19
    KIDNEY_L_CORTEX = 20
    KIDNEY_L_MEDULLA = 21
    RENAL_SINUS_FAT = 22
    GALLBLADDER_BILE = 23
    GALLBLADDER_WALL = 24
    PANCREAS = 25
    STOMACH_WALL = 26
    STOMACH_CONTENT = 27
    STOMACH_GAS = 28
    BOWEL_WALL = 29
    BOWEL_COLLAPSED = 30
    BOWEL_FLUID = 31
    BOWEL_GAS = 32
    FAECES = 33


#: tissue -> (Synapse label id, (HU low, HU high)). Portal venous phase values from
#: PROTOCOL.md section E, completed from standard CT tables where the protocol is silent.
#: For the tissues in _HU_TIED the range is an offset from the tissue they are tied to.
TISSUE_TABLE: dict[Tissue, tuple[int, tuple[float, float]]] = {
    Tissue.AIR: (0, (-1000, -1000)),
    Tissue.LUNG: (0, (-900, -830)),  # aerated lung bases
    Tissue.SUBCUTANEOUS_FAT: (0, (-115, -90)),
    Tissue.VISCERAL_FAT: (0, (-105, -80)),  # a little denser: small vessels and lymph nodes
    Tissue.MUSCLE: (0, (40, 60)),
    Tissue.CANCELLOUS_BONE: (0, (180, 280)),
    Tissue.CORTICAL_BONE: (0, (600, 900)),
    Tissue.RIB: (0, (300, 500)),  # thin ribs: cortex and marrow averaged within a voxel
    Tissue.DISC: (0, (70, 100)),
    Tissue.SPINAL_CANAL: (0, (10, 30)),
    Tissue.HEART: (0, (100, 140)),
    Tissue.AORTA: (7, (160, 230)),
    Tissue.ARTERY: (0, (0, 0)),  # tied to the aorta: same blood
    Tissue.IVC: (0, (95, 130)),  # infrarenal mixing of unenhanced blood: >= 30 HU below the aorta
    Tissue.VEIN: (0, (150, 190)),  # portal, splenic, superior mesenteric and renal veins
    Tissue.LIVER: (5, (100, 130)),
    Tissue.LIVER_VESSEL: (5, (150, 190)),  # intrahepatic portal/hepatic veins: part of the liver label
    Tissue.SPLEEN: (1, (110, 130)),
    Tissue.KIDNEY_R_CORTEX: (2, (150, 200)),
    Tissue.KIDNEY_R_MEDULLA: (2, (100, 140)),
    Tissue.KIDNEY_L_CORTEX: (3, (0, 0)),  # tied to the right side
    Tissue.KIDNEY_L_MEDULLA: (3, (0, 0)),
    Tissue.RENAL_SINUS_FAT: (0, (-90, -60)),
    Tissue.GALLBLADDER_BILE: (4, (0, 20)),
    Tissue.GALLBLADDER_WALL: (4, (40, 70)),
    Tissue.PANCREAS: (8, (80, 120)),
    Tissue.STOMACH_WALL: (6, (60, 90)),
    Tissue.STOMACH_CONTENT: (6, (0, 40)),  # water to mixed food
    Tissue.STOMACH_GAS: (6, (-1000, -950)),
    Tissue.BOWEL_WALL: (0, (70, 110)),  # enhancing mucosa
    Tissue.BOWEL_COLLAPSED: (0, (-30, 10)),  # tied to the pancreas: collapsed loops look like it
    Tissue.BOWEL_FLUID: (0, (5, 30)),  # fluid-filled loops look like the gallbladder
    Tissue.BOWEL_GAS: (0, (-1000, -950)),
    Tissue.FAECES: (0, (-80, 20)),
}

#: Tissues drawn as another one's HU plus an offset from their TISSUE_TABLE range: the same blood,
#: the same kidney tissue on both sides, and collapsed bowel within -30..+10 HU of the pancreas.
_HU_TIED = {Tissue.ARTERY: Tissue.AORTA, Tissue.KIDNEY_L_CORTEX: Tissue.KIDNEY_R_CORTEX,
            Tissue.KIDNEY_L_MEDULLA: Tissue.KIDNEY_R_MEDULLA, Tissue.BOWEL_COLLAPSED: Tissue.PANCREAS}

_LABEL_OF_TISSUE = np.array([TISSUE_TABLE[t][0] for t in Tissue], dtype=np.uint8)

# ---------------------------------------------------------------------------------------------
# Organ table and nominal anatomy (patient scale 1, body frame, mm; x left, y posterior, z superior)
# ---------------------------------------------------------------------------------------------

#: Target volumes at patient scale 1 (PROTOCOL.md section E; Synapse cases). Each case multiplies
#: them by patient_scale**3 (0.78-1.26) and by a per-organ factor (0.9-1.1).
ORGAN_VOLUME_ML = {"liver": 1500.0, "spleen": 200.0, "kidney_r": 150.0, "kidney_l": 150.0,
                   "stomach": 300.0, "pancreas": 70.0, "gallbladder": 30.0}
AORTA_DIAMETER_MM = 21.0
PATIENT_SCALE_RANGE = (0.92, 1.08)  # linear size, i.e. +-8 % (volumes x 0.78-1.26)
ORGAN_VOLUME_JITTER = (0.9, 1.1)
POSITION_JITTER_MM = 4.0  # sd of the per-organ-group offset, clipped at 2 sd
NOISE_SIGMA_HU = (10.0, 25.0)
SUBCUTANEOUS_FAT_MM = (10.0, 35.0)

# Body cavity (inside the body-wall muscle): half-width, anterior and posterior half-depths.
CAVITY_HALF_AXES = (128.0, 95.0, 85.0)
BODY_WALL_MUSCLE_MM = 10.0
OUTLINE_EXPONENT = 2.4  # superellipse: an abdomen is boxier than an ellipse

# Spine: vertebral body centre (y), half-axes, spinal canal; 26 mm vertebrae + 8 mm discs.
VERTEBRA_CENTRE_Y = 30.0
VERTEBRA_HALF_AXES = (22.0, 16.0)
VERTEBRA_PERIOD_MM, DISC_HEIGHT_MM = 34.0, 8.0
CANAL_CENTRE_Y, CANAL_RADIUS = 57.0, 9.0

# Diaphragm domes (peak x, y, z): the liver top sits under the right one. Flat-topped: the surface
# drops by DOME_DROP_MM * (distance / DOME_RADIUS_MM) ** 3, ~20 mm at the lateral wall and ~100 mm
# in the posterior costophrenic recesses.
RIGHT_DOME, LEFT_DOME, DOME_DROP_MM, DOME_RADIUS_MM = (-55.0, 0.0, 95.0), (55.0, 10.0, 82.0), 100.0, 130.0

# Ellipsoid organs: centre (x, y, z) and half-axes. Kidney axes: long, towards the hilum, third.
KIDNEY_CENTRE = {"kidney_r": (-72.0, 42.0, -28.0), "kidney_l": (72.0, 42.0, -12.0)}
KIDNEY_HALF_AXES = (55.0, 30.0, 24.0)
SPLEEN_CENTRE, SPLEEN_HALF_AXES = (94.0, 40.0, 40.0), (22.0, 36.0, 56.0)  # thickness, width, length
GALLBLADDER_CENTRE, GALLBLADDER_HALF_AXES = (-42.0, -45.0, -18.0), (38.0, 15.0, 13.0)
GALLBLADDER_AXIS = (-0.25, 0.55, 0.8)  # fundus (anterior-inferior) -> neck (posterior-superior)

#: Liver: an ellipsoid in x whose y/z centre and half-axes blend from the right lobe (at
#: LIVER_X[0], beyond the cavity wall so the lobe fills the right side) to the left lobe tip.
LIVER_X = (-150.0, 58.0)
LIVER_RIGHT_LOBE = {"centre_y": 5.0, "half_y": 88.0, "centre_z": 15.0, "half_z": 88.0}
LIVER_LEFT_LOBE = {"centre_y": -55.0, "half_y": 22.0, "centre_z": 55.0, "half_z": 34.0}

#: Tubes: control points (x, y, z) and radii, in mm. Centre lines are cubic splines through them.
#: Points beyond the scan are fine (they are clipped), and make the vessels cross the whole scan.
TUBES: dict[str, tuple[list[tuple[float, float, float]], list[float]]] = {
    # radius factor x AORTA_DIAMETER_MM / 2: slight taper towards the bifurcation
    "aorta": ([(12, 0, -160), (10, -1, -60), (10, 0, 10), (14, 8, 70), (22, 22, 170)],
              [0.92, 0.96, 1.0, 1.02, 1.04]),
    "ivc": ([(-24, 2, -160), (-24, 2, -40), (-26, -4, 30), (-22, -12, 80), (-12, -20, 130)],
            [11, 11, 12, 12, 13]),
    "sma": ([(10, -9, 2), (9, -14, -15), (8, -22, -40), (6, -32, -80), (4, -36, -160)], [3.5] * 5),
    "celiac_hepatic": ([(10, -9, 18), (8, -24, 22), (-20, -25, 15), (-40, -15, 18)], [3.5, 3.0, 2.5, 2.5]),
    "splenic_artery": ([(8, -24, 22), (30, -18, 2), (55, -6, 2), (78, 15, 10), (88, 30, 22)], [2.5] * 5),
    "smv": ([(-8, -34, -160), (-8, -32, -60), (-6, -20, -30)], [5.5, 5.5, 6.0]),
    "portal_vein": ([(-6, -20, -30), (-22, -16, -8), (-42, -10, 15)], [7.0, 7.0, 6.5]),
    "left_renal_vein": ([(25, 2, -20), (8, -13, -21), (-12, -8, -22), (-22, -2, -22)], [5.0, 4.0, 4.5, 5.0]),
    "right_renal_vein": ([(-26, 4, -28)], [5.0]),
    # pancreas: uncinate/lower head, head, neck, body, tail, tail tip at the splenic hilum
    "pancreas": ([(-34, -10, -60), (-38, -14, -42), (-16, -32, -30), (14, -36, -22), (46, -18, -13),
                  (72, 12, -3)], [12, 15, 9, 10, 10, 8]),
    # duodenum: pylorus, bulb (D1), descending (D2), horizontal (D3) between SMA and aorta, D4, flexure
    "duodenum": ([(-15, -58, -8), (-38, -45, -10), (-58, -24, -20), (-63, -12, -42), (-58, -10, -66),
                  (-30, -22, -80), (0, -24, -82), (22, -22, -72), (32, -26, -52), (38, -32, -40)],
                 [11, 13, 12, 11, 11, 10, 10, 10, 10, 10]),
    # stomach: fundus, upper body, lower body, antrum, pylorus
    "stomach": ([(50, 18, 76), (62, -12, 52), (54, -48, 18), (18, -66, 0), (-15, -58, -8)], [30, 34, 30, 20, 11]),
    # colon: ascending, hepatic flexure, transverse (anterior, sagging), splenic flexure, descending
    "colon": ([(-95, 5, -160), (-92, 0, -70), (-80, -40, -38), (-40, -72, -55), (10, -82, -60),
               (60, -70, -38), (92, -20, 8), (100, 15, -40), (98, 18, -160)],
              [20, 20, 20, 18, 18, 18, 16, 14, 14]),
    # intrahepatic vessels (painted only inside the liver): hepatic veins to the IVC, portal branches
    "hepatic_vein_right": ([(-22, -5, 85), (-70, 5, 65), (-110, 15, 40)], [6, 4, 2.5]),
    "hepatic_vein_middle": ([(-22, -5, 85), (-40, -35, 55), (-50, -65, 25)], [5.5, 4, 2.5]),
    "hepatic_vein_left": ([(-22, -5, 85), (-5, -40, 70), (15, -65, 60)], [5, 3.5, 2.5]),
    "portal_branch_right": ([(-42, -10, 15), (-80, 5, 20), (-110, 20, 5)], [6, 4.5, 3]),
    "portal_branch_left": ([(-42, -10, 15), (-20, -40, 40), (10, -62, 55)], [5.5, 4, 2.5]),
}

#: Jejunal/ileal loops: random smooth walks in this box (x, y, z ranges; body frame, scale 1).
SMALL_BOWEL_BOX = ((-70.0, 95.0), (-90.0, -5.0), (-125.0, 5.0))


# ---------------------------------------------------------------------------------------------
# The specification of a phantom dataset
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Geometry helpers: a box of the grid, smooth random fields, tubes
# ---------------------------------------------------------------------------------------------


@dataclass
class _Grid:
    """Body-frame coordinates (mm) of the voxel centres along each array axis."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray

    def box(self, low_xyz: Sequence[float], high_xyz: Sequence[float]) -> tuple[slice, slice, slice] | None:
        """Array slices (Z, Y, X) of the voxels inside an (x, y, z) box in mm, or None if it misses the grid."""
        slices = tuple(_index_range(axis, low_xyz[k], high_xyz[k])
                       for axis, k in ((self.z, 2), (self.y, 1), (self.x, 0)))
        return None if any(s.stop <= s.start for s in slices) else slices

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinate arrays of a box."""
        return (self.z[box[0]][:, None, None].astype(np.float32), self.y[box[1]][None, :, None].astype(np.float32),
                self.x[box[2]][None, None, :].astype(np.float32))


def _index_range(coordinates: np.ndarray, low: float, high: float) -> slice:
    """Indices of the sorted ``coordinates`` within [low, high] (possibly empty)."""
    return slice(int(np.searchsorted(coordinates, low)), int(np.searchsorted(coordinates, high, side="right")))


def _smooth_noise(rng: np.random.Generator, low_xyz, high_xyz, correlation_mm: float, grid: _Grid,
                  box: tuple[slice, slice, slice] | None) -> np.ndarray | None:
    """A smooth random field with unit standard deviation over ``box``.

    A lattice of Gaussian bumps (spacing = correlation length) with random weights, evaluated
    separably (three small matrix products). The lattice covers the mm box ``low..high``, so the
    random draws do not depend on the image resolution: the same case at 96 or 448 pixels is the
    same patient.
    """
    bases, counts = [], []
    for axis, lo, hi in ((0, low_xyz[2], high_xyz[2]), (1, low_xyz[1], high_xyz[1]), (2, low_xyz[0], high_xyz[0])):
        centres = np.arange(lo - correlation_mm, hi + correlation_mm + 1e-6, correlation_mm)
        counts.append(len(centres))
        if box is not None:
            coords = (grid.z, grid.y, grid.x)[axis][box[axis]]
            bases.append(np.exp(-0.5 * ((coords[:, None] - centres[None, :]) / (0.6 * correlation_mm)) ** 2)
                         .astype(np.float32))
    weights = rng.standard_normal(counts).astype(np.float32)
    if box is None:
        return None
    basis_z, basis_y, basis_x = bases
    field = np.tensordot(basis_z, np.matmul(basis_y, weights @ basis_x.T), axes=(1, 0))
    # per axis, sum_k bump_k(x)**2 ~ sqrt(pi) * 0.6 for bumps of sd 0.6 x spacing: normalise to unit sd
    return field / np.float32((np.sqrt(np.pi) * 0.6) ** 1.5)


def _centre_line(points: np.ndarray, radii: np.ndarray, step_fraction: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Sample a smooth curve through ``points`` (n, 3) with steps of ~step_fraction x the local radius."""
    distinct = np.concatenate([[True], np.linalg.norm(np.diff(points, axis=0), axis=1) > 0.5])
    points, radii = points[distinct], radii[distinct]  # a random walk clipped to its box can repeat a point
    if len(points) == 1:
        return points, radii
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    spline = make_interp_spline(chord, points, k=min(3, len(points) - 1))
    dense_t = np.linspace(0.0, chord[-1], max(2, int(chord[-1] / 0.5)))
    dense = spline(dense_t)
    dense_r = np.interp(dense_t, chord, radii)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    keep, next_arc = [], 0.0
    for i, (a, r) in enumerate(zip(arc, dense_r)):
        if a >= next_arc:
            keep.append(i)
            next_arc = a + max(0.5, step_fraction * r)
    keep.append(len(dense) - 1)
    keep = np.unique(keep)
    return dense[keep], dense_r[keep]


def _tube_distance(grid: _Grid, box: tuple[slice, slice, slice], centres: np.ndarray, radii: np.ndarray,
                   reach_mm: float) -> np.ndarray:
    """Signed distance (mm, negative inside) to a union of spheres swept along a centre line.

    Each sphere only updates the voxels within ``reach_mm`` of its surface; elsewhere the value
    stays at ``reach_mm`` (far enough for every threshold used on it).
    """
    z, y, x = grid.z[box[0]], grid.y[box[1]], grid.x[box[2]]
    distance = np.full((len(z), len(y), len(x)), reach_mm, dtype=np.float32)
    for (cx, cy, cz), r in zip(centres, radii):
        extent = r + reach_mm
        zs, ys, xs = (_index_range(axis, c - extent, c + extent) for axis, c in ((z, cz), (y, cy), (x, cx)))
        if zs.stop <= zs.start or ys.stop <= ys.start or xs.stop <= xs.start:
            continue
        squared = ((z[zs] - cz) ** 2).astype(np.float32)[:, None, None] \
            + ((y[ys] - cy) ** 2).astype(np.float32)[None, :, None] \
            + ((x[xs] - cx) ** 2).astype(np.float32)[None, None, :]
        view = distance[zs, ys, xs]
        np.minimum(view, np.sqrt(squared) - np.float32(r), out=view)
    return distance


def _tube_box(centres: np.ndarray, radii: np.ndarray, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, z) mm bounds of a tube plus a margin."""
    return (centres - radii[:, None]).min(axis=0) - margin_mm, (centres + radii[:, None]).max(axis=0) + margin_mm


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _local_coordinates(coords, centre_xyz, axes: Sequence[np.ndarray], half_axes: Sequence[float]) -> list:
    """Coordinates of the grid points along orthonormal (x, y, z) ``axes`` through ``centre``, in half-axes."""
    z, y, x = coords
    offsets = (x - np.float32(centre_xyz[0]), y - np.float32(centre_xyz[1]), z - np.float32(centre_xyz[2]))
    return [(offsets[0] * np.float32(a[0]) + offsets[1] * np.float32(a[1]) + offsets[2] * np.float32(a[2]))
            / np.float32(h) for a, h in zip(axes, half_axes)]


def _ellipsoid_distance(coords, centre_xyz, axes: Sequence[np.ndarray], half_axes: Sequence[float],
                        bend: float = 0.0) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface); ``bend`` curves it into a crescent.

    With bend b the first local coordinate is shifted by b * (u1**2 + u2**2): for b > 0 the tips
    curl towards -axes[0] (the surface on the +axes[0] side is convex, the other one concave).
    """
    local = _local_coordinates(coords, centre_xyz, axes, half_axes)
    if bend:
        local[0] = local[0] + np.float32(bend) * (local[1] ** 2 + local[2] ** 2)
    return np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)


# ---------------------------------------------------------------------------------------------
# Painting into the tissue map
# ---------------------------------------------------------------------------------------------


class _Painter:
    """Holds the tissue map and paints structures into voxels still free for them."""

    def __init__(self, grid: _Grid, tissue: np.ndarray, voxel_volume_mm3: float, case_seed_value: int):
        self.grid, self.tissue, self.voxel_volume = grid, tissue, voxel_volume_mm3
        self.case_seed = case_seed_value
        # in-plane maps set by _paint_body (the body outline is the same on every slice)
        self.cavity_2d: np.ndarray | None = None  # inside the body-wall muscle
        self.inside_fat_2d: np.ndarray | None = None  # inside the subcutaneous fat
        self.cavity_radius_2d: np.ndarray | None = None  # normalised superellipse radius, 1 on the cavity outline

    def rng(self, name: str) -> np.random.Generator:
        """An independent generator per structure: adding a structure never changes the others."""
        return np.random.default_rng([self.case_seed, zlib.crc32(name.encode())])

    def claim(self, box, distance: np.ndarray, volume_ml: float | None, allowed: Sequence[Tissue],
              threshold: float = 0.0) -> tuple[np.ndarray, float]:
        """Mask of the allowed voxels of ``box`` with distance <= threshold, or, with ``volume_ml``, of
        the allowed voxels with the smallest distance adding up to that volume (so the organ volume is
        exact whatever the deformation and whatever neighbours already took), without stray islands:
        a speck of a few voxels away from the organ would be label noise (and ruin the HD95 of a
        perfect model). Returns (mask, threshold)."""
        free = np.isin(self.tissue[box], np.asarray(allowed, dtype=np.uint8))
        if volume_ml is None:
            return free & (distance <= threshold), threshold
        values = distance[free]
        count = min(int(round(volume_ml * 1000.0 / self.voxel_volume)), values.size)
        if count < 1:
            return np.zeros_like(free), -np.inf
        threshold = float(np.partition(values, count - 1)[count - 1])
        return _without_islands(free & (distance <= threshold)), threshold

    def paint(self, box, mask: np.ndarray, tissue: Tissue) -> None:
        self.tissue[box][mask] = tissue


#: A piece of an organ smaller than this fraction of its largest piece is a stray island. Real
#: pieces are larger: a thin organ cut by a vessel, or by thick slices, falls into big pieces.
ISLAND_FRACTION = 0.05


def _without_islands(mask: np.ndarray) -> np.ndarray:
    """``mask`` without its pieces (26-connected) smaller than ISLAND_FRACTION of the largest."""
    pieces, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return mask
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    return (sizes >= ISLAND_FRACTION * sizes.max())[pieces]


def _blend(right: dict, left: dict, t: np.ndarray, key: str) -> np.ndarray:
    return np.float32(right[key]) + (np.float32(left[key]) - np.float32(right[key])) * t


@dataclass
class PhantomCase:
    """One generated case with what made it: the tissue map and the sampled parameters."""

    image: np.ndarray  # int16 HU, (Z, Y, X)
    label: np.ndarray  # uint8 Synapse ids, (Z, Y, X)
    spacing: tuple[float, float, float]  # (sz, sy, sx) mm
    tissue: np.ndarray  # uint8 Tissue ids, (Z, Y, X)
    hu: dict[str, float]  # the HU drawn for each tissue (before blur and noise)
    params: dict[str, float]  # patient scale, field of view, noise sigma, ...


@dataclass
class _Patient:
    """Everything random about one case except the shapes' own deformations (drawn per structure)."""

    scale: float  # linear size relative to the nominal adult
    fov_mm: float
    z_extent_mm: float
    slice_thickness: float
    top_margin_mm: float  # scan start above the liver dome
    noise_sigma_hu: float
    blur_sigma_mm: float
    subcutaneous_fat_mm: float
    cavity: np.ndarray  # half-width, anterior and posterior half-depths of the body cavity, mm
    body_offset: np.ndarray  # (x, y) of the body centre relative to the image centre, mm
    outline_harmonics: tuple[np.ndarray, np.ndarray]  # amplitudes and phases of outline harmonics 2-4
    volume_ml: dict[str, float]
    offset: dict[str, np.ndarray]  # position jitter of each organ group, (x, y, z) mm
    aorta_radius: float
    hu: dict[Tissue, float]

    def at(self, points, group: str | None = None) -> np.ndarray:
        """Nominal body-frame point(s) -> this patient's: scaled, and shifted with the organ group."""
        p = np.asarray(points, dtype=float) * self.scale
        return p + self.offset[group] if group else p


def _sample_patient(rng: np.random.Generator, spec: PhantomSpec) -> _Patient:
    scale = float(rng.uniform(*PATIENT_SCALE_RANGE))
    # field of view and coverage grow with the patient (mid-range x patient scale, a few % of margin,
    # clipped to the spec's range), as the organ volumes grow with scale**3: organs fill a constant
    # ~8 % of the scan, so the background stays above 90 % in every case
    fov = float(np.clip(np.mean(spec.fov_mm) * scale * rng.uniform(1.0, 1.04), *spec.fov_mm))
    z_extent = float(np.clip(np.mean(spec.z_extent_mm) * scale * rng.uniform(1.0, 1.04), *spec.z_extent_mm))
    slice_thickness = float(spec.slice_thickness[rng.integers(len(spec.slice_thickness))])
    top_margin = float(rng.uniform(3.0, 12.0))
    noise_sigma = float(rng.uniform(*NOISE_SIGMA_HU))
    blur_sigma_mm = float(rng.uniform(0.5, 0.8))  # in-plane point spread of a soft-tissue kernel
    cavity = np.array(CAVITY_HALF_AXES) * scale * rng.uniform(0.97, 1.03, 3)
    body_offset = np.clip(rng.normal(0, 5, 2), -10, 10)
    # the body must fit in the field of view: thinner fat for a big patient in a narrow field
    room = fov / 2 - 12.0 - abs(body_offset[0]) - cavity[0] - BODY_WALL_MUSCLE_MM * scale
    fat_mm = float(np.clip(rng.uniform(*SUBCUTANEOUS_FAT_MM), 5.0, max(5.0, room)))
    outline_harmonics = rng.normal(0, 0.015, 3), rng.uniform(0, 2 * np.pi, 3)
    volume_ml = {name: nominal * scale ** 3 * rng.uniform(*ORGAN_VOLUME_JITTER)
                 for name, nominal in ORGAN_VOLUME_ML.items()}
    groups = ("liver", "gallbladder", "spleen", "kidney_r", "kidney_l", "stomach", "pancreatic", "colon")
    offset = {g: np.clip(rng.normal(0, POSITION_JITTER_MM, 3), -2 * POSITION_JITTER_MM, 2 * POSITION_JITTER_MM)
              for g in groups}
    aorta_radius = AORTA_DIAMETER_MM / 2 * scale * rng.uniform(0.95, 1.05)
    hu = {t: float(rng.uniform(*TISSUE_TABLE[t][1])) for t in Tissue}
    for tissue, source in _HU_TIED.items():
        hu[tissue] += hu[source]
    return _Patient(scale, fov, z_extent, slice_thickness, top_margin, noise_sigma, blur_sigma_mm, fat_mm, cavity,
                    body_offset, outline_harmonics, volume_ml, offset, aorta_radius, hu)


def _scan_grid(patient: _Patient, size: int) -> _Grid:
    """Voxel centres in the body frame. The scan covers the organs: it starts just above the liver
    dome (as an abdominal scan does) and runs down past the lower pole of the right kidney."""
    sx = sy = float(np.float32(patient.fov_mm / size))  # exact in float32: the NIfTI header holds the same number
    sz = patient.slice_thickness
    organ_top = RIGHT_DOME[2] * patient.scale + 3
    organ_bottom = (KIDNEY_CENTRE["kidney_r"][2] - KIDNEY_HALF_AXES[0]) * patient.scale \
        + patient.offset["kidney_r"][2] - 8
    n_slices = max(int(round(patient.z_extent_mm / sz)), int(np.ceil((organ_top - organ_bottom) / sz)))
    spare = n_slices * sz - (organ_top - organ_bottom)
    z_top = organ_top + min(spare, patient.top_margin_mm)
    return _Grid(z=z_top - (n_slices - 0.5 - np.arange(n_slices)) * sz,
                 y=(np.arange(size) + 0.5 - size / 2) * sy - patient.body_offset[1],
                 x=(np.arange(size) + 0.5 - size / 2) * sx - patient.body_offset[0])


def synthesize_case(case_seed_value: int, spec: PhantomSpec) -> PhantomCase:
    """Generate one case with its tissue map and parameters (``generate_case`` returns the arrays only)."""
    patient = _sample_patient(np.random.default_rng([case_seed_value, 0]), spec)
    grid = _scan_grid(patient, spec.size)
    spacing = (patient.slice_thickness,) + (float(np.float32(patient.fov_mm / spec.size)),) * 2
    tissue = np.empty((len(grid.z), len(grid.y), len(grid.x)), dtype=np.uint8)
    painter = _Painter(grid, tissue, float(np.prod(spacing)), case_seed_value)
    _paint_anatomy(painter, patient)
    image = _render_image(tissue, patient, spacing, np.random.default_rng([case_seed_value, 1]))
    params = {"patient_scale": patient.scale, "fov_mm": patient.fov_mm, "z_extent_mm": len(grid.z) * spacing[0],
              "noise_sigma_hu": patient.noise_sigma_hu, "blur_sigma_mm": patient.blur_sigma_mm,
              "subcutaneous_fat_mm": patient.subcutaneous_fat_mm, "aorta_diameter_mm": 2 * patient.aorta_radius,
              "scan_bottom_z_mm": float(grid.z[0] - spacing[0] / 2)}
    return PhantomCase(image, _LABEL_OF_TISSUE[tissue], spacing, tissue,
                       {t.name.lower(): patient.hu[t] for t in Tissue}, params)


def _paint_anatomy(painter: _Painter, patient: _Patient) -> None:
    """Paint every structure. Order matters: each one only takes voxels still free for it."""
    at, scale, volume = patient.at, patient.scale, patient.volume_ml
    _paint_body(painter, scale, patient.cavity, patient.subcutaneous_fat_mm, patient.outline_harmonics)
    _paint_spine_and_muscles(painter, scale)
    _paint_ribs(painter, scale, patient.cavity)
    _paint_diaphragm_lungs_heart(painter, scale)

    # vessels first: organs wrap around them (IVC groove of the liver, splenic vein behind the pancreas)
    through_diaphragm = (Tissue.VISCERAL_FAT, Tissue.LUNG, Tissue.MUSCLE)
    aorta_points, aorta_taper = TUBES["aorta"]
    _paint_tube(painter, "aorta", at(aorta_points), patient.aorta_radius * np.array(aorta_taper), Tissue.AORTA,
                through_diaphragm)
    _paint_tube(painter, "ivc", at(TUBES["ivc"][0]), scale * np.array(TUBES["ivc"][1]), Tissue.IVC,
                through_diaphragm)
    for name in ("sma", "celiac_hepatic", "splenic_artery"):
        points, radii = TUBES[name]
        _paint_tube(painter, name, at(points, "pancreatic"), scale * np.array(radii), Tissue.ARTERY)
    pancreas_points = at(TUBES["pancreas"][0], "pancreatic")
    pancreas_radii = scale * np.array(TUBES["pancreas"][1], dtype=float)
    # the splenic vein runs along the back of the pancreas body and tail, from the portal confluence to the hilum
    behind = np.array([0.0, 1.0, 0.15])
    splenic_vein = np.array([at(TUBES["portal_vein"][0][0], "pancreatic")]
                            + [p + behind * (r + 5.5 * scale) for p, r in zip(pancreas_points[3:], pancreas_radii[3:])]
                            + [at(SPLEEN_CENTRE, "spleen") + scale * np.array([-14.0, -18.0, -12.0])])
    for name, points, radii in (
            ("smv", at(TUBES["smv"][0], "pancreatic"), scale * np.array(TUBES["smv"][1])),
            ("portal_vein", at(TUBES["portal_vein"][0], "pancreatic"), scale * np.array(TUBES["portal_vein"][1])),
            ("splenic_vein", splenic_vein, np.full(len(splenic_vein), 4.5 * scale))):
        _paint_tube(painter, name, points, radii, Tissue.VEIN)

    for side, vein in (("kidney_r", "right_renal_vein"), ("kidney_l", "left_renal_vein")):
        hilum = _paint_kidney(painter, side, at(KIDNEY_CENTRE[side], side), scale, volume[side])
        points, radii = TUBES[vein]
        _paint_tube(painter, vein, np.vstack([hilum, at(points)]), scale * np.array([5.0, *radii]), Tissue.VEIN)

    _paint_spleen(painter, at(SPLEEN_CENTRE, "spleen"), scale, volume["spleen"])
    _paint_pancreas(painter, pancreas_points, pancreas_radii, volume["pancreas"])
    _paint_gallbladder(painter, at(GALLBLADDER_CENTRE, "liver") + patient.offset["gallbladder"] / 2, scale,
                       volume["gallbladder"])
    _paint_hollow(painter, "stomach", at(TUBES["stomach"][0], "stomach"), scale * np.array(TUBES["stomach"][1]),
                  wall=Tissue.STOMACH_WALL, content=Tissue.STOMACH_CONTENT, gas=Tissue.STOMACH_GAS,
                  wall_mm=5.0, gas_fraction=float(painter.rng("stomach gas").uniform(0.0, 0.2)),
                  volume_ml=volume["stomach"])
    _paint_liver(painter, scale, patient.offset["liver"], volume["liver"])
    for name in ("hepatic_vein_right", "hepatic_vein_middle", "hepatic_vein_left", "portal_branch_right",
                 "portal_branch_left"):
        points, radii = TUBES[name]
        _paint_tube(painter, name, at(points, "liver"), scale * np.array(radii), Tissue.LIVER_VESSEL, (Tissue.LIVER,))
    _paint_bowel(painter, scale, at)


def _render_image(tissue: np.ndarray, patient: _Patient, spacing, rng: np.random.Generator) -> np.ndarray:
    """HU per tissue, then CT noise and a partial-volume blur; int16 clipped to [-1024, 3071]."""
    image = np.array([patient.hu[t] for t in Tissue], dtype=np.float32)[tissue]
    # z: neighbouring slices mix a little (slice sensitivity profile); in-plane: the kernel's point spread
    blur = (0.45, patient.blur_sigma_mm / spacing[1], patient.blur_sigma_mm / spacing[2])
    # noise goes in before the blur, so it comes out correlated in-plane like reconstructed CT noise;
    # dividing by the blur's noise gain (root sum of squares of its kernel) makes its sd after the blur exact
    impulse = np.zeros((9, 9, 9), np.float32)
    impulse[4, 4, 4] = 1.0
    gain = float(np.sqrt((ndimage.gaussian_filter(impulse, blur, mode="constant") ** 2).sum()))
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= np.float32(patient.noise_sigma_hu / gain)
    image += noise
    del noise
    ndimage.gaussian_filter(image, blur, output=image, mode="nearest")
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def generate_case(case_seed: int, spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Generate one case: ``(image int16 HU, label uint8, spacing)``.

    Arrays are (Z, Y, X) (Z = slice inferior -> superior, Y = row anterior -> posterior, X = column
    patient right -> patient left); spacing is (sz, sy, sx) in mm in the same order. Deterministic:
    the same seed and spec give identical arrays.
    """
    case = synthesize_case(case_seed, spec)
    return case.image, case.label, case.spacing


# ----------------------------------------------------------------------------- structures


def _paint_body(painter: _Painter, scale: float, cavity: np.ndarray, fat_mm: float, harmonics) -> None:
    """Body outline: air, subcutaneous fat, body-wall muscle, and the cavity (visceral fat) inside.

    The cross-section is constant along z (the upper abdomen changes little over 20 cm); a few
    random low harmonics keep it from being a perfect superellipse.
    """
    grid = painter.grid
    x, y = grid.x[None, :], grid.y[:, None]
    angle = np.arctan2(y, x)
    amplitudes, phases = harmonics
    modulation = 1.0 + sum(a * np.cos(k * angle + p) for k, a, p in zip((2, 3, 4), amplitudes, phases))
    wall = BODY_WALL_MUSCLE_MM * scale

    def radius(half_width, front, back):
        """Normalised superellipse radius: 1 on the outline with these half-axes."""
        depth = np.where(y < 0, front, back)
        return ((np.abs(x) / half_width) ** OUTLINE_EXPONENT
                + (np.abs(y) / depth) ** OUTLINE_EXPONENT) ** (1 / OUTLINE_EXPONENT) / modulation

    half_width, front, back = cavity
    layer = np.full((len(grid.y), len(grid.x)), Tissue.AIR, dtype=np.uint8)
    # supine patient: the back is pressed on the table, so less fat behind
    layer[radius(half_width + wall + fat_mm, front + wall + fat_mm, back + wall + 0.7 * fat_mm) <= 1] = \
        Tissue.SUBCUTANEOUS_FAT
    layer[radius(half_width + wall, front + wall, back + wall) <= 1] = Tissue.MUSCLE
    painter.cavity_radius_2d = radius(half_width, front, back)
    layer[painter.cavity_radius_2d <= 1] = Tissue.VISCERAL_FAT
    painter.tissue[:] = layer[None]
    painter.cavity_2d = layer == Tissue.VISCERAL_FAT
    painter.inside_fat_2d = np.isin(layer, [Tissue.MUSCLE, Tissue.VISCERAL_FAT])  # where deep muscles may go


def _paint_spine_and_muscles(painter: _Painter, scale: float) -> None:
    """Vertebral bodies (cortex, cancellous bone, discs), canal, posterior arch, paraspinal, quadratus, psoas."""
    grid, tissue = painter.grid, painter.tissue
    x, y = grid.x[None, :] / scale, grid.y[:, None] / scale  # nominal units
    vy = VERTEBRA_CENTRE_Y
    body_outer = (x / VERTEBRA_HALF_AXES[0]) ** 2 + ((y - vy) / VERTEBRA_HALF_AXES[1]) ** 2 <= 1
    body_inner = (x / (VERTEBRA_HALF_AXES[0] - 2)) ** 2 + ((y - vy) / (VERTEBRA_HALF_AXES[1] - 2)) ** 2 <= 1
    canal_r = np.hypot(x, y - CANAL_CENTRE_Y)
    canal = canal_r <= CANAL_RADIUS
    arch = (canal_r > CANAL_RADIUS) & (canal_r <= CANAL_RADIUS + 7) & (y > CANAL_CENTRE_Y - 7)
    spinous = (np.abs(x) <= 4) & (y >= CANAL_CENTRE_Y + 12) & (y <= CANAL_CENTRE_Y + 36)
    # transverse processes: thin, pointing back-laterally from the arch
    transverse = (np.abs(x) >= 14) & (np.abs(x) <= 38) & (np.abs(y - CANAL_CENTRE_Y + 4 - 0.3 * (np.abs(x) - 14)) <= 3)
    paraspinal = (((np.abs(x) - 34) / 24) ** 2 + ((y - 82) / 20) ** 2 <= 1) & painter.inside_fat_2d
    quadratus = (((np.abs(x) - 62) / 18) ** 2 + ((y - 80) / 11) ** 2 <= 1) & painter.inside_fat_2d
    for k, z in enumerate(grid.z / scale):
        s = tissue[k]
        s[paraspinal] = Tissue.MUSCLE
        if z < 20:
            s[quadratus] = Tissue.MUSCLE
        # psoas: appears at L1 and thickens downwards, lateral to the vertebral body
        if z < 15:
            r = min(24.0, 4.0 + 0.22 * (15 - z))
            psoas = ((np.abs(x) - (VERTEBRA_HALF_AXES[0] - 2 + r)) ** 2 + (y - (vy + 4)) ** 2) <= r ** 2
            s[psoas] = Tissue.MUSCLE
        in_disc = abs(z - VERTEBRA_PERIOD_MM * np.round(z / VERTEBRA_PERIOD_MM)) > \
            (VERTEBRA_PERIOD_MM - DISC_HEIGHT_MM) / 2
        if in_disc:
            s[body_outer] = Tissue.DISC
        else:
            s[body_outer] = Tissue.CORTICAL_BONE
            s[body_inner] = Tissue.CANCELLOUS_BONE
            s[arch | spinous | transverse] = Tissue.CORTICAL_BONE
        s[canal] = Tissue.SPINAL_CANAL


def _paint_ribs(painter: _Painter, scale: float, cavity: np.ndarray) -> None:
    """Ribs 7-12 in the body wall: each descends from its vertebra round to the front, so an axial
    slice cuts it into an elongated oval; the lower ribs are shorter (11 and 12 float)."""
    grid, tissue = painter.grid, painter.tissue
    ring = (painter.cavity_radius_2d >= 1.0) & (painter.cavity_radius_2d <= 1.0 + 7.0 * scale / cavity[0])
    rows, cols = np.nonzero(ring)
    x, y = grid.x[cols], grid.y[rows]
    angle = np.degrees(np.arctan2(np.abs(x), y))  # 0 at the back, 90 at the side, 180 at the front
    z = grid.z[:, None]
    for rib, end_angle in ((7, 150), (8, 150), (9, 150), (10, 145), (11, 110), (12, 80)):
        head_z = VERTEBRA_PERIOD_MM * (13 - rib) * scale
        rib_z = head_z + scale * (10.0 - 95.0 * (angle - 25.0) / 125.0)
        along = (angle >= 25.0) & (angle <= end_angle)
        hits = (np.abs(z - rib_z[None, :]) <= 6.0 * scale) & along[None, :]
        slice_idx, point_idx = np.nonzero(hits)
        tissue[slice_idx, rows[point_idx], cols[point_idx]] = Tissue.RIB


def _dome_height(x: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
    """z of the diaphragm surface over (x, y): two flat-topped domes (cubic fall-off), the right one higher."""
    heights = []
    for px, py, pz in (RIGHT_DOME, LEFT_DOME):
        distance = np.hypot(x / scale - px, y / scale - py)
        heights.append(scale * (pz - DOME_DROP_MM * (distance / DOME_RADIUS_MM) ** 3))
    return np.maximum(*heights)


def _paint_diaphragm_lungs_heart(painter: _Painter, scale: float) -> None:
    """Above the domes the cavity is lung (deep posterior recesses) with the heart in front, centre-left."""
    grid, tissue = painter.grid, painter.tissue
    x, y = grid.x[None, :], grid.y[:, None]
    dome = _dome_height(x, y, scale)
    thickness = 4.0 * scale
    heart_centre = np.array([15.0, -35.0, 82.0 + 45.0]) * scale
    heart_half = np.array([60.0, 45.0, 50.0]) * scale
    heart_2d = ((x - heart_centre[0]) / heart_half[0]) ** 2 + ((y - heart_centre[1]) / heart_half[1]) ** 2
    for k, z in enumerate(grid.z):
        if z <= dome[painter.cavity_2d].min() - thickness:
            continue
        s = tissue[k]
        s[painter.cavity_2d & (z > dome - thickness)] = Tissue.MUSCLE
        s[painter.cavity_2d & (z > dome)] = Tissue.LUNG
        heart = heart_2d + ((z - heart_centre[2]) / heart_half[2]) ** 2 <= 1
        s[heart & (s == Tissue.LUNG)] = Tissue.HEART


def _paint_tube(painter: _Painter, name: str, points, radii, tissue: Tissue,
                allowed: Sequence[Tissue] = (Tissue.VISCERAL_FAT,)) -> None:
    """A vessel: a tube through ``points`` painted into the allowed voxels."""
    centres, tube_radii = _centre_line(np.asarray(points, float), np.asarray(radii, float))
    low, high = _tube_box(centres, tube_radii, 2.0)
    box = painter.grid.box(low, high)
    if box is None:
        return
    distance = _tube_distance(painter.grid, box, centres, tube_radii, reach_mm=2.0)
    mask, _ = painter.claim(box, distance, None, allowed)
    painter.paint(box, mask, tissue)


def _paint_kidney(painter: _Painter, side: str, centre: np.ndarray, scale: float, volume_ml: float) -> np.ndarray:
    """Bean-shaped kidney: cortex, medulla around a fat-filled sinus opening anteromedially. Returns the hilum."""
    rng = painter.rng(side)
    medial = -1.0 if side == "kidney_l" else 1.0  # +x is the patient's left, so the left kidney's medial is -x
    long_axis = _unit([medial * 0.25, 0.15, 1.0])  # upper pole medial and posterior
    hilum_axis = _unit([medial, -0.8, 0.0])
    hilum_axis = _unit(hilum_axis - hilum_axis.dot(long_axis) * long_axis)
    third_axis = np.cross(long_axis, hilum_axis)
    axes = (hilum_axis, third_axis, long_axis)
    long_half, hilum_half, third_half = KIDNEY_HALF_AXES
    half = np.array([hilum_half, third_half, long_half]) * scale * rng.uniform(0.92, 1.08, 3)
    reach = 1.3 * half.max()
    low, high = centre - reach, centre + reach
    box = painter.grid.box(low, high)
    deformation = _smooth_noise(rng, low, high, 30.0, painter.grid, box)
    hilum = centre + hilum_axis * half[0] * 0.75
    if box is None:
        return hilum
    coords = painter.grid.coords(box)
    shape = _ellipsoid_distance(coords, centre, axes, half) / (1 + np.float32(0.06) * deformation)
    sinus_centre = centre + hilum_axis * half[0] * 0.55
    sinus = _ellipsoid_distance(coords, sinus_centre, axes, half * np.array([0.55, 0.45, 0.55])) <= 1
    kidney, threshold = painter.claim(box, np.where(sinus, np.float32(np.inf), shape), volume_ml,
                                      (Tissue.VISCERAL_FAT,))  # the sinus is not parenchyma
    cortex, medulla = ((Tissue.KIDNEY_R_CORTEX, Tissue.KIDNEY_R_MEDULLA) if side == "kidney_r"
                       else (Tissue.KIDNEY_L_CORTEX, Tissue.KIDNEY_L_MEDULLA))
    painter.paint(box, kidney, cortex)
    painter.paint(box, kidney & (shape <= 0.75 * threshold), medulla)  # a ~7 mm cortex around the medulla
    sinus_fat, _ = painter.claim(box, np.where(sinus, shape, np.float32(np.inf)), None, (Tissue.VISCERAL_FAT,),
                                 threshold=threshold)  # the sinus within the kidney's outline
    painter.paint(box, sinus_fat, Tissue.RENAL_SINUS_FAT)
    return hilum


def _paint_spleen(painter: _Painter, centre: np.ndarray, scale: float, volume_ml: float) -> None:
    """Crescent against the left posterolateral ribs: concave hilum facing anteromedially."""
    rng = painter.rng("spleen")
    outward = _unit([centre[0], centre[1], 0.0])  # from the body axis to the spleen: thickness direction
    tangent = np.cross([0.0, 0.0, 1.0], outward)  # in-plane, along the body wall
    long_axis = _unit(0.94 * np.array([0.0, 0.0, 1.0]) + 0.35 * (tangent if tangent[1] > 0 else -tangent))
    width_axis = np.cross(long_axis, outward)
    half = np.array(SPLEEN_HALF_AXES) * scale * rng.uniform(0.92, 1.08, 3)
    reach = 1.3 * half.max()
    low, high = centre - reach, centre + reach
    box = painter.grid.box(low, high)
    deformation = _smooth_noise(rng, low, high, 35.0, painter.grid, box)
    if box is None:
        return
    # the tips curl towards -outward (medially): convex against the wall, concave at the hilum
    distance = _ellipsoid_distance(painter.grid.coords(box), centre, (outward, width_axis, long_axis), half,
                                   bend=0.45) / (1 + np.float32(0.08) * deformation)
    mask, _ = painter.claim(box, distance, volume_ml, (Tissue.VISCERAL_FAT,))
    painter.paint(box, mask, Tissue.SPLEEN)


def _paint_pancreas(painter: _Painter, points: np.ndarray, radii: np.ndarray, volume_ml: float) -> None:
    """Lobulated tube (head in the C-loop, neck, body, tail to the splenic hilum)."""
    rng = painter.rng("pancreas")
    radii = radii * rng.uniform(0.85, 1.15, len(radii))
    centres, tube_radii = _centre_line(points, radii)
    low, high = _tube_box(centres, tube_radii, 12.0)
    box = painter.grid.box(low, high)
    lobulation = _smooth_noise(rng, low, high, 6.0, painter.grid, box)  # fine fat clefts between lobules
    bulges = _smooth_noise(rng, low, high, 25.0, painter.grid, box)
    if box is None:
        return
    distance = _tube_distance(painter.grid, box, centres, tube_radii, reach_mm=12.0)
    # surface moved by at most 2 x 2 + 2 x 2 = 8 mm, inside the 12 mm the distance is computed for
    distance -= np.float32(2.0) * np.clip(lobulation, -2, 2) + np.float32(2.0) * np.clip(bulges, -2, 2)
    mask, _ = painter.claim(box, distance, volume_ml, (Tissue.VISCERAL_FAT,))
    painter.paint(box, mask, Tissue.PANCREAS)


def _paint_gallbladder(painter: _Painter, centre: np.ndarray, scale: float, volume_ml: float) -> None:
    """Pear: wide fundus (anterior-inferior), narrow neck; bile inside a thin enhancing wall."""
    rng = painter.rng("gallbladder")
    long_axis = _unit(np.asarray(GALLBLADDER_AXIS) + rng.normal(0, 0.1, 3))
    side_axis = _unit(np.cross(long_axis, [0.0, 1.0, 0.0]))
    third_axis = np.cross(long_axis, side_axis)
    half = np.array(GALLBLADDER_HALF_AXES) * scale * rng.uniform(0.9, 1.1, 3)
    reach = 1.3 * half.max()
    low, high = centre - reach, centre + reach
    box = painter.grid.box(low, high)
    deformation = _smooth_noise(rng, low, high, 25.0, painter.grid, box)
    if box is None:
        return
    along, side, third = _local_coordinates(painter.grid.coords(box), centre, (long_axis, side_axis, third_axis), half)
    taper = np.clip(1.0 - 0.3 * along, 0.4, 1.5)  # the neck (+along) is narrower than the fundus
    distance = np.sqrt(along ** 2 + (side ** 2 + third ** 2) / taper ** 2) / (1 + np.float32(0.06) * deformation)
    mask, threshold = painter.claim(box, distance, volume_ml, (Tissue.VISCERAL_FAT,))
    painter.paint(box, mask, Tissue.GALLBLADDER_WALL)
    wall_fraction = 2.5 / (half[1] * threshold)  # ~2.5 mm wall
    painter.paint(box, mask & (distance <= threshold * (1 - wall_fraction)), Tissue.GALLBLADDER_BILE)


def _paint_hollow(painter: _Painter, name: str, points, radii, *, wall: Tissue, content: Tissue, gas: Tissue,
                  wall_mm: float, gas_fraction: float = 0.0, volume_ml: float | None = None,
                  gas_bubbles_per_cm: float = 0.0) -> None:
    """A hollow viscus (stomach, duodenum, bowel loop): wall, contents, and gas in its anterior part
    (the patient lies supine, so gas rises to the front), optionally with gas bubbles (faeces).

    With ``volume_ml`` the tube is deformed by a smooth random field and grown or shrunk to that
    volume; without, it is painted as given (its random radii and course are enough variation).
    """
    rng = painter.rng(name)
    radii = np.asarray(radii, float) * rng.uniform(0.9, 1.1, len(radii))
    centres, tube_radii = _centre_line(np.asarray(points, float), radii)
    margin = 12.0 if volume_ml is not None else 3.0
    low, high = _tube_box(centres, tube_radii, margin)
    box = painter.grid.box(low, high)
    deformation = _smooth_noise(rng, low, high, 30.0, painter.grid, box) if volume_ml is not None else None
    # bubbles: small spheres scattered inside the lumen along the centre line
    length_mm = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum())
    n_bubbles = int(gas_bubbles_per_cm * length_mm / 10)
    on_line = centres[rng.integers(len(centres), size=n_bubbles)]
    bubble_centres = on_line + rng.normal(0, 0.3, (n_bubbles, 3)) * tube_radii.mean()
    bubble_radii = rng.uniform(1.5, 4.0, n_bubbles)
    if box is None:
        return
    distance = _tube_distance(painter.grid, box, centres, tube_radii, reach_mm=margin)
    if deformation is not None:
        distance -= np.float32(0.1 * tube_radii.mean()) * deformation
    mask, threshold = painter.claim(box, distance, volume_ml, (Tissue.VISCERAL_FAT,))
    painter.paint(box, mask, wall)
    lumen = mask & (distance <= threshold - wall_mm)
    painter.paint(box, lumen, content)
    if gas_fraction > 0 and lumen.any():
        y = painter.grid.coords(box)[1]
        painter.paint(box, lumen & (y <= np.quantile(np.broadcast_to(y, lumen.shape)[lumen], gas_fraction)), gas)
    if n_bubbles:
        painter.paint(box, lumen & (_tube_distance(painter.grid, box, bubble_centres, bubble_radii, 1.0) <= 0), gas)


def _paint_liver(painter: _Painter, scale: float, offset: np.ndarray, volume_ml: float) -> None:
    """Wedge: an ellipsoid in x whose cross-section shrinks and moves up and forward from the thick
    right lobe to the thin left lobe tip; its top is carved by the right dome of the diaphragm
    (already painted), and it wraps around the kidney, gallbladder, IVC and portal vein painted before it."""
    rng = painter.rng("liver")
    x_right, x_left = np.array(LIVER_X) * scale + offset[0]
    right = {k: v * scale for k, v in LIVER_RIGHT_LOBE.items()}
    left = {k: v * scale for k, v in LIVER_LEFT_LOBE.items()}
    for lobe in (right, left):
        lobe["centre_y"] += offset[1]
        lobe["centre_z"] += offset[2]
    low = np.array([x_right, -120 * scale, right["centre_z"] - right["half_z"] - 10])
    high = np.array([x_left + 5, 110 * scale, RIGHT_DOME[2] * scale + 10])
    box = painter.grid.box(low, high)
    deformation = _smooth_noise(rng, low, high, 40.0, painter.grid, box)
    if box is None:
        return
    z, y, x = painter.grid.coords(box)
    t = np.clip((x - np.float32(x_right)) / np.float32(x_left - x_right), 0, 1)
    centre_y = _blend(right, left, t ** 1.2, "centre_y")  # the left lobe lies anteriorly, over the stomach
    half_y, centre_z, half_z = (_blend(right, left, t, k) for k in ("half_y", "centre_z", "half_z"))
    x_term = ((x - np.float32((x_right + x_left) / 2)) / np.float32((x_left - x_right) / 2)) ** 2
    distance = np.sqrt(x_term + ((y - centre_y) / half_y) ** 2 + ((z - centre_z) / half_z) ** 2)
    distance /= 1 + np.float32(0.08) * deformation
    mask, _ = painter.claim(box, distance, volume_ml, (Tissue.VISCERAL_FAT,))
    painter.paint(box, mask, Tissue.LIVER)


def _paint_bowel(painter: _Painter, scale: float, at) -> None:
    """Unlabelled look-alikes: the duodenal C-loop round the pancreatic head, colon, jejunal loops.

    Collapsed loops have the HU of the pancreas, fluid-filled ones that of bile: the model has to
    use shape and position, not intensity, to find the pancreas and the gallbladder.
    """
    rng = painter.rng("bowel contents")

    def contents():
        kind = rng.choice(["collapsed", "fluid", "gas"], p=[0.45, 0.4, 0.15])
        if kind == "collapsed":  # a collapsed loop is thinner and solid soft tissue
            return 0.7, Tissue.BOWEL_COLLAPSED, 0.0
        return 1.0, Tissue.BOWEL_FLUID, (rng.uniform(0.1, 0.5) if kind == "gas" else 0.0)

    hollow = {"wall": Tissue.BOWEL_WALL, "gas": Tissue.BOWEL_GAS, "wall_mm": 2.5}
    points, radii = TUBES["duodenum"]
    width, content, gas = contents()
    _paint_hollow(painter, "duodenum", at(points, "pancreatic"), width * scale * np.array(radii, float),
                  content=content, gas_fraction=gas, **hollow)
    points, radii = TUBES["colon"]
    points = at(points, "colon") + rng.normal(0, 5, (len(points), 3))
    radii = scale * np.array(radii, float)
    # three segments (ascending, transverse, descending), each with its own small box and gas level
    for segment, (first, last) in enumerate(((0, 3), (2, 7), (6, 9))):
        _paint_hollow(painter, f"colon {segment}", points[first:last], radii[first:last], content=Tissue.FAECES,
                      gas_fraction=rng.uniform(0.0, 0.2), gas_bubbles_per_cm=2.0, **hollow)
    box_low = np.array([b[0] for b in SMALL_BOWEL_BOX]) * scale
    box_high = np.array([b[1] for b in SMALL_BOWEL_BOX]) * scale
    for loop in range(int(rng.integers(12, 19))):
        walk = [rng.uniform(box_low, box_high)]
        for _ in range(5):  # a smooth random walk of 25 mm steps kept inside the box
            walk.append(np.clip(walk[-1] + 25 * scale * _unit(rng.normal(size=3)), box_low, box_high))
        width, content, gas = contents()
        radius = width * scale * rng.uniform(9, 13)
        _paint_hollow(painter, f"small bowel {loop}", np.array(walk), np.full(len(walk), radius),
                      content=content, gas_fraction=gas, **hollow)


# ---------------------------------------------------------------------------------------------
# The cache on disk
# ---------------------------------------------------------------------------------------------


def _image_path(folder: Path, number: int) -> Path:
    return folder / "img" / f"img{number:04d}.nii.gz"


def _label_path(folder: Path, number: int) -> Path:
    return folder / "label" / f"label{number:04d}.nii.gz"


def nifti_affine(shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> np.ndarray:
    """The affine written for a (Z, Y, X) array: diag(-sx, -sy, sz) (RAS world; columns run to the
    patient's left, rows to the back, slices up, as DICOM LPS data converted to NIfTI), origin
    such that the image centre is the scanner isocentre in-plane and the top slice is at z = 0."""
    (n_z, n_y, n_x), (sz, sy, sx) = shape_zyx, spacing_zyx
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [(n_x - 1) / 2 * sx, (n_y - 1) / 2 * sy, -(n_z - 1) * sz]
    return affine


def _save_nifti(path: Path, array_zyx: np.ndarray, spacing_zyx: Sequence[float], dtype) -> None:
    import nibabel as nib

    affine = nifti_affine(array_zyx.shape, spacing_zyx)
    image = nib.Nifti1Image(array_zyx.astype(dtype, copy=False).transpose(2, 1, 0), affine)
    image.set_data_dtype(dtype)
    image.set_qform(affine, code=1)  # 1 = scanner coordinates, as converted DICOM
    image.set_sform(affine, code=1)
    image.header.set_zooms(tuple(float(s) for s in spacing_zyx[::-1]))
    image.header.set_xyzt_units("mm")
    replace_atomically(path, lambda temporary: nib.save(image, str(temporary)))


def _read_case_geometry(path: Path) -> tuple[list[float], list[int]]:
    """(spacing [sz, sy, sx], shape [Z, Y, X]) from a NIfTI header."""
    import nibabel as nib

    header = nib.load(str(path)).header
    return [float(z) for z in header.get_zooms()[:3][::-1]], [int(n) for n in header.get_data_shape()[:3][::-1]]


def _is_complete(folder: Path, spec: PhantomSpec) -> bool:
    """dataset.json records this spec and every case file exists (files are written atomically,
    so an existing file is complete)."""
    try:
        record = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    if record.get("spec") != spec.as_dict() or record.get("generator_version") != GENERATOR_VERSION:
        return False
    return all(_image_path(folder, n).is_file() and _label_path(folder, n).is_file()
               for n in range(1, spec.num_cases + 1))


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Block until this process holds an exclusive lock on ``path`` (one generator per cache folder)."""
    with open(path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_phantom(root: str | Path, spec: PhantomSpec, progress: bool = True) -> Path:
    """Make sure ``root/<spec.key()>/`` holds every case; generate what is missing; return that folder.

    Layout: ``img/img0001.nii.gz``, ``label/label0001.nii.gz``, ... and ``dataset.json`` (name, spec,
    labels, cases with id, image, label, spacing [sz, sy, sx] and shape [Z, Y, X]). Files are written
    under temporary names and renamed, and dataset.json is written last, so an interrupted run
    leaves complete files only and the next call generates just the missing cases. Concurrent
    callers (a Hydra sweep) serialise on the lock file ``root/<key>.lock``.
    """
    root = Path(root)
    folder = root / spec.key()
    if _is_complete(folder, spec):
        return folder
    for sub in ("img", "label"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f"{spec.key()}.lock"):
        if _is_complete(folder, spec):  # another process finished it while we waited for the lock
            return folder
        for sub in ("img", "label"):  # left by a killed generator; no one else writes while we hold the lock
            for stale in (folder / sub).glob(f"{TEMPORARY_PREFIX}*"):
                stale.unlink(missing_ok=True)
        numbers = range(1, spec.num_cases + 1)
        missing = [n for n in numbers if not (_image_path(folder, n).is_file() and _label_path(folder, n).is_file())]
        if missing and progress:
            from rich.progress import track

            missing = track(missing, description=f"phantom {spec.key()}: generating {len(missing)} case(s)")
        for number in missing:
            image, label, spacing = generate_case(case_seed(spec.seed, number), spec)
            if not _image_path(folder, number).is_file():
                _save_nifti(_image_path(folder, number), image, spacing, np.int16)
            if not _label_path(folder, number).is_file():
                _save_nifti(_label_path(folder, number), label, spacing, np.uint8)
        cases = []
        for number in numbers:
            spacing, shape = _read_case_geometry(_image_path(folder, number))
            cases.append({"id": f"{number:04d}", "image": f"img/img{number:04d}.nii.gz",
                          "label": f"label/label{number:04d}.nii.gz", "spacing": spacing, "shape": shape})
        record = {
            "name": "segbench-phantom",
            "description": "Procedural abdominal CT phantom (portal venous phase), 8 Synapse organs, raw BTCV layout",
            "generator_version": GENERATOR_VERSION,
            "key": spec.key(),
            "spec": spec.as_dict(),
            "labels": {"0": "background", **{str(k): v for k, v in SYNAPSE_ORGANS.items()}},
            "num_cases": spec.num_cases,
            "cases": cases,
        }
        replace_atomically(folder / "dataset.json",
                            lambda temporary: temporary.write_text(json.dumps(record, indent=2) + "\n"))
    return folder
