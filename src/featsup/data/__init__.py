"""CT data pipeline: LiTS NIfTI I/O, preprocessing, slice datasets and a synthetic phantom."""

from __future__ import annotations

from featsup.data.phantom import FIELD_OF_VIEW_MM, Phantom, make_phantom, write_phantom_dataset

__all__ = ["FIELD_OF_VIEW_MM", "Phantom", "make_phantom", "write_phantom_dataset"]
