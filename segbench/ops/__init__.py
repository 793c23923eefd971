"""Tensor operations shared by losses and metrics (device-agnostic torch)."""

from .edt import distance_transform_edt, signed_distance, unsigned_distance

__all__ = ["distance_transform_edt", "signed_distance", "unsigned_distance"]
