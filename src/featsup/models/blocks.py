"""Building blocks of the paper's UNet++ (Table 1), in 2D and 3D.

- :class:`ConvBNReLU`: one Conv3x3-BN-ReLU unit (the paper's Convolution_1, Convolution_2
  and Convolution_SC are all of this kind); Conv3x3x3-BN-ReLU with ``spatial_dims=3``.
- :class:`ConvBlock`: two units, ``in -> out -> out``; a node X(i, j) of the network.
- :class:`UpConv`: ConvTranspose2d(kernel 4, stride 2, padding 1) whose weights start as
  bilinear 2x interpolation of each channel it keeps.
- :class:`UpConv3d`: its 3D sibling, trilinear, with a factor of 2 or 1 per axis (1 along
  an axis the encoder did not pool).
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
    "UpConv3d",
    "bilinear_kernel",
    "fold_batchnorm",
    "fuse_for_inference",
]

# oneDNN's convolution with a fused ReLU post-op (what torch.compile's CPU backend emits).
_ONEDNN_CONV_RELU = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


def check_spatial_dims(spatial_dims: object) -> int:
    """Return ``spatial_dims`` if it is 2 or 3.

    Raises:
        ValueError: for any other value.
    """
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims: expected 2 (images) or 3 (volumes), got {spatial_dims!r}")
    return int(spatial_dims)  # type: ignore[call-overload]


class ConvBNReLU(nn.Sequential):
    """Conv3x3 (no bias) -> BatchNorm -> ReLU, spatial size preserved.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        spatial_dims: 2 (Conv2d, BatchNorm2d) or 3 (Conv3d 3x3x3, BatchNorm3d).

    Example:
        >>> ConvBNReLU(3, 8)(torch.zeros(1, 3, 16, 16)).shape
        torch.Size([1, 8, 16, 16])
        >>> ConvBNReLU(3, 8, spatial_dims=3)(torch.zeros(1, 3, 4, 16, 16)).shape
        torch.Size([1, 8, 4, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, *, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv3d if check_spatial_dims(spatial_dims) == 3 else nn.Conv2d
        norm = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
        self.conv = conv(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn: nn.Module = norm(out_channels)
        self.act = nn.ReLU(inplace=True)


class ConvBlock(nn.Sequential):
    """Two :class:`ConvBNReLU` units, ``in_channels -> out_channels -> out_channels``.

    In the encoder the first unit is the paper's Convolution_1 and the second its
    Convolution_2; in the decoder the first is Convolution_SC (fusing the up-sampled map
    with the row's skip inputs).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        spatial_dims: 2 or 3, as for :class:`ConvBNReLU`.

    Example:
        >>> ConvBlock(96, 32)(torch.zeros(2, 96, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, *, spatial_dims: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, out_channels, spatial_dims=spatial_dims)
        self.conv2 = ConvBNReLU(out_channels, out_channels, spatial_dims=spatial_dims)


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


def _linear_1d(scale: int) -> torch.Tensor:
    """Per-axis factor of the up-sampling kernel: linear for 2x, identity for 1x."""
    return bilinear_kernel(4)[0] * 4 if scale == 2 else torch.ones(1)


class UpConv3d(nn.ConvTranspose3d):
    """Up-sampling of a volume by ConvTranspose3d, initialised as trilinear interpolation.

    Along an axis of factor 2 the kernel is 4, stride 2, padding 1 (linear interpolation
    away from the border, as :class:`UpConv`); along an axis of factor 1 (one the encoder
    did not pool) it is 1, stride 1, which keeps the size. Output channel ``c`` starts as
    the interpolation of input channel ``c`` (for ``c < min(in, out)``); all other weights
    and the bias start at zero.

    Args:
        in_channels: input channels (the deeper node's width).
        out_channels: output channels.
        scale: up-sampling factor along (D, H, W), each 1 or 2.

    Raises:
        ValueError: if ``scale`` is not three factors of 1 or 2.

    Example:
        >>> up = UpConv3d(4, 2, scale=(1, 2, 2))
        >>> up(torch.ones(1, 4, 3, 8, 8)).shape
        torch.Size([1, 2, 3, 16, 16])
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, scale: tuple[int, ...] = (2, 2, 2)
    ) -> None:
        scale = tuple(scale)
        if len(scale) != 3 or any(f not in (1, 2) for f in scale):
            raise ValueError(f"scale: expected 3 factors (D, H, W), each 1 or 2, got {scale!r}")
        d, h, w = scale
        kernel = (d * 3 - 2, h * 3 - 2, w * 3 - 2)  # 4 where the factor is 2, else 1
        padding = (d - 1, h - 1, w - 1)
        super().__init__(in_channels, out_channels, kernel, stride=(d, h, w), padding=padding)
        self.scale = scale
        self.reset_trilinear()

    @torch.no_grad()
    def reset_trilinear(self) -> None:
        """Reset the weights to channel-wise trilinear interpolation and the bias to zero."""
        d, h, w = (_linear_1d(f) for f in self.scale)
        kernel = (d[:, None, None] * h[None, :, None] * w[None, None, :]).to(self.weight)
        self.weight.zero_()
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
        if isinstance(unit, ConvBNReLU) and isinstance(unit.bn, (nn.BatchNorm2d, nn.BatchNorm3d)):
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

    def __init__(self, conv: nn.Conv2d | nn.Conv3d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, *spatial) -> (B, out, *spatial), 2D or 3D."""
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
