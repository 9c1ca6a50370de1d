"""Shared test fixtures: a fixed seed for every test."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002  (the legacy global RNG some libraries still use)
    torch.manual_seed(0)
