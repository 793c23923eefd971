"""The organ table and the nominal anatomy: volumes, positions, shapes and tubes of an average adult
(patient scale 1, body frame, mm; x left, y posterior, z superior)."""

from __future__ import annotations

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
