"""One case: the patient's random draws, the scan grid, every structure painted in order, and the CT
image rendered from the tissue map (HU, noise, partial-volume blur)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import (
    AORTA_DIAMETER_MM,
    BODY_WALL_MUSCLE_MM,
    CAVITY_HALF_AXES,
    GALLBLADDER_CENTRE,
    KIDNEY_CENTRE,
    KIDNEY_HALF_AXES,
    NOISE_SIGMA_HU,
    ORGAN_VOLUME_JITTER,
    ORGAN_VOLUME_ML,
    PATIENT_SCALE_RANGE,
    POSITION_JITTER_MM,
    RIGHT_DOME,
    SPLEEN_CENTRE,
    SUBCUTANEOUS_FAT_MM,
    TUBES,
)
from .geometry import Grid
from .painting import Painter
from .spec import PhantomSpec
from .structures import (
    paint_body,
    paint_bowel,
    paint_diaphragm_lungs_heart,
    paint_gallbladder,
    paint_hollow,
    paint_kidney,
    paint_liver,
    paint_pancreas,
    paint_ribs,
    paint_spine_and_muscles,
    paint_spleen,
    paint_tube,
)
from .tissues import HU_TIED, LABEL_OF_TISSUE, TISSUE_TABLE, Tissue


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
    for tissue, source in HU_TIED.items():
        hu[tissue] += hu[source]
    return _Patient(scale, fov, z_extent, slice_thickness, top_margin, noise_sigma, blur_sigma_mm, fat_mm, cavity,
                    body_offset, outline_harmonics, volume_ml, offset, aorta_radius, hu)


def _scan_grid(patient: _Patient, size: int) -> Grid:
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
    return Grid(z=z_top - (n_slices - 0.5 - np.arange(n_slices)) * sz,
                y=(np.arange(size) + 0.5 - size / 2) * sy - patient.body_offset[1],
                x=(np.arange(size) + 0.5 - size / 2) * sx - patient.body_offset[0])


def synthesize_case(case_seed_value: int, spec: PhantomSpec) -> PhantomCase:
    """Generate one case with its tissue map and parameters (``generate_case`` returns the arrays only)."""
    patient = _sample_patient(np.random.default_rng([case_seed_value, 0]), spec)
    grid = _scan_grid(patient, spec.size)
    spacing = (patient.slice_thickness,) + (float(np.float32(patient.fov_mm / spec.size)),) * 2
    tissue = np.empty((len(grid.z), len(grid.y), len(grid.x)), dtype=np.uint8)
    painter = Painter(grid, tissue, float(np.prod(spacing)), case_seed_value)
    _paint_anatomy(painter, patient)
    image = _render_image(tissue, patient, spacing, np.random.default_rng([case_seed_value, 1]))
    params = {"patient_scale": patient.scale, "fov_mm": patient.fov_mm, "z_extent_mm": len(grid.z) * spacing[0],
              "noise_sigma_hu": patient.noise_sigma_hu, "blur_sigma_mm": patient.blur_sigma_mm,
              "subcutaneous_fat_mm": patient.subcutaneous_fat_mm, "aorta_diameter_mm": 2 * patient.aorta_radius,
              "scan_bottom_z_mm": float(grid.z[0] - spacing[0] / 2)}
    return PhantomCase(image, LABEL_OF_TISSUE[tissue], spacing, tissue,
                       {t.name.lower(): patient.hu[t] for t in Tissue}, params)


def _paint_anatomy(painter: Painter, patient: _Patient) -> None:
    """Paint every structure. Order matters: each one only takes voxels still free for it."""
    at, scale, volume = patient.at, patient.scale, patient.volume_ml
    paint_body(painter, scale, patient.cavity, patient.subcutaneous_fat_mm, patient.outline_harmonics)
    paint_spine_and_muscles(painter, scale)
    paint_ribs(painter, scale, patient.cavity)
    paint_diaphragm_lungs_heart(painter, scale)

    # vessels first: organs wrap around them (IVC groove of the liver, splenic vein behind the pancreas)
    through_diaphragm = (Tissue.VISCERAL_FAT, Tissue.LUNG, Tissue.MUSCLE)
    aorta_points, aorta_taper = TUBES["aorta"]
    paint_tube(painter, "aorta", at(aorta_points), patient.aorta_radius * np.array(aorta_taper), Tissue.AORTA,
               through_diaphragm)
    paint_tube(painter, "ivc", at(TUBES["ivc"][0]), scale * np.array(TUBES["ivc"][1]), Tissue.IVC,
               through_diaphragm)
    for name in ("sma", "celiac_hepatic", "splenic_artery"):
        points, radii = TUBES[name]
        paint_tube(painter, name, at(points, "pancreatic"), scale * np.array(radii), Tissue.ARTERY)
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
        paint_tube(painter, name, points, radii, Tissue.VEIN)

    for side, vein in (("kidney_r", "right_renal_vein"), ("kidney_l", "left_renal_vein")):
        hilum = paint_kidney(painter, side, at(KIDNEY_CENTRE[side], side), scale, volume[side])
        points, radii = TUBES[vein]
        paint_tube(painter, vein, np.vstack([hilum, at(points)]), scale * np.array([5.0, *radii]), Tissue.VEIN)

    paint_spleen(painter, at(SPLEEN_CENTRE, "spleen"), scale, volume["spleen"])
    paint_pancreas(painter, pancreas_points, pancreas_radii, volume["pancreas"])
    paint_gallbladder(painter, at(GALLBLADDER_CENTRE, "liver") + patient.offset["gallbladder"] / 2, scale,
                      volume["gallbladder"])
    paint_hollow(painter, "stomach", at(TUBES["stomach"][0], "stomach"), scale * np.array(TUBES["stomach"][1]),
                 wall=Tissue.STOMACH_WALL, content=Tissue.STOMACH_CONTENT, gas=Tissue.STOMACH_GAS,
                 wall_mm=5.0, gas_fraction=float(painter.rng("stomach gas").uniform(0.0, 0.2)),
                 volume_ml=volume["stomach"])
    paint_liver(painter, scale, patient.offset["liver"], volume["liver"])
    for name in ("hepatic_vein_right", "hepatic_vein_middle", "hepatic_vein_left", "portal_branch_right",
                 "portal_branch_left"):
        points, radii = TUBES[name]
        paint_tube(painter, name, at(points, "liver"), scale * np.array(radii), Tissue.LIVER_VESSEL, (Tissue.LIVER,))
    paint_bowel(painter, scale, at)


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
