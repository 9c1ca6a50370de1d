"""Cascades whose output is known: UNet++ weights set by hand to threshold the image.

``threshold_unetpp`` (2D or 3D) passes the (preprocessed) input unchanged through X(0,0) and
every top node X(0,j) (one channel, centre taps 1, batch norm at its identity statistics,
ReLU of a non-negative image) and makes each head score ``slope * (image - threshold)``
for class 1 (or its negative). Liver = bright soft tissue, tumour = dark inside the
liver: every label appears on a phantom, at known places, with no training. Imported as
``_cascades`` (tests/ is on sys.path in pytest's default prepend import mode).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from featsup.inference import Cascade
from featsup.models import UNetPlusPlus

WIDTHS = (4, 8, 16)  # two heads: X0,1 and X0,2


def _pass_channel_zero(block: torch.nn.Module) -> None:
    """ConvBlock -> identity on channel 0 (input channel 0 to output channel 0)."""
    for unit in block:
        conv = unit[0]
        conv.weight.zero_()
        conv.weight[(0, 0) + (1,) * (conv.weight.ndim - 2)] = 1.0  # the 3x3(x3) centre


@torch.no_grad()
def threshold_unetpp(
    threshold: float | Sequence[float],
    *,
    bright: bool = True,
    slope: float = 40.0,
    spatial_dims: Literal[2, 3] = 2,
) -> UNetPlusPlus:
    """A UNet++ whose head j scores class 1 where the image is above ``threshold[j - 1]``."""
    net = UNetPlusPlus(1, 2, widths=WIDTHS, spatial_dims=spatial_dims)
    cuts = [threshold] * net.depth if isinstance(threshold, (int, float)) else list(threshold)
    _pass_channel_zero(net.encoder["x0_0"])
    for j in range(1, net.depth + 1):
        _pass_channel_zero(net.decoder[f"x0_{j}"].conv)
        head = net.heads[f"x0_{j}"]
        head.weight.zero_()
        head.bias.zero_()
        sign = 1.0 if bright else -1.0
        head.weight[1, 0] = sign * slope
        head.bias[1] = -sign * slope * cuts[j - 1]
    return net.eval()


def threshold_cascade(
    liver: float | Sequence[float] = 0.35, tumour: float | Sequence[float] = 0.45, **options: object
) -> Cascade:
    """Liver: preprocessed image > ``liver``; tumour: < ``tumour`` inside the liver ROI."""
    settings = {"liver_size": 32, "tumour_size": 32, "device": "cpu", "batch_size": 8}
    liver_net = threshold_unetpp(liver)
    tumour_net = threshold_unetpp(tumour, bright=False)
    return Cascade(liver_net, tumour_net, **{**settings, **options})  # type: ignore[arg-type]


def finished_phantom_run(folder: Path, shape: Sequence[int], seed: int = 70_000) -> Cascade:
    """A tiny finished example 'run' in ``folder``: a threshold cascade saved as
    ``cascade.pt`` and a ``metrics.json`` of 3 phantom cases from ``seed`` at ``shape``, as
    the held-out benchmarks (``validation_size.py``, ``tumour_gap.py``,
    ``tumour_errors.py --split fresh``) read them. Returns the cascade."""
    folder.mkdir(parents=True, exist_ok=True)
    cascade = threshold_cascade(liver=(0.9, 0.35))
    cascade.save(folder / "cascade.pt")
    metrics = {"settings": {"cases": 3, "extra_train_cases": 0, "phantom_shape": list(shape)},
               "phantom_seed": seed, "split": {"train": ["0"], "val": ["1", "2"]}}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return cascade


def spot_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(volume, labels), (8, 64, 64): a box liver (115 HU) with two faint discs (95 HU:
    liver to :func:`threshold_cascade`'s tumour model, dark spots at a 10 HU threshold) and
    a darker one (80 HU: its tumour), all three lesions, placed by ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    volume = np.full((8, 64, 64), -1000.0)
    volume[:, 2:62, 2:62], volume[:, 60:62, 2:8] = -100.0, 600.0  # fat, a bone
    volume[:, 8:56, 8:56] = 115.0
    labels = np.zeros(volume.shape, np.uint8)
    labels[:, 8:56, 8:56] = 1
    for hu in (95.0, 95.0, 80.0):
        y, x = rng.integers(20, 44, 2)
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= 16
        volume[3:6][:, disc], labels[3:6][:, disc] = hu, 2
    volume += rng.normal(0, 3, volume.shape)
    return volume.astype(np.int16), labels
