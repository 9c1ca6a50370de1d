"""Building blocks of the paper's UNet++ (Table 1).

- :class:`ConvBNReLU`: one Conv3x3-BN-ReLU unit (the paper's Convolution_1, Convolution_2
  and Convolution_SC are all of this kind).
- :class:`ConvBlock`: two units, ``in -> out -> out``; a node X(i, j) of the network.
- :class:`UpConv`: ConvTranspose2d(kernel 4, stride 2, padding 1) whose weights start as
  bilinear 2x interpolation of each channel it keeps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "ConvBNReLU",
    "ConvBlock",
    "FusedConvReLU",
    "UpConv",
    "bilinear_kernel",
    "fold_batchnorm",
    "fuse_for_inference",
]

# oneDNN's convolution with a fused ReLU post-op (what torch.compile's CPU backend emits).
_ONEDNN_CONV_RELU = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


class ConvBNReLU(nn.Sequential):
    """Conv3x3 (no bias) -> BatchNorm -> ReLU, spatial size preserved.

    Args:
        in_channels: input channels.
        out_channels: output channels.

    Example:
        >>> ConvBNReLU(3, 8)(torch.zeros(1, 3, 16, 16)).shape
        torch.Size([1, 8, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)


class ConvBlock(nn.Sequential):
    """Two :class:`ConvBNReLU` units, ``in_channels -> out_channels -> out_channels``.

    In the encoder the first unit is the paper's Convolution_1 and the second its
    Convolution_2; in the decoder the first is Convolution_SC (fusing the up-sampled map
    with the row's skip inputs).

    Example:
        >>> ConvBlock(96, 32)(torch.zeros(2, 96, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, out_channels)
        self.conv2 = ConvBNReLU(out_channels, out_channels)


def bilinear_kernel(size: int = 4) -> torch.Tensor:
    """Return the ``(size, size)`` kernel that makes a stride-2 transposed conv bilinear.

    With ``kernel_size=4, stride=2, padding=1`` this kernel reproduces
    ``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)`` everywhere
    except on the one-pixel border, where the transposed conv sees zero padding.

    Example:
        >>> bilinear_kernel(4)[0]
        tensor([0.0625, 0.1875, 0.1875, 0.0625])
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    return (filt[:, None] * filt[None, :]).to(torch.float32)


class UpConv(nn.ConvTranspose2d):
    """2x up-sampling by ConvTranspose2d(4, stride 2, padding 1), initialised as bilinear.

    Output channel ``c`` starts as the bilinear up-sampling of input channel ``c`` (for
    ``c < min(in, out)``); all other weights start at zero and the bias at zero.

    Args:
        in_channels: input channels (the deeper node's width).
        out_channels: output channels (half of ``in_channels`` in the segmentation UNet++,
            equal to it in the encoding UNet++).

    Example:
        >>> up = UpConv(4, 2)
        >>> up(torch.ones(1, 4, 8, 8)).shape
        torch.Size([1, 2, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
        self.reset_bilinear()

    @torch.no_grad()
    def reset_bilinear(self) -> None:
        """Reset the weights to channel-wise bilinear interpolation and the bias to zero."""
        self.weight.zero_()
        kernel = bilinear_kernel(4).to(self.weight)
        for c in range(min(self.in_channels, self.out_channels)):
            self.weight[c, c] = kernel
        if self.bias is not None:
            self.bias.zero_()


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every :class:`ConvBNReLU`'s batch norm into its convolution, in place.

    The module must be in eval mode: the running statistics become part of the
    convolution's weight and bias and the batch norm is replaced by ``nn.Identity``.

    Returns:
        ``module`` itself.

    Raises:
        ValueError: if ``module`` is in training mode.
    """
    if module.training:
        raise ValueError("fold_batchnorm: expected a module in eval mode; call .eval() first")
    for unit in module.modules():
        if isinstance(unit, ConvBNReLU) and isinstance(unit.bn, nn.BatchNorm2d):
            unit.conv = fuse_conv_bn_eval(unit.conv, unit.bn)  # type: ignore[arg-type]
            unit.bn = nn.Identity()
    return module


class FusedConvReLU(nn.Module):
    """Inference-only convolution (batch norm folded in) followed by ReLU.

    On CPU in float32 the two run as one oneDNN kernel with a ReLU post-op, which saves
    a full read and write of the feature map; elsewhere (CUDA, other dtypes, export
    tracing) it is ``relu(conv(x))``. Both give the same numbers.

    Args:
        conv: the convolution, with its bias holding the folded batch norm.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> (B, out, H, W)."""
        c = self.conv
        if (
            _ONEDNN_CONV_RELU is not None
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
        ):
            return _ONEDNN_CONV_RELU(
                x, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups, "relu", [], ""
            )
        return F.relu(c(x), inplace=True)


def fuse_for_inference(module: nn.Module) -> nn.Module:
    """Fold batch norm and replace every :class:`ConvBNReLU` by :class:`FusedConvReLU`.

    Works in place on an eval-mode module and returns it.

    Raises:
        ValueError: if ``module`` is in training mode.
    """
    fold_batchnorm(module)
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, ConvBNReLU):
                setattr(parent, name, FusedConvReLU(child.conv))
    return module
