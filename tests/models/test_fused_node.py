from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featsup.models import ConvBlock, UpConv, fuse_for_inference
from featsup.models._fused_node import FusedNestedNode, composite_weight, fuse_decoder_node


class Node(nn.Module):
    """A decoder node as UNet++ builds it: up-sample, concatenate the row, ConvBlock."""

    def __init__(self, below: int, width: int, row: int) -> None:
        super().__init__()
        self.up = UpConv(below, width)
        self.conv = ConvBlock((row + 1) * width, width)

    def forward(self, below: torch.Tensor, row: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(torch.cat([*row, self.up(below)], dim=1))


def random_node(below: int, width: int, row: int) -> Node:
    node = Node(below, width, row)
    with torch.no_grad():
        for p in node.parameters():
            p.normal_(0, 0.2)
    node.train()
    node(torch.randn(2, below, 6, 6), [torch.randn(2, width, 12, 12)] * row)  # BN statistics
    return fuse_for_inference(node.eval())


def test_composite_weight_is_conv_after_transposed_conv_inside_the_frame() -> None:
    up_w, conv_w = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(4, 3, 3, 3).double()
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    reference = F.conv2d(F.conv_transpose2d(x, up_w, stride=2, padding=1), conv_w, padding=1)
    phases = F.conv2d(x, composite_weight(up_w, conv_w), padding=1)  # (2, 4 * 4, 7, 9)
    fine = phases.reshape(2, 2, 2, 4, 7, 9).permute(0, 3, 4, 1, 5, 2).reshape(2, 4, 14, 18)
    torch.testing.assert_close(fine[..., 1:-1, 1:-1], reference[..., 1:-1, 1:-1])
    assert not torch.allclose(fine[..., 0, :], reference[..., 0, :])  # the frame differs


@pytest.mark.parametrize(
    ("row", "size"), [(1, (8, 8)), (3, (5, 7)), (2, (2, 3)), (1, (1, 4))]
)  # fmt: skip
def test_fused_node_equals_the_node(row: int, size: tuple[int, int]) -> None:
    node = random_node(16, 8, row)
    fused = fuse_decoder_node(node).to(memory_format=torch.channels_last)
    h, w = size
    cl = torch.channels_last
    below = torch.randn(3, 16, h, w).contiguous(memory_format=cl)
    skips = [torch.randn(3, 8, 2 * h, 2 * w).contiguous(memory_format=cl) for _ in range(row)]
    assert fused._fast(below, skips) == (min(size) >= 2)  # 1-pixel maps take the node's path
    with torch.inference_mode():
        expected = node(below, skips)
        torch.testing.assert_close(fused(below, skips), expected, atol=1e-5, rtol=1e-5)
        # other dtypes take the node's own path
        double = fused.double()(below.double(), [s.double() for s in skips])
    torch.testing.assert_close(double.float(), expected, atol=1e-5, rtol=1e-5)


def test_fuse_decoder_node_needs_fused_units() -> None:
    node = Node(16, 8, 1).eval()
    with pytest.raises(TypeError, match="fuse_for_inference"):
        fuse_decoder_node(node)
    assert isinstance(fuse_decoder_node(fuse_for_inference(node)), FusedNestedNode)
