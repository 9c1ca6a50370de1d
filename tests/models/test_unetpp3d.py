"""The volumetric UNet++ (spatial_dims=3): shapes, gradients, pruning, pooling, errors."""

from __future__ import annotations

import pytest
import torch

from featsup.models import UNetPlusPlus, UpConv3d, pooling_for_spacing

WIDTHS = {2: (2, 4, 8), 3: (2, 4, 4, 8), 4: (2, 2, 4, 4, 8), 5: (2, 2, 4, 4, 8, 8)}
THICK = [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]  # 5 mm slices, 0.8 mm pixels


def small(depth: int = 3, **kwargs: object) -> UNetPlusPlus:
    return UNetPlusPlus(2, 3, widths=WIDTHS[depth], spatial_dims=3, **kwargs)  # type: ignore[arg-type]


def with_statistics(model: UNetPlusPlus, shape: tuple[int, ...]) -> UNetPlusPlus:
    model.train()
    with torch.no_grad():
        model(torch.randn(2, model.in_channels, *shape))  # batch-norm statistics off their init
    return model.eval()


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_every_head_has_input_size_on_odd_sizes(one_thread: None, depth: int) -> None:
    model = small(depth, pooling=THICK[:depth])
    size = (3, 9, 7)  # D is pooled depth - 2 times, H and W depth times
    outputs = model(torch.randn(2, 2, *size))
    assert isinstance(outputs, list) and len(outputs) == depth
    assert all(y.shape == (2, 3, *size) for y in outputs)
    reductions = [info.reduction_per_axis for info in model.feature_info]
    assert reductions[0] == (1, 2, 2) and reductions[-1] == (
        2 ** max(depth - 2, 0),
        *[2**depth] * 2,
    )
    feats = model.encoder_features(torch.randn(2, 2, *size))
    padded = [-(-n // m) * m for n, m in zip(size, model.pad_multiple, strict=True)]
    assert [tuple(f.shape[2:]) for f in feats] == [
        tuple(p // r for p, r in zip(padded, red, strict=True)) for red in reductions
    ]


def test_isotropic_default_pools_every_axis(one_thread: None) -> None:
    model = small(2)
    assert model.pooling == ((2, 2, 2), (2, 2, 2)) and model.pad_multiple == (4, 4, 4)
    assert [f.shape[2:] for f in model.encoder_features(torch.randn(1, 2, 5, 8, 6))] == [
        (4, 4, 4),
        (2, 2, 2),
    ]
    assert isinstance(model.heads["x0_1"], torch.nn.Conv3d)


@pytest.mark.parametrize("head", [1, 2, 3])
def test_gradients_reach_every_parameter_a_head_needs(one_thread: None, head: int) -> None:
    model = small(3, pooling=THICK[:3])
    model(torch.randn(2, 2, 4, 8, 8))[head - 1].square().mean().backward()
    for name, p in model.named_parameters():
        i, j = (int(n) for n in name.split(".")[1][1:].split("_"))
        needed = j == head if name.startswith("heads.") else i + j <= head
        has_grad = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert has_grad == needed, f"{name}: needed={needed} but grad={has_grad}"


@pytest.mark.parametrize("skip", [True, False])
def test_pruned_head_equals_full_model_head(one_thread: None, skip: bool) -> None:
    model = with_statistics(small(3, skip_connections=skip, pooling=THICK[:3]), (4, 8, 8))
    x = torch.randn(2, 2, 5, 11, 9)  # odd: padded to (8, 16, 16) by the full model
    with torch.no_grad():
        full = model(x)
        for k in (1, 2, 3):
            pruned = model.pruned(head=k)
            assert pruned.depth == k and pruned.pooling == model.pooling[:k]
            assert pruned.pad_multiple == model.pad_multiple
            torch.testing.assert_close(pruned(x), full[k - 1], atol=1e-5, rtol=1e-5)
            fast = model.pruned(head=k, optimize=True)
            assert next(fast.parameters()).is_contiguous(memory_format=torch.channels_last_3d)
            torch.testing.assert_close(fast(x), full[k - 1], atol=1e-4, rtol=1e-4)


def test_encoding_variant_sees_only_the_upsampled_map() -> None:
    model = small(3, skip_connections=False, pooling=THICK[:3])
    for name, node in model.decoder.items():
        i = int(name[1])
        assert isinstance(node.up, UpConv3d) and node.up.scale == model.pooling[i]
        assert node.up.out_channels == model.widths[i + 1]
        assert node.conv.conv1.conv.in_channels == model.widths[i + 1]


def test_config_round_trip_keeps_dims_and_pooling() -> None:
    model = small(3, pooling=THICK[:3], pad_multiple=(8, 16, 16))
    clone = UNetPlusPlus.from_config(model.config)
    clone.load_state_dict(model.state_dict())
    assert clone.config == model.config
    assert model.config["spatial_dims"] == 3 and model.config["pooling"] == THICK[:3]
    assert model.config["pad_multiple"] == [8, 16, 16]
    two_d = UNetPlusPlus(1, 2, widths=(4, 8)).config
    assert two_d["spatial_dims"] == 2 and two_d["pooling"] is None and two_d["pad_multiple"] == 2
    old = {k: v for k, v in two_d.items() if k not in ("spatial_dims", "pooling")}
    assert UNetPlusPlus.from_config(old).config == two_d  # configs written before 3D load


def test_pooling_for_spacing_rule() -> None:
    assert pooling_for_spacing((1.0, 1.0, 1.0), 2) == [[2, 2, 2], [2, 2, 2]]
    assert pooling_for_spacing((2.5, 0.7, 0.7), 2) == [[1, 2, 2], [2, 2, 2]]
    assert pooling_for_spacing((5.0, 0.8, 0.8), 4) == THICK[:4]
    assert pooling_for_spacing((0.7, 0.7, 3.0), 1) == [[2, 2, 1]]  # any axis may be thick
    with pytest.raises(ValueError, match="positive finite"):
        pooling_for_spacing((0.0, 1.0, 1.0), 2)
    with pytest.raises(ValueError, match="depth"):
        pooling_for_spacing((1.0, 1.0, 1.0), 0)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, 8, 8, 8), "add a batch dimension"),
        ((1, 2, 8, 8), "5D tensor .*spatial_dims=3"),
        ((1, 1, 8, 8, 8), "expected 2 channels"),
    ],
)
def test_bad_inputs_raise(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        small(2)(torch.randn(*shape))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"spatial_dims": 4}, ValueError, "spatial_dims: expected 2"),
        ({"pooling": [[1, 2, 2]]}, ValueError, "expected 2 levels.*pooling_for_spacing"),
        ({"pooling": [[1, 2, 2], [1, 3, 2]]}, ValueError, "each 1 or 2"),
        ({"pooling": [[1, 1, 1], [2, 2, 2]]}, ValueError, "at least one 2"),
        ({"pooling": [1, 2]}, TypeError, "per-level"),
        ({"pad_multiple": (2, 4, 4)}, ValueError, r"reduction \(4, 4, 4\)"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, error: type, match: str) -> None:
    args = {"widths": (2, 4, 8), "spatial_dims": 3, **kwargs}
    with pytest.raises(error, match=match):
        UNetPlusPlus(1, 2, **args)


def test_pooling_is_refused_in_2d() -> None:
    with pytest.raises(ValueError, match="pooling: expected None for spatial_dims=2"):
        UNetPlusPlus(1, 2, widths=(4, 8), pooling=[[2, 2]])


def test_encoder_levels_read_the_anisotropic_reductions(one_thread: None) -> None:
    from featsup.supervision.levels import encoder_levels

    levels = encoder_levels(small(3, pooling=THICK[:3]), probe_size=(4, 8, 8))
    assert [(lv.name, lv.reduction) for lv in levels] == [
        ("x1_0", (1, 2, 2)),
        ("x2_0", (1, 4, 4)),
        ("x3_0", (2, 8, 8)),
    ]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@needs_cuda
def test_pruned_inference_path_on_cuda_matches_cpu() -> None:
    model = with_statistics(small(3, pooling=THICK[:3]), (8, 16, 16))
    x = torch.randn(1, 2, 6, 20, 18)
    with torch.no_grad():
        reference = model(x)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        gpu = UNetPlusPlus.from_config(model.config)
        gpu.load_state_dict(model.state_dict())
        gpu = gpu.cuda().eval()
        with torch.no_grad():
            for k in (1, 2, 3):
                out = gpu.pruned(head=k, optimize=True)(x.cuda()).cpu()
                torch.testing.assert_close(out, reference[k - 1], atol=1e-4, rtol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
