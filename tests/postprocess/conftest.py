"""Fixtures of the CRF tests: a small blob image and phantom slices with noisy predictions."""

from __future__ import annotations

import numpy as np
import pytest
from crf_cases import Case, blob, degrade


@pytest.fixture
def blob2d() -> Case:
    return blob((48, 56), 0)


@pytest.fixture
def blob3d() -> Case:
    return blob((10, 40, 44), 1)


@pytest.fixture(scope="session")
def phantom_volume() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(12, 512, 512) phantom at LiTS-like spacing: windowed image, liver mask, spacing."""
    from featsup.data import hu_window, make_phantom

    volume, labels, spacing = make_phantom(0, (12, 512, 512), spacing=(2.5, 0.703125, 0.703125))
    return hu_window(volume).astype(np.float32), labels >= 1, spacing


@pytest.fixture(scope="session")
def phantom_slice(phantom_volume) -> Case:
    """Slice 4 of the phantom with a degraded liver prediction (seed 4)."""
    image, liver, _ = phantom_volume
    return Case(image[4], degrade(liver[4], 4), liver[4])


@pytest.fixture(scope="session")
def phantom_roi(phantom_volume) -> tuple[Case, tuple[float, float, float]]:
    """The liver's bounding box (plus 8 pixels) of the phantom volume, degraded in 3D."""
    image, liver, spacing = phantom_volume
    rows = np.flatnonzero(liver.any((0, 2)))
    cols = np.flatnonzero(liver.any((0, 1)))
    box = (
        slice(0, 10),
        slice(max(rows[0] - 8, 0), rows[-1] + 9),
        slice(max(cols[0] - 8, 0), cols[-1] + 9),
    )
    truth = liver[box]
    return Case(image[box], degrade(truth, 7), truth), spacing
