"""The nested UNet++ of the paper, 2D or 3D: deep supervision, encoding variant, pruning.

Node X(i, j) sits at depth ``i`` (0 = full resolution, ``i`` poolings) and column ``j``.
The encoder is the first column X(0,0)..X(d,0) (X(d,0) is the bottleneck); decoder node
X(i, j), j >= 1, fuses the up-sampled X(i+1, j-1) with the skip inputs X(i, 0..j-1) (all
of its row, the "dense" skip pathway) through Convolution_SC. Heads are 1x1 convolutions
on X(0,1)..X(0,d).

::

    depth 0   X00 ──────> X01 ──────> X02 ──────> X03 ──────> X04 ─> head 4
                 ╲        ↗   ╲       ↗   ╲       ↗   ╲       ↗
    depth 1       X10 ──> X11 ──────> X12 ──────> X13 ────────╯
                     ╲    ↗   ╲       ↗   ╲       ↗
    depth 2           X20 ──> X21 ──────> X22 ────╯
                         ╲    ↗   ╲       ↗
    depth 3               X30 ──> X31 ────╯
                             ╲    ↗
    depth 4                   X40   (bottleneck)

Head ``k`` needs exactly the nodes with ``i + j <= k``, so :meth:`UNetPlusPlus.pruned`
returns a depth-``k`` network that computes only those. One node graph serves images
(``spatial_dims=2``) and volumes (``spatial_dims=3``, Conv3x3x3 blocks, optionally
anisotropic pooling); only the blocks and the pooling factors differ.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from featsup.models import _geometry
from featsup.models._fused_node import fuse_decoder_node
from featsup.models.blocks import (
    ConvBlock,
    UpConv,
    UpConv3d,
    check_spatial_dims,
    fuse_for_inference,
)

__all__ = ["FeatureInfo", "UNetPlusPlus"]


@dataclass(frozen=True)
class FeatureInfo:
    """Metadata of one encoder level that a feature supervisor can tap.

    Attributes:
        name: node name as in the paper, for example ``"x4_0"``.
        module: dotted module path inside the model, for forward hooks.
        channels: channels of the feature map.
        reduction: spatial down-sampling factor relative to the (padded) input; the
            largest per-axis factor (the in-plane one) for anisotropic 3D pooling.
        reduction_per_axis: the factor along each spatial axis, e.g. ``(2, 4, 4)``.
    """

    name: str
    module: str
    channels: int
    reduction: int
    reduction_per_axis: tuple[int, ...] = ()


class _NestedNode(nn.Module):
    """Decoder node X(i, j): up-sample X(i+1, j-1), concatenate the row, ConvBlock."""

    def __init__(self, up: UpConv | UpConv3d, conv: ConvBlock) -> None:
        super().__init__()
        self.up = up
        self.conv = conv

    def forward(self, below: torch.Tensor, row: list[torch.Tensor]) -> torch.Tensor:
        up = self.up(below)
        return self.conv(torch.cat([*row, up], dim=1) if row else up)


class UNetPlusPlus(nn.Module):
    """Nested UNet++ (paper Table 1), 2D or 3D, with deep supervision and real pruning.

    Args:
        in_channels: channels of the input image (or classes of a one-hot label map for
            the encoding UNet++).
        num_classes: output channels (logits) of each head.
        widths: channels of depth 0..d; its length minus one is the depth ``d`` (>= 1).
        deep_supervision: if True, ``forward`` returns the logits of all heads
            ``[X01, ..., X0d]``; if False, only those of X0d. Heads exist on every column
            either way, so shallow heads of a model trained without deep supervision
            can still be evaluated (the paper's NS rows of Table 2).
        skip_connections: if False, the paper's *encoding UNet++*: no dense skip
            pathways, each decoder node sees only its up-sampled input, and the
            transposed convolutions keep the channel count.
        pad_multiple: inputs whose spatial size is not a multiple of this (default: the
            reduction of the deepest level, ``2**d`` in 2D, the least that works) are
            padded at the far end of each axis (bottom, right, last slices) by edge
            replication and the logits are cropped back to the input size; encoder
            features are those of the padded input. In 3D an int or one value per axis.
            A pruned model keeps its parent's value so that its output equals the
            parent's head on any input size.
        spatial_dims: 2 for images (B, C, H, W), 3 for volumes (B, C, D, H, W): the
            blocks become Conv3x3x3-BN-ReLU and the up-sampling trilinear-initialised
            :class:`~featsup.models.blocks.UpConv3d`.
        pooling: 3D only: the max-pool factor (1 or 2) along (D, H, W) at each of the
            ``d`` levels; None pools 2x2x2 everywhere. For thick slices keep D at 1 where
            the slices are much thicker than the pixels are wide:
            ``pooling=pooling_for_spacing(spacing, depth)`` chooses it from the voxel
            spacing (see :func:`~featsup.models.pooling_for_spacing`).

    Raises:
        ValueError: for too few or non-positive ``widths``, ``spatial_dims`` not 2 or 3,
            or a ``pooling`` or ``pad_multiple`` that does not fit the depth.

    Example:
        >>> model = UNetPlusPlus(1, 2, widths=(4, 8, 16))
        >>> [tuple(y.shape) for y in model(torch.zeros(1, 1, 30, 30))]
        [(1, 2, 30, 30), (1, 2, 30, 30)]
        >>> model.pruned(head=1)(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 2, 32, 32])
        >>> volume = UNetPlusPlus(1, 2, widths=(2, 4, 8), spatial_dims=3,
        ...                       pooling=[[1, 2, 2], [2, 2, 2]])
        >>> [tuple(y.shape) for y in volume(torch.zeros(1, 1, 5, 12, 12))]
        [(1, 2, 5, 12, 12), (1, 2, 5, 12, 12)]
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        deep_supervision: bool = True,
        skip_connections: bool = True,
        pad_multiple: int | Sequence[int] | None = None,
        spatial_dims: Literal[2, 3] = 2,
        pooling: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(
                f"widths: expected at least 2 positive channel counts (depth >= 1), got {widths}"
            )
        if in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"in_channels and num_classes: expected >= 1, got {in_channels} and {num_classes}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.widths = widths
        self.depth = len(widths) - 1
        self.deep_supervision = deep_supervision
        self.skip_connections = skip_connections
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.pooling = _geometry.check_pooling(pooling, self.depth, self.spatial_dims)
        self.pad_multiple = _geometry.check_pad_multiple(
            pad_multiple, self.pooling, self.spatial_dims
        )
        self.channels_last: bool = False

        pool = nn.MaxPool3d if self.spatial_dims == 3 else nn.MaxPool2d
        self.pools = nn.ModuleList([pool(f) for f in self.pooling])
        self.encoder = nn.ModuleDict(
            {
                f"x{i}_0": self._block(in_channels if i == 0 else widths[i - 1], widths[i])
                for i in range(self.depth + 1)
            }
        )
        self.decoder = nn.ModuleDict()
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                self.decoder[f"x{i}_{j}"] = self._make_node(i, j)
        head = nn.Conv3d if self.spatial_dims == 3 else nn.Conv2d
        self.heads = nn.ModuleDict(
            {f"x0_{j}": head(widths[0], num_classes, 1) for j in range(1, self.depth + 1)}
        )

    def _block(self, in_channels: int, out_channels: int) -> ConvBlock:
        return ConvBlock(in_channels, out_channels, spatial_dims=self.spatial_dims)

    def _up(self, i: int, in_channels: int, out_channels: int) -> UpConv | UpConv3d:
        if self.spatial_dims == 2:
            return UpConv(in_channels, out_channels)
        return UpConv3d(in_channels, out_channels, scale=self.pooling[i])

    def _make_node(self, i: int, j: int) -> _NestedNode:
        below, width = self.widths[i + 1], self.widths[i]
        if self.skip_connections:
            return _NestedNode(self._up(i, below, width), self._block((j + 1) * width, width))
        return _NestedNode(self._up(i, below, below), self._block(below, width))

    # ------------------------------------------------------------------ introspection
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments, so that a checkpoint can rebuild the model.

        ``pooling`` is None in 2D and the per-level factors in 3D; a 2D config written
        before 3D existed (without ``spatial_dims`` and ``pooling``) still loads.
        """
        three_d = self.spatial_dims == 3
        multiple = self.pad_multiple
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "widths": list(self.widths),
            "deep_supervision": self.deep_supervision,
            "skip_connections": self.skip_connections,
            "pad_multiple": list(multiple) if isinstance(multiple, tuple) else multiple,
            "spatial_dims": self.spatial_dims,
            "pooling": [list(f) for f in self.pooling] if three_d else None,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UNetPlusPlus:
        """Build a model from :attr:`config`."""
        cfg = dict(config)
        return cls(cfg.pop("in_channels"), cfg.pop("num_classes"), **cfg)

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """The encoder levels X(1,0)..X(d,0) (bottleneck last) a supervisor can tap."""
        infos = []
        for i in range(1, self.depth + 1):
            per_axis = _geometry.reduction(self.pooling, i)
            infos.append(
                FeatureInfo(f"x{i}_0", f"encoder.x{i}_0", self.widths[i], max(per_axis), per_axis)
            )
        return infos

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of :meth:`encoder_features`' maps, X(1,0)..X(d,0)."""
        return self.widths[1:]

    # ------------------------------------------------------------------ forward passes
    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        dims = self.spatial_dims
        axes = "D, H, W" if dims == 3 else "H, W"
        if image.ndim != dims + 2:
            fix = "add a batch dimension with image[None]" if image.ndim == dims + 1 else ""
            if fix and dims == 3:
                fix += " for one volume, or use a spatial_dims=2 model for a batch of slices"
            if not fix:
                other = image.ndim - 2
                fix = f"use a spatial_dims={other} model" if other in (2, 3) else "reshape it"
            raise ValueError(
                f"image: expected a {dims + 2}D tensor (B, C, {axes}) for spatial_dims={dims}, "
                f"got shape {tuple(image.shape)}; fix: {fix}"
            )
        if image.shape[1] != self.in_channels:
            raise ValueError(
                f"image: expected {self.in_channels} channels (B, {self.in_channels}, {axes}), "
                f"got shape {tuple(image.shape)}"
            )
        image = _geometry.pad_to_multiple(image, self._pad_multiples)
        if self.channels_last:
            layout = torch.channels_last_3d if self.spatial_dims == 3 else torch.channels_last
            image = image.contiguous(memory_format=layout)
        return image

    @property
    def _pad_multiples(self) -> tuple[int, ...]:
        multiple = self.pad_multiple
        return multiple if isinstance(multiple, tuple) else (multiple,) * self.spatial_dims

    def _encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        column = []
        h = image
        for i, block in enumerate(self.encoder.values()):
            h = block(h if i == 0 else self.pools[i - 1](h))
            column.append(h)
        return column

    def _decode(self, column: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run the nested decoder; return X(0,1)..X(0,d)."""
        rows = [[x] for x in column]
        for name, node in self.decoder.items():
            i, j = (int(n) for n in name[1:].split("_"))
            skips = rows[i] if self.skip_connections else []
            rows[i].append(node(rows[i + 1][j - 1], skips))
        return rows[0][1:]

    def _heads(self, top: list[torch.Tensor], size: tuple[int, ...]) -> list[torch.Tensor]:
        crop = (..., *(slice(0, n) for n in size))
        outputs = []
        for j, head in enumerate(self.heads.values()):
            if self.deep_supervision or j == self.depth - 1:
                outputs.append(head(top[j])[crop].contiguous())
        return outputs

    def forward_with_features(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor | list[torch.Tensor], list[torch.Tensor]]:
        """One pass returning the head logits and the encoder features.

        Args:
            image: (B, in_channels, H, W) or, in 3D, (B, in_channels, D, H, W) input.

        Returns:
            ``(output, features)``: ``output`` as :meth:`forward` returns it and
            ``features`` the maps X(1,0)..X(d,0), X(i,0) of shape (B, widths[i], *S_i),
            with S_i the padded input size divided by ``feature_info[i - 1]``'s
            ``reduction_per_axis`` (``2**i`` per axis in 2D).
        """
        column = self._encode(self._prepare(image))
        size = tuple(image.shape[2:])
        outputs = self._heads(self._decode(column), size)
        return (outputs if self.deep_supervision else outputs[0]), column[1:]

    def forward(self, image: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Compute the logits.

        Args:
            image: (B, in_channels, H, W) input, or (B, in_channels, D, H, W) in 3D.

        Returns:
            With deep supervision the list ``[X01, ..., X0d]`` of (B, num_classes, *S)
            logits (S the input's spatial size), else the logits of X0d.

        Raises:
            ValueError: if ``image`` is not 4D (5D in 3D) or has the wrong number of
                channels.
        """
        return self.forward_with_features(image)[0]

    def encoder_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Run the encoder only and return X(1,0)..X(d,0) (bottleneck last).

        Args:
            image: (B, in_channels, H, W) input, or (B, in_channels, D, H, W) in 3D.

        Returns:
            d maps, X(i,0) of shape (B, widths[i], H' / 2**i, W' / 2**i) with H', W' the
            padded input size (in 3D each axis divided by its ``reduction_per_axis``).
        """
        return self._encode(self._prepare(image))[1:]

    # ------------------------------------------------------------------ pruning / inference
    def pruned(self, head: int, *, optimize: bool = False) -> UNetPlusPlus:
        """Return a standalone network that computes only what head ``head`` needs.

        Head ``k`` depends on exactly the nodes X(i, j) with ``i + j <= k``, which form a
        depth-``k`` UNet++; the returned model is that network (weights copied) with deep
        supervision off, so it outputs the logits of X(0, k) alone.

        Args:
            head: 1..d, the head to keep (d gives the full network without the shallow
                outputs).
            optimize: if True, return :meth:`optimize_for_inference` of the pruned model.

        Returns:
            A new :class:`UNetPlusPlus` of depth ``head`` in the same train/eval mode.

        Raises:
            ValueError: if ``head`` is not in 1..d.
        """
        if not 1 <= head <= self.depth:
            raise ValueError(f"head: expected an integer in 1..{self.depth}, got {head!r}")
        config = {
            **self.config,
            "widths": self.widths[: head + 1],
            "deep_supervision": False,
            "pooling": self.config["pooling"] and self.config["pooling"][:head],
        }
        small = UNetPlusPlus.from_config(config).to(next(self.parameters()).device)
        own = self.state_dict()
        small.load_state_dict({k: own[k].clone() for k in small.state_dict()})
        small.train(self.training)
        return small.optimize_for_inference() if optimize else small

    def use_channels_last(self) -> UNetPlusPlus:
        """Keep weights and inputs channels-last (channels-last-3d for volumes); return self.

        The same function, computed faster by oneDNN (CPU) and cuDNN (GPU) for these 3x3
        convolutions: the parameters are converted in place and every input is made
        channels-last in :meth:`forward`, so activations follow.

        Example:
            >>> net = UNetPlusPlus(1, 2, widths=(4, 8)).use_channels_last()
            >>> kernels = [p for p in net.parameters() if p.ndim == 4]
            >>> net.channels_last, all(
            ...     k.is_contiguous(memory_format=torch.channels_last) for k in kernels)
            (True, True)
        """
        self.channels_last = True
        layout = torch.channels_last_3d if self.spatial_dims == 3 else torch.channels_last
        return self.to(memory_format=layout)  # type: ignore[call-overload,no-any-return]

    def optimize_for_inference(self) -> UNetPlusPlus:
        """Return a copy for fast eval-mode inference, with outputs equal to eval mode.

        Batch norm is folded into the convolutions, each convolution and its ReLU run as
        one kernel on CPU (:class:`~featsup.models.blocks.FusedConvReLU`), in 2D each
        decoder node's up-sampling and Convolution_SC become one coarse-grid convolution
        with no concatenation on CPU (``featsup.models._fused_node``), and tensors use the
        channels-last layout (channels-last-3d for volumes), which oneDNN (CPU) and cuDNN
        (GPU) run faster for these 3x3 convolutions. Fewer passes over memory matter most
        for the shallow heads, whose full-resolution maps make them memory-bound.
        Parameters are frozen.

        Returns:
            A new model in eval mode; train it no further.
        """
        model = copy.deepcopy(self).eval()
        fuse_for_inference(model)
        if self.skip_connections and self.spatial_dims == 2:  # no up-sampled map, no concat
            for name, node in model.decoder.items():
                model.decoder[name] = fuse_decoder_node(node)
        model.requires_grad_(False)
        return model.use_channels_last()
