"""The nested UNet++ of the paper, with deep supervision, the encoding variant and pruning.

Node X(i, j) sits at depth ``i`` (0 = full resolution, ``i`` halvings) and column ``j``.
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
returns a depth-``k`` network that computes only those.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featsup.models._fused_node import fuse_decoder_node
from featsup.models.blocks import ConvBlock, UpConv, fuse_for_inference

__all__ = ["FeatureInfo", "UNetPlusPlus"]


@dataclass(frozen=True)
class FeatureInfo:
    """Metadata of one encoder level that a feature supervisor can tap.

    Attributes:
        name: node name as in the paper, for example ``"x4_0"``.
        module: dotted module path inside the model, for forward hooks.
        channels: channels of the feature map.
        reduction: spatial down-sampling factor relative to the (padded) input.
    """

    name: str
    module: str
    channels: int
    reduction: int


class _NestedNode(nn.Module):
    """Decoder node X(i, j): up-sample X(i+1, j-1), concatenate the row, ConvBlock."""

    def __init__(self, up: UpConv, conv: ConvBlock) -> None:
        super().__init__()
        self.up = up
        self.conv = conv

    def forward(self, below: torch.Tensor, row: list[torch.Tensor]) -> torch.Tensor:
        up = self.up(below)
        return self.conv(torch.cat([*row, up], dim=1) if row else up)


class UNetPlusPlus(nn.Module):
    """Nested UNet++ (paper Table 1) with deep supervision and real pruning.

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
        pad_multiple: inputs whose height or width is not a multiple of this (default
            ``2**d``, the least that works) are padded at the bottom and right by edge
            replication and the logits are cropped back to the input size; encoder
            features are those of the padded image. A pruned model keeps its parent's
            value so that its output equals the parent's head on any input size.

    Example:
        >>> model = UNetPlusPlus(1, 2, widths=(4, 8, 16))
        >>> [tuple(y.shape) for y in model(torch.zeros(1, 1, 30, 30))]
        [(1, 2, 30, 30), (1, 2, 30, 30)]
        >>> model.pruned(head=1)(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 2, 32, 32])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        deep_supervision: bool = True,
        skip_connections: bool = True,
        pad_multiple: int | None = None,
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
        self.pad_multiple = 2**self.depth if pad_multiple is None else int(pad_multiple)
        if self.pad_multiple % 2**self.depth:
            raise ValueError(
                f"pad_multiple: expected a multiple of 2**depth = {2**self.depth}, "
                f"got {pad_multiple}"
            )
        self.channels_last: bool = False

        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleDict(
            {
                f"x{i}_0": ConvBlock(in_channels if i == 0 else widths[i - 1], widths[i])
                for i in range(self.depth + 1)
            }
        )
        self.decoder = nn.ModuleDict()
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                self.decoder[f"x{i}_{j}"] = self._make_node(i, j)
        self.heads = nn.ModuleDict(
            {f"x0_{j}": nn.Conv2d(widths[0], num_classes, 1) for j in range(1, self.depth + 1)}
        )

    def _make_node(self, i: int, j: int) -> _NestedNode:
        below = self.widths[i + 1]
        if self.skip_connections:
            return _NestedNode(
                UpConv(below, self.widths[i]), ConvBlock((j + 1) * self.widths[i], self.widths[i])
            )
        return _NestedNode(UpConv(below, below), ConvBlock(below, self.widths[i]))

    # ------------------------------------------------------------------ introspection
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments, so that a checkpoint can rebuild the model."""
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "widths": list(self.widths),
            "deep_supervision": self.deep_supervision,
            "skip_connections": self.skip_connections,
            "pad_multiple": self.pad_multiple,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UNetPlusPlus:
        """Build a model from :attr:`config`."""
        cfg = dict(config)
        return cls(cfg.pop("in_channels"), cfg.pop("num_classes"), **cfg)

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """The encoder levels X(1,0)..X(d,0) (bottleneck last) a supervisor can tap."""
        return [
            FeatureInfo(f"x{i}_0", f"encoder.x{i}_0", self.widths[i], 2**i)
            for i in range(1, self.depth + 1)
        ]

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of :meth:`encoder_features`' maps, X(1,0)..X(d,0)."""
        return self.widths[1:]

    # ------------------------------------------------------------------ forward passes
    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4:
            raise ValueError(
                f"image: expected a 4D tensor (B, C, H, W), got shape {tuple(image.shape)}; "
                "add a batch dimension with image[None]"
            )
        if image.shape[1] != self.in_channels:
            raise ValueError(
                f"image: expected {self.in_channels} channels (B, {self.in_channels}, H, W), "
                f"got shape {tuple(image.shape)}"
            )
        multiple = self.pad_multiple
        pad_h, pad_w = -image.shape[2] % multiple, -image.shape[3] % multiple
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image

    def _encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        column = []
        h = image
        for i, block in enumerate(self.encoder.values()):
            h = block(h if i == 0 else self.pool(h))
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

    def _heads(self, top: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        h, w = size
        outputs = []
        for j, head in enumerate(self.heads.values()):
            if self.deep_supervision or j == self.depth - 1:
                outputs.append(head(top[j])[..., :h, :w].contiguous())
        return outputs

    def forward_with_features(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor | list[torch.Tensor], list[torch.Tensor]]:
        """One pass returning the head logits and the encoder features.

        Args:
            image: (B, in_channels, H, W) input.

        Returns:
            ``(output, features)``: ``output`` as :meth:`forward` returns it and
            ``features`` the maps X(1,0)..X(d,0), X(i,0) of shape
            (B, widths[i], ceil(H / 2**d) * 2**(d-i), ...) (padded input size / 2**i).
        """
        column = self._encode(self._prepare(image))
        size = (image.shape[2], image.shape[3])
        outputs = self._heads(self._decode(column), size)
        return (outputs if self.deep_supervision else outputs[0]), column[1:]

    def forward(self, image: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Compute the logits.

        Args:
            image: (B, in_channels, H, W) input.

        Returns:
            With deep supervision the list ``[X01, ..., X0d]`` of (B, num_classes, H, W)
            logits, else the (B, num_classes, H, W) logits of X0d.

        Raises:
            ValueError: if ``image`` is not 4D or has the wrong number of channels.
        """
        return self.forward_with_features(image)[0]

    def encoder_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Run the encoder only and return X(1,0)..X(d,0) (bottleneck last).

        Args:
            image: (B, in_channels, H, W) input.

        Returns:
            d maps, X(i,0) of shape (B, widths[i], H' / 2**i, W' / 2**i) with H', W' the
            padded input size.
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
        config = {**self.config, "widths": self.widths[: head + 1], "deep_supervision": False}
        small = UNetPlusPlus.from_config(config).to(next(self.parameters()).device)
        own = self.state_dict()
        small.load_state_dict({k: own[k].clone() for k in small.state_dict()})
        small.train(self.training)
        return small.optimize_for_inference() if optimize else small

    def optimize_for_inference(self) -> UNetPlusPlus:
        """Return a copy for fast eval-mode inference, with outputs equal to eval mode.

        Batch norm is folded into the convolutions, each convolution and its ReLU run as
        one kernel on CPU (:class:`~featsup.models.blocks.FusedConvReLU`), each decoder
        node's up-sampling and Convolution_SC become one coarse-grid convolution with no
        concatenation on CPU (``featsup.models._fused_node``), and tensors
        use the channels-last layout, which oneDNN (CPU) and cuDNN (GPU) run faster for
        these 3x3 convolutions. Fewer passes over memory matter most for the shallow
        heads, whose full-resolution maps make them memory-bound. Parameters are frozen.

        Returns:
            A new model in eval mode; train it no further.
        """
        model = copy.deepcopy(self).eval()
        fuse_for_inference(model)
        if self.skip_connections:  # decoder nodes without the up-sampled map and the concat
            for name, node in model.decoder.items():
                model.decoder[name] = fuse_decoder_node(node)
        model.requires_grad_(False)
        model.channels_last = True
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model
