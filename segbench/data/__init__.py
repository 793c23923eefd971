"""Data: sources (where cases are), the phantom, and the Lightning data module."""

from .datamodule import SegDataModule, resize_slices, window_hu
from .datasets import AbdomenCT1KSource, ChaosSource, NnUNetSource, SynapseSource
from .sources import DataSource, NiftiFolderSource, PhantomSource
from .volume import CaseRef, Volume, load_nifti_case, save_nifti_label, write_prediction

__all__ = ["SegDataModule", "DataSource", "NiftiFolderSource", "PhantomSource", "SynapseSource", "ChaosSource",
           "AbdomenCT1KSource", "NnUNetSource", "CaseRef", "Volume", "load_nifti_case", "save_nifti_label",
           "write_prediction", "resize_slices", "window_hu"]
