"""Tissues of the phantom: one id per tissue in the painted map, with its Synapse label and its
Hounsfield-unit range; the label and the image both come from the tissue map."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


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
#: For the tissues in HU_TIED the range is an offset from the tissue they are tied to.
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
HU_TIED = {Tissue.ARTERY: Tissue.AORTA, Tissue.KIDNEY_L_CORTEX: Tissue.KIDNEY_R_CORTEX,
           Tissue.KIDNEY_L_MEDULLA: Tissue.KIDNEY_R_MEDULLA, Tissue.BOWEL_COLLAPSED: Tissue.PANCREAS}

LABEL_OF_TISSUE = np.array([TISSUE_TABLE[t][0] for t in Tissue], dtype=np.uint8)
