"""Shared fixtures of the inference tests."""

from __future__ import annotations

import pytest
import torch

from featsup.models import UNetPlusPlus


@pytest.fixture
def model() -> UNetPlusPlus:
    """A tiny UNet++ in eval mode whose BatchNorm statistics are not the defaults."""
    net = UNetPlusPlus(1, 2, widths=(4, 8, 16))
    net.train()
    net(torch.randn(4, 1, 32, 32))
    return net.eval()
