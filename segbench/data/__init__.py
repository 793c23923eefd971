"""Data: sources (where cases are), the phantom, and the Lightning data modules (2D slices, 3D patches)."""

from .datamodule import SegDataModule, resize_slices, window_hu
from .datamodule3d import PatchDataModule
from .datasets import AbdomenCT1KSource, ChaosSource, NnUNetSource, SynapseSource
from .sources import DataSource, NiftiFolderSource, PhantomSource
from .volume import CaseRef, Volume, load_nifti_case, save_nifti_label, write_prediction

__all__ = ["SegDataModule", "PatchDataModule", "DataSource", "NiftiFolderSource", "PhantomSource", "SynapseSource",
           "ChaosSource",
           "AbdomenCT1KSource", "NnUNetSource", "CaseRef", "Volume", "load_nifti_case", "save_nifti_label",
           "write_prediction", "resize_slices", "window_hu"]
