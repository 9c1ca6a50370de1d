"""Inference form of a UNet++ decoder node without the up-sampled map and the concatenation.

A decoder node X(i, j) computes ``relu(conv1(cat[row, up(below)]))``: a transposed
convolution to the fine grid, a concatenation, and a 3x3 convolution (batch norm folded).
All three are linear before the ReLU, so ``conv1`` splits into ``conv_row(row) +
conv_up(up(below))``, and ``conv_up . up`` is itself one 3x3 convolution on the *coarse*
grid with four output phases (one per position in each 2x2 block of the fine grid):

    conv_up(up(below))[o, 2m + r, 2n + s] = composite(below)[(r, s, o), m, n]

That convolution has the same multiply-adds as the two it replaces, but runs on the
coarse grid with many channels, where oneDNN is fastest, and neither the up-sampled map
nor the concatenation is ever written. The phases are interleaved by one copy (a pixel
shuffle), and the one-pixel frame of the fine grid, where ``conv_up``'s zero padding
differs from the composite's view of the border, is recomputed exactly from thin
strips. The row's convolution then adds it and applies the ReLU in one oneDNN kernel.

Used by :meth:`featsup.models.UNetPlusPlus.optimize_for_inference` on CPU in float32;
everywhere else (CUDA, other dtypes, tracing, export) the node runs as it was.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featsup.models.blocks import FusedConvReLU

# oneDNN convolution with a post-op and with a binary (add) post-op, as torch.compile emits.
_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
_ONE = [1, 1]


def _pointwise() -> Any:
    if _POINTWISE is None:  # _fast() checked it; this keeps mypy and readers sure
        raise RuntimeError("torch.ops.mkldnn._convolution_pointwise is not available")
    return _POINTWISE


def composite_weight(up_weight: torch.Tensor, conv_weight: torch.Tensor) -> torch.Tensor:
    """Weight of ``conv3x3(conv_transpose_4x4_s2(x))`` as a coarse-grid 3x3 convolution.

    Args:
        up_weight: (C_in, C_up, 4, 4) weight of ConvTranspose2d(kernel 4, stride 2, pad 1).
        conv_weight: (C_out, C_up, 3, 3) weight of the following 3x3 convolution (pad 1).

    Returns:
        (4 * C_out, C_in, 3, 3): output channel ``(2 * r + s) * C_out + o`` holds fine-grid
        pixel ``(2m + r, 2n + s)`` of output ``o`` at coarse position ``(m, n)``.
    """
    # fine pixel 2m + r + d (d: the conv tap) takes coarse pixel m + t through up tap
    # k = r + d + 1 - 2t; taps[r, t, d, k] marks the valid combinations along one axis
    taps = torch.zeros(2, 3, 3, 4, dtype=torch.float64, device=conv_weight.device)
    for r in range(2):
        for t in range(3):
            for d in range(3):
                k = r + (d - 1) + 1 - 2 * (t - 1)  # indices 0..2 hold offsets -1..1
                if 0 <= k <= 3:
                    taps[r, t, d, k] = 1.0
    out = torch.einsum(
        "rtdy,svex,ocde,icyx->rsoitv", taps, taps, conv_weight.double(), up_weight.double()
    )
    c_out = conv_weight.shape[0]
    return out.reshape(4 * c_out, up_weight.shape[0], 3, 3).to(conv_weight.dtype)


class FusedNestedNode(nn.Module):
    """Inference-only decoder node X(i, j) (segmentation UNet++, batch norm folded).

    Args:
        up: the node's transposed convolution (C_below -> C_up).
        conv1: the node's Convolution_SC, a :class:`FusedConvReLU` over ``cat[row, up]``.
        conv2: the node's second unit, a :class:`FusedConvReLU`.
    """

    row_weight: torch.Tensor
    up_weight: torch.Tensor
    composite_weight: torch.Tensor
    composite_bias: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, up: nn.ConvTranspose2d, conv1: FusedConvReLU, conv2: nn.Module) -> None:
        super().__init__()
        self.up, self.conv1, self.conv2 = up, conv1, conv2
        weight, bias = conv1.conv.weight, conv1.conv.bias
        c_up = up.out_channels
        up_bias = up.bias if up.bias is not None else weight.new_zeros(c_up)
        conv_up = weight[:, -c_up:].detach()
        cl = torch.channels_last
        self.register_buffer("row_weight", weight[:, :-c_up].detach().contiguous(memory_format=cl))
        self.register_buffer("up_weight", conv_up.contiguous())
        self.register_buffer(
            "composite_weight",
            composite_weight(up.weight.detach(), conv_up).contiguous(memory_format=cl),
        )
        self.register_buffer("composite_bias", (conv_up.sum((2, 3)) @ up_bias.detach()).repeat(4))
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)

    def _fast(self, below: torch.Tensor, row: list[torch.Tensor]) -> bool:
        return (
            _POINTWISE is not None
            and bool(row)
            and below.device.type == "cpu"
            and below.dtype == torch.float32
            and below.shape[2] >= 2
            and below.shape[3] >= 2
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
        )

    def forward(self, below: torch.Tensor, row: list[torch.Tensor]) -> torch.Tensor:
        """below: (B, C_below, h, w); row: maps (B, C_k, 2h, 2w) -> (B, C_out, 2h, 2w)."""
        if not self._fast(below, row):
            return self.conv2(self.conv1(torch.cat([*row, self.up(below)], dim=1)))
        fine = self._up_part(below)
        skips = row[0] if len(row) == 1 else torch.cat(row, dim=1)
        mixed = _pointwise().binary(
            skips, fine, self.row_weight, self.bias, _ONE, _ONE, _ONE, 1, "add", 1.0, "relu", [], ""
        )
        return self.conv2(mixed)

    def _up_part(self, below: torch.Tensor) -> torch.Tensor:
        """conv_up(up(below)) on the fine grid, (B, C_out, 2h, 2w) channels-last."""
        b, _, h, w = below.shape
        c = self.up_weight.shape[0]
        phases = _pointwise()(
            below, self.composite_weight, self.composite_bias, _ONE, _ONE, _ONE, 1, "none", [], ""
        )  # (B, 4C, h, w), channels (r, s, o)
        nhwc = phases.permute(0, 2, 3, 1).reshape(b, h, w, 2, 2, c)
        fine = nhwc.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
        # the frame: conv_up pads the up-sampled map with zeros, the composite does not
        up, k = self.up, self.up_weight
        fine[:, :, 0] = F.conv2d(up(below[:, :, :2])[:, :, :2], k, padding=1)[:, :, 0]
        fine[:, :, -1] = F.conv2d(up(below[:, :, -2:])[:, :, 2:], k, padding=1)[:, :, 1]
        fine[..., 0] = F.conv2d(up(below[..., :2])[..., :2], k, padding=1)[..., 0]
        fine[..., -1] = F.conv2d(up(below[..., -2:])[..., 2:], k, padding=1)[..., 1]
        return fine


def fuse_decoder_node(node: nn.Module) -> FusedNestedNode:
    """:class:`FusedNestedNode` of a UNet++ decoder node whose units are already fused.

    Raises:
        TypeError: if the node has no transposed conv ``up`` and fused ``conv.conv1``.
    """
    up, conv1 = node.get_submodule("up"), node.get_submodule("conv.conv1")
    if not isinstance(up, nn.ConvTranspose2d) or not isinstance(conv1, FusedConvReLU):
        raise TypeError(
            "node: expected a decoder node with a ConvTranspose2d 'up' and a FusedConvReLU "
            f"'conv.conv1' (call fuse_for_inference first), got {type(up).__name__} and "
            f"{type(conv1).__name__}"
        )
    return FusedNestedNode(up, conv1, node.get_submodule("conv.conv2"))
