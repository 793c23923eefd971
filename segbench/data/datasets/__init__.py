"""Real datasets: Synapse (BTCV, raw or TransUNet layout), CHAOS (CT / MR DICOM), AbdomenCT-1K, nnU-Net.

Each source lists cases and loads them as :class:`~segbench.data.volume.Volume`; the data
module does splitting, preprocessing (cached) and slicing. ``data/README.md`` says where each
dataset comes from and the exact layout expected; ``configs/data/<name>.yaml`` wires them.
"""

from omegaconf import OmegaConf

from .abdomenct1k import AbdomenCT1KSource
from .chaos import ChaosSource, read_dicom_series
from .nnunet import NnUNetSource, dataset_labels, nnunet_class_names
from .synapse import BTCV_TO_SYNAPSE, SYNAPSE_TEST, SYNAPSE_TRAIN, SynapseSource, convert_btcv

# configs/data/nnunet.yaml reads the classes from dataset.json while the config is resolved:
# class_names: ${nnunet_class_names:${data.root}}, num_classes: ${nnunet_num_classes:${data.root}}
if not OmegaConf.has_resolver("nnunet_class_names"):
    OmegaConf.register_new_resolver("nnunet_class_names", nnunet_class_names)
if not OmegaConf.has_resolver("nnunet_num_classes"):
    OmegaConf.register_new_resolver("nnunet_num_classes", lambda root: len(nnunet_class_names(root)))

__all__ = ["AbdomenCT1KSource", "ChaosSource", "NnUNetSource", "SynapseSource", "BTCV_TO_SYNAPSE", "SYNAPSE_TRAIN",
           "SYNAPSE_TEST", "convert_btcv", "dataset_labels", "nnunet_class_names", "read_dicom_series"]
