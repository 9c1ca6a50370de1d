"""transfer_weights: a 2.5D model starts as the single-slice model it learns from; a model of
other classes starts from the mean of the source classes it is given."""

from __future__ import annotations

import pytest
import torch

from featsup.models import UNetPlusPlus, transfer_weights

WIDTHS = (4, 8, 16)


def test_same_shapes_copy_every_tensor() -> None:
    source = UNetPlusPlus(1, 2, widths=WIDTHS)
    target = transfer_weights(source, UNetPlusPlus(1, 2, widths=WIDTHS))
    for (name, have), want in zip(
        source.state_dict().items(), target.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(want, have, msg=name)


@pytest.mark.parametrize("context", [1, 2])
def test_neighbours_start_at_zero_and_learn(context: int) -> None:
    source = UNetPlusPlus(1, 2, widths=WIDTHS).eval()
    target = transfer_weights(source, UNetPlusPlus(2 * context + 1, 2, widths=WIDTHS)).eval()
    kernel = target.encoder.x0_0.conv1.conv.weight
    torch.testing.assert_close(
        kernel[:, context : context + 1], source.encoder.x0_0.conv1.conv.weight
    )
    assert not kernel[:, :context].any() and not kernel[:, context + 1 :].any()
    image = torch.randn(2, 2 * context + 1, 16, 16)  # neighbours differ from the centre
    expected = source(image[:, context : context + 1])
    for got, want in zip(target(image), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    sum(o.square().mean() for o in target.train()(image)).backward()
    assert kernel.grad is not None and kernel.grad[:, 0].abs().sum() > 0  # neighbours learn


def test_incompatible_models_are_refused() -> None:
    source = UNetPlusPlus(1, 2, widths=WIDTHS)
    with pytest.raises(ValueError, match="same widths and depth"):
        transfer_weights(source, UNetPlusPlus(1, 2, widths=(4, 8)))
    with pytest.raises(ValueError, match="odd number of slices"):
        transfer_weights(source, UNetPlusPlus(2, 2, widths=WIDTHS))
    with pytest.raises(ValueError, match="odd number of slices"):
        transfer_weights(source, UNetPlusPlus(1, 3, widths=WIDTHS))  # another class count


def test_classes_average_the_source_outputs() -> None:
    source = UNetPlusPlus(1, 3, widths=WIDTHS).eval()  # background, liver, tumour
    target = transfer_weights(source, UNetPlusPlus(1, 2, widths=WIDTHS), classes=[(0, 1), (2,)])
    image = torch.randn(2, 1, 16, 16)
    for got, have in zip(target.eval()(image), source(image), strict=True):  # every head
        torch.testing.assert_close(got[:, 0], have[:, :2].mean(1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[:, 1], have[:, 2], atol=1e-5, rtol=1e-5)


def test_bad_class_groups_are_refused() -> None:
    source = UNetPlusPlus(1, 3, widths=WIDTHS)
    for classes in ([], [(0,), ()], [(0,), (-1,)]):
        with pytest.raises(ValueError, match="non-empty group"):
            transfer_weights(source, UNetPlusPlus(1, 2, widths=WIDTHS), classes=classes)
    with pytest.raises(ValueError, match="below 3"):
        transfer_weights(source, UNetPlusPlus(1, 2, widths=WIDTHS), classes=[(0,), (3,)])
    with pytest.raises(ValueError, match="odd number of slices"):  # 2 groups, 4 classes
        transfer_weights(source, UNetPlusPlus(1, 4, widths=WIDTHS), classes=[(0,), (2,)])
    with pytest.raises(ValueError, match="found none"):  # same classes: nothing to map
        transfer_weights(source, UNetPlusPlus(1, 3, widths=WIDTHS), classes=[(2,), (1,), (0,)])


def test_extra_inputs_start_at_zero_after_the_slices() -> None:
    source = UNetPlusPlus(1, 2, widths=WIDTHS).eval()
    target = transfer_weights(source, UNetPlusPlus(4, 2, widths=WIDTHS), extra_inputs=1).eval()
    kernel = target.encoder.x0_0.conv1.conv.weight  # 3 slices (context 1), then the extra
    torch.testing.assert_close(kernel[:, 1:2], source.encoder.x0_0.conv1.conv.weight)
    assert not kernel[:, [0, 2, 3]].any()
    image = torch.randn(2, 4, 16, 16)
    for got, want in zip(target(image), source(image[:, 1:2]), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    sum(o.square().mean() for o in target.train()(image)).backward()
    assert kernel.grad is not None and kernel.grad[:, 3].abs().sum() > 0  # the extra learns
    with pytest.raises(ValueError, match="extra"):
        transfer_weights(source, UNetPlusPlus(2, 2, widths=WIDTHS), extra_inputs=0)
    with pytest.raises(ValueError, match="extra_inputs"):
        transfer_weights(source, UNetPlusPlus(2, 2, widths=WIDTHS), extra_inputs=-1)
    with pytest.raises(ValueError, match="found none"):  # asked for, but nothing grew
        transfer_weights(source, UNetPlusPlus(1, 2, widths=WIDTHS), extra_inputs=1)
