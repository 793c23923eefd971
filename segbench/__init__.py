"""segbench: compare segmentation losses on abdominal CT with Hydra + Lightning."""

__version__ = "0.1.0"

#: The 8 Synapse organs, by label id (TransUNet's 8-class protocol).
SYNAPSE_ORGANS = {
    1: "spleen",
    2: "kidney_r",
    3: "kidney_l",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "aorta",
    8: "pancreas",
}
