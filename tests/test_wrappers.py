"""featsup._wrappers: one answer to "which network, and is it a FeatureSupervisor?"."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import featsup._wrappers
from featsup._wrappers import supervised_student, unwrap, wrapper_layers
from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor
from featsup.training import unwrap_model

WIDTHS = (4, 8, 16)


def compiled(model: nn.Module) -> nn.Module:
    return torch.compile(model, backend="aot_eager")  # type: ignore[return-value]


def supervisor(student: nn.Module) -> FeatureSupervisor:
    return FeatureSupervisor(student, UNetPlusPlus(2, 2, widths=WIDTHS, skip_connections=False))


def test_unwrap_sees_through_every_nesting_of_wrappers() -> None:
    net = nn.Linear(2, 2)
    assert unwrap(net) is net
    for wrapped in (nn.DataParallel(net), compiled(net), compiled(nn.DataParallel(net)),
                    nn.DataParallel(compiled(net))):  # fmt: skip
        assert unwrap(wrapped) is net
        assert unwrap_model(wrapped) is net  # the training name is the same function
    layers = [type(m).__name__ for m in wrapper_layers(compiled(nn.DataParallel(net)))]
    assert layers == ["OptimizedModule", "DataParallel", "Linear"]


@pytest.mark.parametrize(
    "wrap",
    [lambda m: m, nn.DataParallel, compiled, lambda m: nn.DataParallel(compiled(m))],
    ids=["bare", "data_parallel", "compiled", "data_parallel_compiled"],
)
def test_supervised_student_finds_the_unwrapped_student(wrap) -> None:  # type: ignore[no-untyped-def]
    student = UNetPlusPlus(1, 2, widths=WIDTHS)
    sup = supervisor(student)
    assert supervised_student(wrap(sup)) is student
    sup.close()
    inner = supervisor(compiled(student))  # a compiled student gives the network itself
    assert supervised_student(wrap(inner)) is student
    inner.close()


def test_supervised_student_is_none_for_other_models() -> None:
    student = UNetPlusPlus(1, 2, widths=WIDTHS)
    assert supervised_student(student) is None
    assert supervised_student(compiled(student)) is None

    class HasStudent(nn.Module):  # duck typing on .student is no longer the test
        def __init__(self) -> None:
            super().__init__()
            self.student = nn.Linear(2, 2)

    assert supervised_student(HasStudent()) is None


def test_wrappers_is_a_leaf_module() -> None:
    # training imports it and supervision imports training: featsup at module level only
    tree = ast.parse(Path(featsup._wrappers.__file__).read_text())
    imported = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert imported and not [m for m in imported if m.startswith("featsup")], imported
