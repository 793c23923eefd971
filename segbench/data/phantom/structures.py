"""The structures painted into the tissue map: body, spine and muscles, ribs, diaphragm, lungs and
heart, vessels, kidneys, spleen, pancreas, gallbladder, stomach, liver and bowel."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .anatomy import (
    BODY_WALL_MUSCLE_MM,
    CANAL_CENTRE_Y,
    CANAL_RADIUS,
    DISC_HEIGHT_MM,
    DOME_DROP_MM,
    DOME_RADIUS_MM,
    GALLBLADDER_AXIS,
    GALLBLADDER_HALF_AXES,
    KIDNEY_HALF_AXES,
    LEFT_DOME,
    LIVER_LEFT_LOBE,
    LIVER_RIGHT_LOBE,
    LIVER_X,
    OUTLINE_EXPONENT,
    RIGHT_DOME,
    SMALL_BOWEL_BOX,
    SPLEEN_HALF_AXES,
    TUBES,
    VERTEBRA_CENTRE_Y,
    VERTEBRA_HALF_AXES,
    VERTEBRA_PERIOD_MM,
)
from .geometry import centre_line, ellipsoid_distance, local_coordinates, smooth_noise, tube_box, tube_distance, unit
from .painting import Painter
from .tissues import Tissue


def paint_body(painter: Painter, scale: float, cavity: np.ndarray, fat_mm: float, harmonics) -> None:
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


def paint_spine_and_muscles(painter: Painter, scale: float) -> None:
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


def paint_ribs(painter: Painter, scale: float, cavity: np.ndarray) -> None:
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


def paint_diaphragm_lungs_heart(painter: Painter, scale: float) -> None:
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


def paint_tube(painter: Painter, name: str, points, radii, tissue: Tissue,
               allowed: Sequence[Tissue] = (Tissue.VISCERAL_FAT,)) -> None:
    """A vessel: a tube through ``points`` painted into the allowed voxels."""
    centres, tube_radii = centre_line(np.asarray(points, float), np.asarray(radii, float))
    low, high = tube_box(centres, tube_radii, 2.0)
    box = painter.grid.box(low, high)
    if box is None:
        return
    distance = tube_distance(painter.grid, box, centres, tube_radii, reach_mm=2.0)
    mask, _ = painter.claim(box, distance, None, allowed)
    painter.paint(box, mask, tissue)


def paint_kidney(painter: Painter, side: str, centre: np.ndarray, scale: float, volume_ml: float) -> np.ndarray:
    """Bean-shaped kidney: cortex, medulla around a fat-filled sinus opening anteromedially. Returns the hilum."""
    rng = painter.rng(side)
    medial = -1.0 if side == "kidney_l" else 1.0  # +x is the patient's left, so the left kidney's medial is -x
    long_axis = unit([medial * 0.25, 0.15, 1.0])  # upper pole medial and posterior
    hilum_axis = unit([medial, -0.8, 0.0])
    hilum_axis = unit(hilum_axis - hilum_axis.dot(long_axis) * long_axis)
    third_axis = np.cross(long_axis, hilum_axis)
    axes = (hilum_axis, third_axis, long_axis)
    long_half, hilum_half, third_half = KIDNEY_HALF_AXES
    half = np.array([hilum_half, third_half, long_half]) * scale * rng.uniform(0.92, 1.08, 3)
    reach = 1.3 * half.max()
    low, high = centre - reach, centre + reach
    box = painter.grid.box(low, high)
    deformation = smooth_noise(rng, low, high, 30.0, painter.grid, box)
    hilum = centre + hilum_axis * half[0] * 0.75
    if box is None:
        return hilum
    coords = painter.grid.coords(box)
    shape = ellipsoid_distance(coords, centre, axes, half) / (1 + np.float32(0.06) * deformation)
    sinus_centre = centre + hilum_axis * half[0] * 0.55
    sinus = ellipsoid_distance(coords, sinus_centre, axes, half * np.array([0.55, 0.45, 0.55])) <= 1
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


def paint_spleen(painter: Painter, centre: np.ndarray, scale: float, volume_ml: float) -> None:
    """Crescent against the left posterolateral ribs: concave hilum facing anteromedially."""
    rng = painter.rng("spleen")
    outward = unit([centre[0], centre[1], 0.0])  # from the body axis to the spleen: thickness direction
    tangent = np.cross([0.0, 0.0, 1.0], outward)  # in-plane, along the body wall
    long_axis = unit(0.94 * np.array([0.0, 0.0, 1.0]) + 0.35 * (tangent if tangent[1] > 0 else -tangent))
    width_axis = np.cross(long_axis, outward)
    half = np.array(SPLEEN_HALF_AXES) * scale * rng.uniform(0.92, 1.08, 3)
    reach = 1.3 * half.max()
    low, high = centre - reach, centre + reach
    box = painter.grid.box(low, high)
    deformation = smooth_noise(rng, low, high, 35.0, painter.grid, box)
    if box is None:
        return
    # the tips curl towards -outward (medially): convex against the wall, concave at the hilum
    distance = ellipsoid_distance(painter.grid.coords(box), centre, (outward, width_axis, long_axis), half,
                                  bend=0.45) / (1 + np.float32(0.08) * deformation)
    mask, _ = painter.claim(box, distance, volume_ml, (Tissue.VISCERAL_FAT,))
    painter.paint(box, mask, Tissue.SPLEEN)


def paint_pancreas(painter: Painter, points: np.ndarray, radii: np.ndarray, volume_ml: float) -> None:
    """Lobulated tube (head in the C-loop, neck, body, tail to the splenic hilum)."""
    rng = painter.rng("pancreas")
    radii = radii * rng.uniform(0.85, 1.15, len(radii))
    centres, tube_radii = centre_line(points, radii)
    low, high = tube_box(centres, tube_radii, 12.0)
    box = painter.grid.box(low, high)
    lobulation = smooth_noise(rng, low, high, 6.0, painter.grid, box)  # fine fat clefts between lobules
    bulges = smooth_noise(rng, low, high, 25.0, painter.grid, box)
    if box is None:
        return
    distance = tube_distance(painter.grid, box, centres, tube_radii, reach_mm=12.0)
    # surface moved by at most 2 x 2 + 2 x 2 = 8 mm, inside the 12 mm the distance is computed for
    distance -= np.float32(2.0) * np.clip(lobulation, -2, 2) + np.float32(2.0) * np.clip(bulges, -2, 2)
    mask, _ = painter.claim(box, distance, volume_ml, (Tissue.VISCERAL_FAT,))
    painter.paint(box, mask, Tissue.PANCREAS)


def paint_gallbladder(painter: Painter, centre: np.ndarray, scale: float, volume_ml: float) -> None:
    """Pear: wide fundus (anterior-inferior), narrow neck; bile inside a thin enhancing wall."""
    rng = painter.rng("gallbladder")
    long_axis = unit(np.asarray(GALLBLADDER_AXIS) + rng.normal(0, 0.1, 3))
    side_axis = unit(np.cross(long_axis, [0.0, 1.0, 0.0]))
    third_axis = np.cross(long_axis, side_axis)
    half = np.array(GALLBLADDER_HALF_AXES) * scale * rng.uniform(0.9, 1.1, 3)
    reach = 1.3 * half.max()
    low, high = centre - reach, centre + reach
    box = painter.grid.box(low, high)
    deformation = smooth_noise(rng, low, high, 25.0, painter.grid, box)
    if box is None:
        return
    along, side, third = local_coordinates(painter.grid.coords(box), centre, (long_axis, side_axis, third_axis), half)
    taper = np.clip(1.0 - 0.3 * along, 0.4, 1.5)  # the neck (+along) is narrower than the fundus
    distance = np.sqrt(along ** 2 + (side ** 2 + third ** 2) / taper ** 2) / (1 + np.float32(0.06) * deformation)
    mask, threshold = painter.claim(box, distance, volume_ml, (Tissue.VISCERAL_FAT,))
    painter.paint(box, mask, Tissue.GALLBLADDER_WALL)
    wall_fraction = 2.5 / (half[1] * threshold)  # ~2.5 mm wall
    painter.paint(box, mask & (distance <= threshold * (1 - wall_fraction)), Tissue.GALLBLADDER_BILE)


def paint_hollow(painter: Painter, name: str, points, radii, *, wall: Tissue, content: Tissue, gas: Tissue,
                 wall_mm: float, gas_fraction: float = 0.0, volume_ml: float | None = None,
                 gas_bubbles_per_cm: float = 0.0) -> None:
    """A hollow viscus (stomach, duodenum, bowel loop): wall, contents, and gas in its anterior part
    (the patient lies supine, so gas rises to the front), optionally with gas bubbles (faeces).

    With ``volume_ml`` the tube is deformed by a smooth random field and grown or shrunk to that
    volume; without, it is painted as given (its random radii and course are enough variation).
    """
    rng = painter.rng(name)
    radii = np.asarray(radii, float) * rng.uniform(0.9, 1.1, len(radii))
    centres, tube_radii = centre_line(np.asarray(points, float), radii)
    margin = 12.0 if volume_ml is not None else 3.0
    low, high = tube_box(centres, tube_radii, margin)
    box = painter.grid.box(low, high)
    deformation = smooth_noise(rng, low, high, 30.0, painter.grid, box) if volume_ml is not None else None
    # bubbles: small spheres scattered inside the lumen along the centre line
    length_mm = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum())
    n_bubbles = int(gas_bubbles_per_cm * length_mm / 10)
    on_line = centres[rng.integers(len(centres), size=n_bubbles)]
    bubble_centres = on_line + rng.normal(0, 0.3, (n_bubbles, 3)) * tube_radii.mean()
    bubble_radii = rng.uniform(1.5, 4.0, n_bubbles)
    if box is None:
        return
    distance = tube_distance(painter.grid, box, centres, tube_radii, reach_mm=margin)
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
        painter.paint(box, lumen & (tube_distance(painter.grid, box, bubble_centres, bubble_radii, 1.0) <= 0), gas)


def _blend(right: dict, left: dict, t: np.ndarray, key: str) -> np.ndarray:
    return np.float32(right[key]) + (np.float32(left[key]) - np.float32(right[key])) * t


def paint_liver(painter: Painter, scale: float, offset: np.ndarray, volume_ml: float) -> None:
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
    deformation = smooth_noise(rng, low, high, 40.0, painter.grid, box)
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


def paint_bowel(painter: Painter, scale: float, at) -> None:
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
    paint_hollow(painter, "duodenum", at(points, "pancreatic"), width * scale * np.array(radii, float),
                 content=content, gas_fraction=gas, **hollow)
    points, radii = TUBES["colon"]
    points = at(points, "colon") + rng.normal(0, 5, (len(points), 3))
    radii = scale * np.array(radii, float)
    # three segments (ascending, transverse, descending), each with its own small box and gas level
    for segment, (first, last) in enumerate(((0, 3), (2, 7), (6, 9))):
        paint_hollow(painter, f"colon {segment}", points[first:last], radii[first:last], content=Tissue.FAECES,
                     gas_fraction=rng.uniform(0.0, 0.2), gas_bubbles_per_cm=2.0, **hollow)
    box_low = np.array([b[0] for b in SMALL_BOWEL_BOX]) * scale
    box_high = np.array([b[1] for b in SMALL_BOWEL_BOX]) * scale
    for loop in range(int(rng.integers(12, 19))):
        walk = [rng.uniform(box_low, box_high)]
        for _ in range(5):  # a smooth random walk of 25 mm steps kept inside the box
            walk.append(np.clip(walk[-1] + 25 * scale * unit(rng.normal(size=3)), box_low, box_high))
        width, content, gas = contents()
        radius = width * scale * rng.uniform(9, 13)
        paint_hollow(painter, f"small bowel {loop}", np.array(walk), np.full(len(walk), radius),
                     content=content, gas_fraction=gas, **hollow)
