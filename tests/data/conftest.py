"""Fixtures for the data tests: a small phantom data set written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("nibabel")
pytest.importorskip("cv2")

from featsup.data import write_phantom_dataset

SHAPE = (32, 96, 96)


@pytest.fixture(scope="session")
def phantom_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three phantom cases (seeds 11, 12, 13) in LiTS layout, stored as LPS."""
    folder = tmp_path_factory.mktemp("lits")
    write_phantom_dataset(folder, 3, seed=11, shape=SHAPE)
    return folder
