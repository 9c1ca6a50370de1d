"""benchmarks/phantom_stats.py: the oracle Dice that the lesion sizes allow."""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
phantom_stats = pytest.importorskip("phantom_stats")

sizes = st.lists(st.integers(10, 50_000), max_size=10)


def test_docstring_example_holds() -> None:
    assert doctest.testmod(phantom_stats, raise_on_error=False).failed == 0


@given(st.lists(sizes, min_size=1, max_size=8), st.integers(0, 5000), st.integers(0, 5000))
def test_oracle_dice_falls_as_it_skips_more_lesions(cases, a, b) -> None:
    rows = [{"voxels": v} for v in cases]
    assert phantom_stats.oracle_dice(rows, 0) == (1.0, 1.0)  # finds everything
    low, high = sorted((a, b))
    per_low, global_low = phantom_stats.oracle_dice(rows, low)
    per_high, global_high = phantom_stats.oracle_dice(rows, high)
    assert 0.0 <= per_high <= per_low <= 1.0 and 0.0 <= global_high <= global_low <= 1.0
    free = sum(not v for v in cases) / len(cases)  # tumour-free cases always score 1
    assert per_high >= free - 1e-12
