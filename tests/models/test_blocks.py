from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from featsup.models import ConvBlock, ConvBNReLU, UpConv, bilinear_kernel, fold_batchnorm


def test_conv_block_shapes_and_layers() -> None:
    block = ConvBlock(5, 7)
    assert block(torch.randn(2, 5, 9, 11)).shape == (2, 7, 9, 11)
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (5, 7, (3, 3)),
        (7, 7, (3, 3)),
    ]
    assert all(c.bias is None for c in convs)  # batch norm follows


@pytest.mark.parametrize(("cin", "cout"), [(8, 4), (4, 4), (3, 6)])
def test_upconv_is_bilinear_away_from_border(cin: int, cout: int) -> None:
    up = UpConv(cin, cout)
    assert (up.kernel_size, up.stride, up.padding) == ((4, 4), (2, 2), (1, 1))
    x = torch.randn(2, cin, 10, 12)
    y = up(x)
    kept = min(cin, cout)
    ref = F.interpolate(x[:, :kept], scale_factor=2, mode="bilinear", align_corners=False)
    assert y.shape == (2, cout, 20, 24)
    torch.testing.assert_close(y[:, :kept, 1:-1, 1:-1], ref[..., 1:-1, 1:-1])
    # the border differs (zero padding instead of clamping), which pins the test down
    assert not torch.allclose(y[:, :kept, 0], ref[:, :, 0])
    if cout > kept:
        assert torch.count_nonzero(y[:, kept:]) == 0


def test_bilinear_kernel_sums_to_four() -> None:
    # stride 2 spreads each input pixel over 4 output pixels: the kernel sums to 4
    assert bilinear_kernel(4).sum().item() == pytest.approx(4.0)


def test_fold_batchnorm_keeps_outputs() -> None:
    unit = ConvBNReLU(3, 6)
    with torch.no_grad():
        unit.bn.running_mean.uniform_(-1, 1)
        unit.bn.running_var.uniform_(0.5, 2)
        unit.bn.weight.uniform_(0.5, 2)
        unit.bn.bias.uniform_(-1, 1)
    unit.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = unit(x)
    fold_batchnorm(unit)
    assert isinstance(unit.bn, torch.nn.Identity)
    torch.testing.assert_close(unit(x), expected, atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_refuses_training_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(ConvBNReLU(3, 6).train())


def test_fuse_for_inference_matches_eval_and_replaces_units() -> None:
    from featsup.models import FusedConvReLU, fuse_for_inference

    block = ConvBlock(3, 8)
    block.train()
    block(torch.randn(4, 3, 8, 8))
    block.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = block(x)
    fuse_for_inference(block)
    assert all(isinstance(m, FusedConvReLU) for m in block.children())
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(block(x_cl), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [(2, 2, 2), (1, 2, 2)])
def test_upconv3d_is_trilinear_away_from_border(scale: tuple[int, int, int]) -> None:
    from featsup.models import UpConv3d

    up = UpConv3d(4, 3, scale=scale)
    x = torch.randn(2, 4, 5, 6, 7)
    y = up(x)
    assert y.shape == (2, 3, 5 * scale[0], 12, 14)
    ref = F.interpolate(x[:, :3], scale_factor=scale, mode="trilinear", align_corners=False)
    inner = (slice(None), slice(None), *(slice(1, -1) if f == 2 else slice(None) for f in scale))
    torch.testing.assert_close(y[inner], ref[inner])
    assert not torch.allclose(y[..., 0], ref[..., 0])  # the zero-padded border differs
    with pytest.raises(ValueError, match="each 1 or 2"):
        UpConv3d(4, 3, scale=(2, 3, 2))


def test_fuse_for_inference_in_3d_matches_eval() -> None:
    from featsup.models import FusedConvReLU, fuse_for_inference

    block = ConvBlock(3, 4, spatial_dims=3)
    block.train()
    block(torch.randn(2, 3, 4, 6, 6))
    block.eval()
    x = torch.randn(1, 3, 4, 6, 6)
    expected = block(x)
    fuse_for_inference(block)
    assert all(isinstance(m, FusedConvReLU) for m in block.children())
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(block(x_cl), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="spatial_dims"):
        ConvBlock(3, 4, spatial_dims=1)
