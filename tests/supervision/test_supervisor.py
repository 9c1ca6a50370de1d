from __future__ import annotations

import copy
import gc
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featsup.losses import FeatureLoss, TotalLoss, one_hot
from featsup.losses.feature import feature_loss
from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor, SupervisedOutput

WIDTHS = (4, 8, 16, 32, 64)


pytestmark = pytest.mark.usefixtures("one_thread")


def unetpp(in_channels: int = 1, **kwargs: object) -> UNetPlusPlus:
    return UNetPlusPlus(in_channels, 2, widths=WIDTHS, **kwargs)  # type: ignore[arg-type]


def encoding_teacher() -> UNetPlusPlus:
    return UNetPlusPlus(2, 2, widths=WIDTHS, skip_connections=False)


def batch(size: int = 32, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.zeros(n, size, size, dtype=torch.long)
    target[:, size // 4 : 3 * size // 4, size // 3 : 3 * size // 4] = 1
    image = target[:, None].float() + 0.3 * torch.randn(n, 1, size, size)
    return image, target


def seg(output: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    heads = output if isinstance(output, list) else [output]
    return sum(F.cross_entropy(h, target) for h in heads) / len(heads)  # type: ignore[return-value]


def hooks_on(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# ---------------------------------------------------------------------- freezing
def test_teacher_bitwise_unchanged_and_gradless_after_20_steps() -> None:
    teacher = encoding_teacher()
    teacher.train()  # the wrapper must switch it to eval
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    sup = FeatureSupervisor(unetpp(), teacher, levels="all")
    optimizer = torch.optim.AdamW(sup.parameters(), lr=1e-2)
    image, target = batch()
    for step in range(20):
        sup.train()
        if step == 10:
            teacher.train()  # even a direct call cannot make the teacher learn BN statistics
        out = sup(image, target)
        loss = seg(out.output, target) + out.feature_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(m.training for m in teacher.modules())
    assert sup.training and sup.student.training


def test_parameters_hold_student_and_adapters_but_not_teacher() -> None:
    teacher = UNetPlusPlus(2, 2, widths=(4, 16, 16, 32, 64), skip_connections=False)
    sup = FeatureSupervisor(unetpp(), teacher)
    ids = {id(p) for p in sup.parameters()}
    assert not ids & {id(p) for p in teacher.parameters()}
    assert {id(p) for p in sup.student.parameters()} <= ids
    assert isinstance(sup.adapters[0], nn.Conv2d) and id(sup.adapters[0].weight) in ids
    assert all(not n.startswith("teacher.") for n, _ in sup.named_parameters())
    assert any(k.startswith("teacher.") for k in sup.state_dict())  # full checkpoints resume


def test_sharing_weights_with_the_student_is_refused() -> None:
    student = unetpp(2)
    with pytest.raises(ValueError, match="deepcopy"):
        FeatureSupervisor(student, student)


# ---------------------------------------------------------------------- loss values
def test_feature_loss_is_zero_for_same_weights_and_input() -> None:
    teacher = encoding_teacher()
    for m in teacher.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    student = copy.deepcopy(teacher)
    sup = FeatureSupervisor(student, teacher).eval()
    _, target = batch()
    out = sup(one_hot(target, 2, dtype=torch.float32), target)
    assert out.feature_loss.item() == 0.0
    assert len(out.level_losses) == 4
    # the same pair with a different student input is not zero: the test can fail
    sup.student.encoder.x0_0.conv1.conv.weight.data.mul_(1.5)
    assert sup(one_hot(target, 2, dtype=torch.float32), target).feature_loss.item() > 0


def test_loss_matches_manual_smooth_l1_with_weights() -> None:
    student, teacher = unetpp().eval(), encoding_teacher()
    loss = FeatureLoss(weights=[1.0, 3.0], beta=0.5)
    sup = FeatureSupervisor(student, teacher, levels=["x2_0", -1], loss=loss).eval()
    image, target = batch()
    out = sup(image, target)
    s = student.encoder_features(image)
    t = teacher.encoder_features(one_hot(target, 2, dtype=torch.float32))
    parts = [F.smooth_l1_loss(s[i], t[i], beta=0.5) for i in (1, 3)]
    torch.testing.assert_close(out.level_losses["x2_0"], parts[0])
    torch.testing.assert_close(out.feature_loss, parts[0] + 3.0 * parts[1])
    # w2 = 0.5 of eq. 17 is set once, by TotalLoss
    total = TotalLoss(seg=lambda heads, y: heads[0].sum() * 0, feature_weight=0.5)
    weighted = total.terms(out.output, target, feature=out.feature_loss)["feature"]
    torch.testing.assert_close(weighted, 0.5 * (parts[0] + 3.0 * parts[1]))
    mse_loss = FeatureLoss(kind="mse")
    mse = FeatureSupervisor(student, copy.deepcopy(teacher), levels=[-1], loss=mse_loss).eval()
    torch.testing.assert_close(mse(image, target).feature_loss, F.mse_loss(s[3], t[3]))


def test_student_output_is_unchanged() -> None:
    student = unetpp().eval()
    sup = FeatureSupervisor(student, encoding_teacher())
    image, target = batch()
    out = sup(image, target)
    assert isinstance(out, SupervisedOutput)
    for a, b in zip(out.output, student(image), strict=True):
        torch.testing.assert_close(a, b)


def test_custom_loss_and_teacher_input() -> None:
    calls: list[tuple[int, ...]] = []

    def l1(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(s.shape))
        return (s - t).abs().mean()

    teacher = UNetPlusPlus(1, 2, widths=WIDTHS, skip_connections=False)
    loss = FeatureLoss(kind=l1)
    sup = FeatureSupervisor(unetpp(), teacher, loss=loss, teacher_input=lambda im, _: im * 2)
    image, _ = batch()
    out = sup(image)  # no target needed: the teacher reads the image
    assert calls[-4:] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    assert out.feature_loss.item() > 0


# ---------------------------------------------------------------------- gradients
def test_feature_gradients_reach_the_encoder_but_not_the_decoder_ns() -> None:
    student = unetpp(deep_supervision=False)  # the paper's NS setting
    sup = FeatureSupervisor(student, encoding_teacher(), levels="all")
    out = sup(*batch())
    out.feature_loss.backward(retain_graph=True)
    for name, p in student.named_parameters():
        if name.startswith("encoder."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    seg(out.output, batch()[1]).backward()  # the output still trains the decoder
    assert all(p.grad is not None for p in student.heads.x0_4.parameters())


def test_bottleneck_supervision_uses_only_the_bottleneck() -> None:
    student, teacher = unetpp(deep_supervision=False), encoding_teacher()
    sup = FeatureSupervisor(student, teacher, levels="bottleneck")
    assert sup.level_names == ["x4_0"] and sup.teacher_level_names == ["x4_0"]
    assert [len(m._forward_hooks) for m in student.encoder.values()] == [0, 0, 0, 0, 1]
    out = sup(*batch())
    assert list(out.level_losses) == ["x4_0"]
    out.feature_loss.backward()
    assert all(p.grad is not None for p in student.encoder.x4_0.parameters())
    image, target = batch()
    sup.eval()
    s = student.encoder_features(image)[-1]
    t = teacher.encoder_features(one_hot(target, 2, dtype=torch.float32))[-1]
    torch.testing.assert_close(sup(image, target).feature_loss, F.smooth_l1_loss(s, t))


def test_shallow_level_only_touches_shallow_encoder() -> None:
    student = unetpp(deep_supervision=False)
    sup = FeatureSupervisor(student, encoding_teacher(), levels=["x1_0"])
    sup(*batch()).feature_loss.backward()
    grads = {k: all(p.grad is not None for p in m.parameters()) for k, m in student.encoder.items()}
    assert grads == {"x0_0": True, "x1_0": True, "x2_0": False, "x3_0": False, "x4_0": False}


# ---------------------------------------------------------------------- hooks lifetime
def test_hooks_are_removed_by_close_with_and_deletion() -> None:
    student, teacher = unetpp(), encoding_teacher()
    sup = FeatureSupervisor(student, teacher)
    assert hooks_on(student) == 4
    sup.remove()
    assert hooks_on(student) == 0
    with pytest.raises(RuntimeError, match="removed"):
        sup(*batch())
    with FeatureSupervisor(student, teacher):
        assert hooks_on(student) == 4
    assert hooks_on(student) == 0
    sup = FeatureSupervisor(student, teacher)
    del sup
    gc.collect()
    assert hooks_on(student) == 0


def test_hooks_do_not_record_outside_the_supervisor() -> None:
    student = unetpp()
    sup = FeatureSupervisor(student, encoding_teacher())
    student(batch()[0])  # plain inference with the wrapper alive
    assert not sup._student_tap._outputs


# ---------------------------------------------------------------------- errors
def test_adapters_none_lists_both_shapes_and_leaves_no_hooks() -> None:
    teacher = UNetPlusPlus(2, 2, widths=(4, 16, 16, 32, 64), skip_connections=False)
    student = unetpp()
    with pytest.raises(ValueError, match=r"student \(2, 8, 32, 32\) and teacher \(2, 16, 32, 32\)"):
        FeatureSupervisor(student, teacher, adapters=None)
    assert hooks_on(student) == 0


def test_auto_adapters_resize_and_project() -> None:
    teacher = UNetPlusPlus(2, 2, widths=(4, 12, 32), skip_connections=False)  # x1_0 at 1/2
    sup = FeatureSupervisor(unetpp(), teacher, levels=[("x2_0", "x1_0")])
    assert isinstance(sup.adapters[0], nn.Conv2d)
    assert (sup.adapters[0].in_channels, sup.adapters[0].out_channels) == (16, 12)
    out = sup(*batch())
    out.feature_loss.backward()
    assert sup.adapters[0].weight.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"levels": "al"}, "did you mean 'all'"),
        ({"levels": ["x9_0"]}, "student level names"),
        ({"levels": []}, "non-empty list"),
        ({"adapters": "on"}, "adapters"),
        ({"loss": FeatureLoss(weights=[1.0])}, r"weights: expected one weight per level \(4\)"),
        ({"loss": FeatureLoss(reduction="none")}, "loss: expected a FeatureLoss reducing"),
        ({"label_classes": 3}, "label_classes: expected the teacher's input channels"),
        ({"student_layers": ["encoder.x1_O"]}, "did you mean"),
    ],
)
def test_bad_options_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeatureSupervisor(unetpp(), encoding_teacher(), **kwargs)  # type: ignore[arg-type]


def test_loss_must_be_a_feature_loss() -> None:
    with pytest.raises(TypeError, match="loss: expected FeatureLoss"):
        FeatureSupervisor(unetpp(), encoding_teacher(), loss="mse")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "removed",
    [
        {"weight": 0.5},
        {"num_classes": 2},
        {"beta": 0.5},
        {"level_weights": [1.0] * 4},
        {"feature_norm": "channel"},
    ],
)
def test_removed_arguments_are_refused(removed: dict[str, object]) -> None:
    # w2 is TotalLoss(feature_weight=); the loss options are FeatureLoss's; the teacher's
    # input channels are label_classes
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{next(iter(removed))}'"):
        FeatureSupervisor(unetpp(), encoding_teacher(), **removed)  # type: ignore[arg-type]


def test_label_classes_default_to_the_teacher_input_channels() -> None:
    sup = FeatureSupervisor(unetpp(), encoding_teacher(), label_classes=2)
    assert sup.label_classes == 2
    assert FeatureSupervisor(unetpp(), encoding_teacher()).label_classes == 2


def test_a_shallower_teacher_pairs_the_levels_of_equal_reduction() -> None:
    teacher = UNetPlusPlus(2, 2, widths=(4, 8, 16), skip_connections=False)
    student = unetpp()
    sup = FeatureSupervisor(student, teacher)  # no pairs by hand: reductions 1/2, 1/4 match
    assert sup.teacher_level_names == ["x1_0", "x2_0"]
    assert sup.level_names == ["x1_0", "x2_0"]
    bottleneck = FeatureSupervisor(student, teacher, levels="bottleneck")
    assert bottleneck.teacher_level_names == ["x2_0"]  # the deepest level of equal reduction


def test_labels_out_of_range_and_unknown_models() -> None:
    sup = FeatureSupervisor(unetpp(), encoding_teacher())
    image, target = batch()
    with pytest.raises(ValueError, match=r"labels in \[0, 2\)"):
        sup(image, target + 1)
    with pytest.raises(ValueError, match="target: expected a label map"):
        sup(image)
    with pytest.raises(ValueError, match="student_layers"):
        FeatureSupervisor(nn.Sequential(nn.Conv2d(1, 2, 3)), encoding_teacher())


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.a(self.a(x[:, :1]).mean(1, keepdim=True)))


def test_taps_that_fire_twice_never_or_get_overwritten_raise() -> None:
    teacher = _Twice()
    with pytest.raises(RuntimeError, match="got 2 calls"):
        FeatureSupervisor(_Twice(), teacher, student_layers=["a"], teacher_layers=["relu"])
    with pytest.raises(RuntimeError, match="got 0 calls"):
        FeatureSupervisor(_Twice(), teacher, student_layers=["unused"], teacher_layers=["relu"])


def test_in_place_update_of_a_tapped_output_raises() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True))
    with pytest.raises(RuntimeError, match="in-place"):
        FeatureSupervisor(model, copy.deepcopy(model), student_layers=["0"], teacher_layers=["1"],
                          teacher_input=lambda im, _: im)  # fmt: skip


# ---------------------------------------------------------------------- export
def test_student_state_dict_is_the_students_own() -> None:
    student = unetpp()
    sup = FeatureSupervisor(student, encoding_teacher())
    state = sup.student_state_dict()
    assert state.keys() == student.state_dict().keys()
    fresh = unetpp()
    fresh.load_state_dict(state)
    sup.close()
    assert hooks_on(sup.student) == 0


def test_probe_leaves_rng_and_modes_untouched() -> None:
    student = unetpp().train()
    student.encoder.x0_0.eval()
    teacher = encoding_teacher()
    state = torch.get_rng_state()
    running = student.encoder.x1_0.conv1.bn.running_mean.clone()
    FeatureSupervisor(student, teacher).close()
    assert torch.equal(torch.get_rng_state(), state)
    assert student.training and not student.encoder.x0_0.training
    assert torch.equal(student.encoder.x1_0.conv1.bn.running_mean, running)


@pytest.mark.parametrize("make", [lambda: torch.randint(0, 3, (2, 8, 8))])
def test_one_hot_round_trips(make: Callable[[], torch.Tensor]) -> None:
    target = make()
    encoded = one_hot(target, 3, dtype=torch.float32)
    assert encoded.shape == (2, 3, 8, 8)
    assert torch.equal(encoded.argmax(1), target)
    assert torch.equal(encoded.sum(1), torch.ones(2, 8, 8))
    torch.testing.assert_close(one_hot(encoded, 3, dtype=torch.float32), encoded)
    torch.testing.assert_close(feature_loss(encoded, encoded), torch.tensor(0.0))


def test_student_runs_once_and_teacher_runs_only_its_encoder() -> None:
    student, teacher = unetpp(), encoding_teacher()
    sup = FeatureSupervisor(student, teacher)
    calls = {"student": 0, "teacher_decoder": 0, "teacher_encoder": 0}

    def count(key: str) -> Callable[..., None]:
        return lambda *_: calls.__setitem__(key, calls[key] + 1)

    student.register_forward_hook(count("student"))
    for node in teacher.decoder.values():
        node.register_forward_hook(count("teacher_decoder"))
    teacher.encoder.x4_0.register_forward_hook(count("teacher_encoder"))
    sup(*batch())
    assert calls == {"student": 1, "teacher_decoder": 0, "teacher_encoder": 1}


# ---------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_supervised_steps_on_cuda_with_autocast() -> None:
    teacher = encoding_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    sup = FeatureSupervisor(unetpp(), teacher, levels="all").cuda()
    optimizer = torch.optim.AdamW(sup.parameters(), lr=1e-2)
    image, target = (t.cuda() for t in batch())
    losses = []
    for _ in range(10):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = sup(image, target)
            loss = seg(out.output, target) + out.feature_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert out.feature_loss.is_cuda and torch.isfinite(out.feature_loss)
    assert losses[-1] < losses[0]
    for name, value in sup.teacher.state_dict().items():
        assert torch.equal(value.cpu(), before[name]), name
