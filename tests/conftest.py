"""Shared test fixtures: a fixed seed for every test; doctests of a missing extra skip;
the benchmark scripts' held-out reports."""

from __future__ import annotations

import doctest
import json
import random
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002  (the legacy global RNG some libraries still use)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one torch thread avoids oversubscription on a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The optional dependencies of featsup, by the extra that installs them (pyproject).
_EXTRAS = {
    "nibabel": "data",
    "cv2": "data",
    "pydensecrf": "crf",
    "segmentation_models_pytorch": "smp",
    "matplotlib": "viz",
}


def _missing_extra(error: BaseException | None) -> str | None:
    """The optional module whose absence raised ``error`` (or its causes), else None."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and error.name is not None:
            root = error.name.split(".")[0]
            if root in _EXTRAS:
                return root
        error = error.__cause__ or error.__context__
    return None


class _SkipDoctestsOfMissingExtras:
    """A docstring example that needs a missing extra skips instead of failing.

    A plugin object rather than a conftest hook: the doctests live in the installed
    featsup (site-packages under CI), outside this folder, where conftest hooks do not
    reach. Any other error, or a wrong output, still fails.
    """

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        try:
            yield
        except doctest.UnexpectedException as failure:
            module = _missing_extra(failure.exc_info[1])
            if module is None:
                raise
            pytest.skip(f"needs {module}: pip install 'featsup[{_EXTRAS[module]}]'")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_SkipDoctestsOfMissingExtras(), "featsup-doctest-extras")


@pytest.fixture
def write_report(tmp_path: Path) -> Callable[[str, dict[str, tuple[float, float]]], Path]:
    """``write(file name, {run: (tumour Dice per case, global)}) -> path``: a
    ``benchmarks/validation_size.py --json`` report in ``tmp_path`` whose runs
    ``out/RUN`` hold the scores of the example's choice (for the benchmark scripts' tests)."""

    def write(name: str, scores: dict[str, tuple[float, float]]) -> Path:
        runs = {f"out/{run}": {"base/grid": {"tumour_per_case": a, "tumour_global": b}}
                for run, (a, b) in scores.items()}  # fmt: skip
        path = tmp_path / name
        path.write_text(json.dumps({"runs": runs}))
        return path

    return write
