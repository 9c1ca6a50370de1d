"""CT data pipeline: LiTS NIfTI I/O, preprocessing, slice datasets and a synthetic phantom.

Axis convention: every array handed out or accepted by ``featsup.data`` is in processing
order ``(D, H, W)``: ``D`` axial slices from inferior to superior, ``H`` rows from anterior
to posterior, ``W`` columns from the patient's right to left (radiological display, as
``SimpleITK.GetArrayFromImage``). Spacing tuples follow the same order, in mm. NIfTI
files keep their own voxel order and affine on disk; loading and saving convert exactly.
nibabel and OpenCV (``pip install "featsup[data]"``) are imported only when needed.
"""

from __future__ import annotations

from featsup.data._cache import PreparedVolume, prepare_volumes
from featsup.data.augment import SliceAugment
from featsup.data.lits import (
    CaseProblem,
    LazyCases,
    LitsCase,
    LoadedCase,
    check_dataset,
    find_cases,
    load_case,
    load_segmentation,
    load_volume,
    save_prediction,
    validate_case,
)
from featsup.data.patches import TumourPatchDataset
from featsup.data.phantom import FIELD_OF_VIEW_MM, Phantom, make_phantom, write_phantom_dataset
from featsup.data.preprocess import (
    DARKNESS_SIGMAS,
    HU_WINDOW,
    Preprocessing,
    RoiCrop,
    apply_crop,
    clahe,
    crop_to_roi,
    darkness_channel,
    find_roi,
    hu_window,
    largest_connected_component,
    normalize,
    preprocess_volume,
    preprocess_window,
    resize,
    uncrop,
)
from featsup.data.slices import LiverSliceDataset, TumourSliceDataset, lesion_contrasts
from featsup.data.splits import split_cases
from featsup.data.stages import STAGE_EMPTY_FRACTION, stage_datasets

__all__ = [
    "DARKNESS_SIGMAS",
    "FIELD_OF_VIEW_MM",
    "HU_WINDOW",
    "STAGE_EMPTY_FRACTION",
    "CaseProblem",
    "LazyCases",
    "LitsCase",
    "LiverSliceDataset",
    "LoadedCase",
    "Phantom",
    "PreparedVolume",
    "Preprocessing",
    "RoiCrop",
    "SliceAugment",
    "TumourPatchDataset",
    "TumourSliceDataset",
    "apply_crop",
    "check_dataset",
    "clahe",
    "crop_to_roi",
    "darkness_channel",
    "find_cases",
    "find_roi",
    "hu_window",
    "largest_connected_component",
    "lesion_contrasts",
    "load_case",
    "load_segmentation",
    "load_volume",
    "make_phantom",
    "normalize",
    "prepare_volumes",
    "preprocess_volume",
    "preprocess_window",
    "resize",
    "save_prediction",
    "split_cases",
    "stage_datasets",
    "uncrop",
    "validate_case",
    "write_phantom_dataset",
]
