"""Training / validation / test splits of cases: every choice on validation, test scored once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from featsup._checks import check_in_range, check_positive

__all__ = ["split_cases"]

Case = TypeVar("Case")


def split_cases(
    cases: Sequence[Case],
    *,
    val_cases: int = 3,
    test_fraction: float = 0.25,
    test_ids: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, list[Case]]:
    """Split cases into disjoint training, validation and test lists, reproducibly.

    Test cases are drawn first (``test_fraction`` of them, at least one, or exactly the
    ``test_ids``), then ``val_cases`` of the rest; the order of ``cases`` is kept inside
    each list. Choose steps, heads, thresholds and post-processing on validation only and
    score the test cases once, at the end.

    Args:
        cases: the cases (for example :class:`~featsup.data.LitsCase`; ``test_ids`` needs
            a ``case_id`` attribute).
        val_cases: validation cases, >= 1.
        test_fraction: share of the cases held out for test, in (0, 1).
        test_ids: case ids to test on instead of a random draw.
        seed: the draw's seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.

    Raises:
        ValueError: for unknown ``test_ids`` or too few cases for the three parts.

    Example:
        >>> parts = split_cases(list(range(10)), val_cases=2, test_fraction=0.3, seed=1)
        >>> [len(parts[k]) for k in ("train", "val", "test")]
        [5, 2, 3]
        >>> sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(10))
        True
    """
    check_positive("val_cases", val_cases)
    check_in_range("test_fraction", test_fraction, 1e-9, 1 - 1e-9)
    cases = list(cases)
    if test_ids is not None:
        ids = [str(getattr(c, "case_id", c)) for c in cases]
        unknown = sorted(set(map(str, test_ids)) - set(ids))
        if unknown:
            raise ValueError(f"test_ids: expected ids among {ids}, got unknown {unknown}")
        chosen = set(map(str, test_ids))
        test = [c for c, i in zip(cases, ids, strict=True) if i in chosen]
        rest = [c for c, i in zip(cases, ids, strict=True) if i not in chosen]
    else:
        order = np.random.default_rng(seed).permutation(len(cases))
        n_test = max(1, round(test_fraction * len(cases)))
        test = [cases[i] for i in sorted(order[:n_test])]
        rest = [cases[i] for i in sorted(order[n_test:])]
    if len(rest) < val_cases + 1:
        raise ValueError(
            f"val_cases: expected fewer than the {len(rest)} cases left after the test cases, "
            f"got {val_cases}; fix: more cases, fewer validation cases or a smaller test part"
        )
    order = np.random.default_rng(seed + 1).permutation(len(rest))
    val = [rest[i] for i in sorted(order[:val_cases])]
    train = [rest[i] for i in sorted(order[val_cases:])]
    return {"train": train, "val": val, "test": test}
