from __future__ import annotations

import pytest
import torch

from featsup.models import UNetPlusPlus, UpConv

WIDTHS = {2: (4, 8, 16), 3: (4, 8, 16, 32), 4: (4, 8, 16, 32, 64), 5: (4, 8, 8, 16, 16, 32)}


def small(depth: int = 4, **kwargs: object) -> UNetPlusPlus:
    return UNetPlusPlus(2, 3, widths=WIDTHS[depth], **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
@pytest.mark.parametrize("size", [(32, 32), (33, 47), (17, 64)])
def test_every_head_has_input_size(depth: int, size: tuple[int, int]) -> None:
    model = small(depth)
    outputs = model(torch.randn(2, 2, *size))
    assert isinstance(outputs, list) and len(outputs) == depth
    for y in outputs:
        assert y.shape == (2, 3, *size)


def test_without_deep_supervision_returns_last_head() -> None:
    model = small(deep_supervision=False).eval()
    x = torch.randn(1, 2, 32, 32)
    y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3, 32, 32)
    model.deep_supervision = True
    torch.testing.assert_close(model(x)[-1], y)


def test_encoder_features_and_single_pass_features() -> None:
    model = small().eval()
    x = torch.randn(2, 2, 32, 32)
    feats = model.encoder_features(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, 8, 16, 16),
        (2, 16, 8, 8),
        (2, 32, 4, 4),
        (2, 64, 2, 2),
    ]
    assert model.feature_channels == (8, 16, 32, 64)
    assert [i.module for i in model.feature_info][-1] == "encoder.x4_0"
    outputs, feats2 = model.forward_with_features(x)
    for a, b in zip(feats, feats2, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(outputs[-1], model(x)[-1])


@pytest.mark.parametrize("head", [1, 2, 3, 4])
def test_gradients_reach_every_parameter_a_head_needs(head: int) -> None:
    model = small()
    outputs = model(torch.randn(2, 2, 32, 32))
    outputs[head - 1].square().mean().backward()
    for name, p in model.named_parameters():
        node = name.split(".")[1]  # x{i}_{j}
        i, j = (int(n) for n in node[1:].split("_"))
        if name.startswith("heads."):
            needed = j == head
        else:
            needed = i + j <= head
        has_grad = p.grad is not None and p.grad.abs().sum() > 0
        assert has_grad == needed, f"{name}: needed={needed} but grad={has_grad}"


def test_deep_supervision_trains_every_parameter() -> None:
    for skip in (True, False):
        model = small(skip_connections=skip)
        sum(y.square().mean() for y in model(torch.randn(2, 2, 32, 32))).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
        assert not missing


@pytest.mark.parametrize("skip", [True, False])
def test_pruned_head_equals_full_model_head(skip: bool) -> None:
    model = small(skip_connections=skip)
    model.train()
    model(torch.randn(4, 2, 32, 32))  # move BN statistics away from their init
    model.eval()
    x = torch.randn(2, 2, 40, 36)
    with torch.no_grad():
        full = model(x)
        for k in range(1, 5):
            pruned = model.pruned(head=k)
            assert pruned.depth == k and not pruned.training
            n_full = sum(p.numel() for p in model.parameters())
            assert sum(p.numel() for p in pruned.parameters()) < n_full or k == 4
            torch.testing.assert_close(pruned(x), full[k - 1], atol=1e-5, rtol=1e-5)
            fast = model.pruned(head=k, optimize=True)
            torch.testing.assert_close(fast(x), full[k - 1], atol=1e-4, rtol=1e-4)


def test_pruned_model_is_a_copy() -> None:
    model = small().eval()
    pruned = model.pruned(head=2)
    with torch.no_grad():
        next(pruned.parameters()).add_(1.0)
    assert not torch.equal(next(pruned.parameters()), next(model.parameters()))


def test_encoding_unetpp_has_no_skip_concatenation() -> None:
    model = small(skip_connections=False)
    for name, node in model.decoder.items():
        i = int(name[1])
        first_conv = node.conv.conv1.conv
        assert isinstance(node.up, UpConv)
        assert node.up.in_channels == node.up.out_channels == model.widths[i + 1]
        # Convolution_SC sees only the up-sampled map
        assert first_conv.in_channels == model.widths[i + 1]
    seen: list[int] = []
    handles = [
        node.conv.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
        for node in model.decoder.values()
    ]
    model(torch.randn(1, 2, 32, 32))
    for h in handles:
        h.remove()
    assert seen == [model.widths[int(n[1]) + 1] for n in model.decoder]


def test_segmentation_unetpp_concatenates_whole_row() -> None:
    model = small()
    for name, node in model.decoder.items():
        i, j = int(name[1]), int(name[3])
        assert node.conv.conv1.conv.in_channels == (j + 1) * model.widths[i]


def test_config_round_trip() -> None:
    model = small(skip_connections=False)
    clone = UNetPlusPlus.from_config(model.config)
    clone.load_state_dict(model.state_dict())
    assert clone.config == model.config


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, 32, 32), "4D tensor"),
        ((1, 3, 32, 32), "expected 2 channels"),
        ((1, 1, 2, 32, 32), "4D"),
    ],
)
def test_bad_inputs_raise(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        small()(torch.randn(*shape))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="widths"):
        UNetPlusPlus(1, 2, widths=(8,))
    with pytest.raises(ValueError, match="head"):
        small().pruned(head=5)
    with pytest.raises(ValueError, match="head"):
        small().pruned(head=0)


def test_paper_widths_flops() -> None:
    # 15.5 vs 135 GMACs at 512x512 for widths 32..512 (issue 2)
    from torch.utils.flop_counter import FlopCounterMode

    model = UNetPlusPlus(1, 2).eval()
    x = torch.zeros(1, 1, 512, 512, device="meta")
    macs = []
    for k in (1, 4):
        pruned = model.pruned(head=k).to("meta")
        with FlopCounterMode(display=False) as counter:
            pruned(x)
        macs.append(counter.get_total_flops() / 2e9)
    assert macs[0] == pytest.approx(15.5, abs=0.1)
    assert macs[1] == pytest.approx(135.1, abs=0.2)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@needs_cuda
def test_pruned_inference_path_on_cuda_matches_cpu() -> None:
    model = UNetPlusPlus(1, 2, widths=(8, 16, 32, 64, 128))
    model.train()
    model(torch.randn(4, 1, 64, 64))  # non-trivial batch-norm statistics
    model.eval()
    x = torch.randn(2, 1, 48, 80)
    with torch.no_grad():
        reference = model(x)
    gpu = UNetPlusPlus.from_config(model.config)
    gpu.load_state_dict(model.state_dict())
    gpu = gpu.cuda().eval()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare in true fp32
    try:
        with torch.no_grad():
            for k in range(1, 5):
                fast = gpu.pruned(head=k, optimize=True)
                assert next(fast.parameters()).is_cuda
                out = fast(x.cuda()).cpu()
                torch.testing.assert_close(out, reference[k - 1], atol=1e-4, rtol=1e-4)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                low = gpu.pruned(head=2, optimize=True)(x.cuda()).float().cpu()
            torch.testing.assert_close(low, reference[1], atol=0.1, rtol=0.05)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.cuda
@needs_cuda
def test_training_step_on_cuda_reaches_every_parameter() -> None:
    model = UNetPlusPlus(1, 2, widths=(8, 16, 32, 64, 128)).cuda()
    x = torch.randn(2, 1, 64, 64, device="cuda")
    target = torch.randint(0, 2, (2, 64, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = model(x)
        loss = sum(torch.nn.functional.cross_entropy(o.float(), target) for o in outputs)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing
