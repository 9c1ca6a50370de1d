"""Every pruned level exports (torch.export and ONNX) and matches eager output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featsup.models import UNetPlusPlus


@pytest.fixture(scope="module")
def model() -> UNetPlusPlus:
    torch.manual_seed(0)
    net = UNetPlusPlus(1, 2, widths=(4, 8, 16, 32, 64))
    net.train()
    net(torch.randn(4, 1, 32, 32))  # non-trivial batch-norm statistics
    return net.eval()


@pytest.mark.parametrize("head", [1, 2, 3, 4])
def test_torch_export_of_pruned_level(model: UNetPlusPlus, head: int) -> None:
    pruned = model.pruned(head=head)
    x = torch.randn(2, 1, 32, 48)
    program = torch.export.export(pruned, (x,))
    torch.testing.assert_close(program.module()(x), pruned(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", [1, 2, 3, 4])
def test_onnx_export_of_pruned_level(model: UNetPlusPlus, head: int, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pruned = model.pruned(head=head)
    x = torch.randn(1, 1, 32, 48)
    path = tmp_path / f"head{head}.onnx"
    torch.onnx.export(pruned, (x,), str(path), dynamo=True, opset_version=18)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = pruned(x).numpy()
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def volume_model() -> UNetPlusPlus:
    torch.manual_seed(0)
    net = UNetPlusPlus(
        1, 2, widths=(2, 4, 4, 8), spatial_dims=3, pooling=[[1, 2, 2]] + [[2] * 3] * 2
    )
    net.train()
    net(torch.randn(2, 1, 4, 8, 8))  # non-trivial batch-norm statistics
    return net.eval()


@pytest.mark.parametrize("head", [1, 2, 3])
def test_torch_export_of_pruned_3d_level(volume_model: UNetPlusPlus, head: int) -> None:
    pruned = volume_model.pruned(head=head)
    x = torch.randn(1, 1, 5, 9, 16)  # odd sizes: the padding and the crop are exported
    program = torch.export.export(pruned, (x,))
    torch.testing.assert_close(program.module()(x), pruned(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", [1, 3])
def test_onnx_export_of_pruned_3d_level(
    volume_model: UNetPlusPlus, head: int, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pruned = volume_model.pruned(head=head)
    x = torch.randn(1, 1, 4, 8, 16)
    path = tmp_path / f"head{head}.onnx"
    torch.onnx.export(pruned, (x,), str(path), dynamo=True, opset_version=18)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = pruned(x).numpy()
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4, rtol=1e-4)
