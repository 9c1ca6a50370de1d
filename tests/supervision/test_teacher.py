"""Teacher side: the feature cache and the encoding-teacher training recipe."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from featsup.losses import one_hot
from featsup.models import UNetPlusPlus
from featsup.supervision import (
    FeatureSupervisor,
    TeacherFeatureCache,
    reconstruction_dice,
    train_encoding_teacher,
)
from featsup.training import load_checkpoint, load_model

WIDTHS = (4, 8, 16, 32, 64)


pytestmark = pytest.mark.usefixtures("one_thread")


def discs(n: int, size: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        cy, cx = torch.randint(size // 4, size - size // 4, (2,), generator=gen).tolist()
        r = int(torch.randint(3, 7, (1,), generator=gen))
        labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    return labels


def supervisor(levels: str = "all") -> FeatureSupervisor:
    student = UNetPlusPlus(1, 2, widths=WIDTHS)
    teacher = UNetPlusPlus(2, 2, widths=WIDTHS, skip_connections=False)
    return FeatureSupervisor(student, teacher, levels=levels).eval()  # type: ignore[arg-type]


def dataset(n: int = 10) -> TensorDataset:
    labels = discs(n)
    return TensorDataset(labels[:, None].float() + 0.2 * torch.randn(n, 1, 32, 32), labels)


# ---------------------------------------------------------------------- cache
@pytest.mark.parametrize("on_disk", [False, True])
def test_cached_features_give_the_live_loss(tmp_path: Path, on_disk: bool) -> None:
    sup, data = supervisor(), dataset()
    path = tmp_path / "cache" if on_disk else None
    cache = sup.cache_teacher_features(data, batch_size=4, path=path, dtype=torch.float32)
    assert len(cache) == 10 and cache.names == ["x1_0", "x2_0", "x3_0", "x4_0"]
    index = torch.tensor([7, 2, 9])
    image, target = data[index]
    live = sup(image, target)
    cached = sup(image, teacher_features=cache.lookup(index))
    torch.testing.assert_close(cached.feature_loss, live.feature_loss)
    for name in live.level_losses:
        torch.testing.assert_close(cached.level_losses[name], live.level_losses[name])
    if on_disk:
        assert sorted(p.name for p in path.iterdir()) == [  # type: ignore[union-attr]
            "0.npy", "1.npy", "2.npy", "3.npy", "meta.json",
        ]  # fmt: skip
        reopened = TeacherFeatureCache.load(path)  # type: ignore[arg-type]
        torch.testing.assert_close(reopened.lookup(index), cache.lookup(index))
    # a cache moved into (device) memory serves the same features; on disk it is read in
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        moved = cache.to(device)
        assert all(isinstance(a, torch.Tensor) for a in moved._features.values())
        served = moved.lookup(index, device=device)
        assert all(v.device.type == device and v.dtype == torch.float32 for v in served.values())
        torch.testing.assert_close({k: v.cpu() for k, v in served.items()}, cache.lookup(index))


def test_float16_cache_is_close_and_serves_a_bottleneck_supervisor() -> None:
    sup, data = supervisor(), dataset()
    cache = sup.cache_teacher_features(data, batch_size=3)  # float16 by default
    assert cache.lookup(0)["x4_0"].dtype == torch.float32
    image, target = data[torch.arange(4)]
    live = sup(image, target)
    cached = sup(image, teacher_features=cache.lookup(torch.arange(4)))
    torch.testing.assert_close(cached.feature_loss, live.feature_loss, rtol=2e-3, atol=1e-4)
    bs = FeatureSupervisor(sup.student, sup.teacher, levels="bottleneck").eval()
    torch.testing.assert_close(
        bs(image, teacher_features=cache.lookup(torch.arange(4))).feature_loss,
        bs(image, target).feature_loss,
        rtol=2e-3, atol=1e-4,
    )  # fmt: skip


def test_cache_of_labels_alone_and_bad_lookups() -> None:
    sup = supervisor("bottleneck")
    labels = discs(5)
    cache = sup.cache_teacher_features(list(labels), batch_size=2)
    assert cache.names == ["x4_0"] and cache.lookup([4, 0])["x4_0"].shape == (2, 64, 2, 2)
    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        cache.lookup(5)
    with pytest.raises(ValueError, match="teacher levels"):
        supervisor()(torch.randn(2, 1, 32, 32), teacher_features=cache.lookup([0, 1]))
    with pytest.raises(ValueError, match="expected 1 maps"):
        sup(torch.randn(2, 1, 32, 32), teacher_features=[])
    with pytest.raises(ValueError, match="dtype"):
        sup.cache_teacher_features(list(labels), dtype=torch.bfloat16)


# ---------------------------------------------------------------------- encoding teacher
def test_train_encoding_teacher_reaches_threshold_saves_and_loads(tmp_path: Path) -> None:
    labels = discs(16)
    path = tmp_path / "teacher.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reaching the threshold must not warn
        teacher = train_encoding_teacher(
            labels, num_classes=2, widths=(4, 8, 16), steps=300, lr=1e-2, dice_threshold=0.9,
            eval_every=10, path=path, progress=False,
        )  # fmt: skip
    assert not teacher.training and not teacher.skip_connections and teacher.deep_supervision
    report = torch.load(path, weights_only=True)["report"]
    assert report["reached_threshold"] and report["dice"] >= 0.9 and report["steps"] < 300
    assert report["seconds"] > 0  # its wall time, to weigh against the student's
    loaded = load_model(path)
    x = torch.nn.functional.one_hot(labels[:4], 2).movedim(-1, 1).float()
    torch.testing.assert_close(loaded(x)[-1], teacher(x)[-1])
    dice_pred = loaded(x)[-1].argmax(1)
    assert (dice_pred == labels[:4]).float().mean() > 0.95


def test_train_encoding_teacher_warns_at_the_step_limit_and_is_seeded() -> None:
    labels = discs(4, size=16)
    with pytest.warns(UserWarning, match="step limit reached"):
        a = train_encoding_teacher(labels, num_classes=2, widths=(4, 8), steps=2,
                                   dice_threshold=1.0, progress=False, seed=3)  # fmt: skip
    state = torch.get_rng_state()
    with pytest.warns(UserWarning):
        b = train_encoding_teacher(labels, num_classes=2, widths=(4, 8), steps=2,
                                   dice_threshold=1.0, progress=False, seed=3)  # fmt: skip
    assert torch.equal(torch.get_rng_state(), state)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_train_encoding_teacher_rejects_one_hot_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="integer label maps"):
        train_encoding_teacher(torch.zeros(2, 2, 8, 8), num_classes=2, steps=1, progress=False)
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(ValueError, match="format"):
        load_model(bad)


# ---------------------------------------------------------------------- recipe parts
def test_crops_have_the_size_and_mostly_hold_foreground() -> None:
    from featsup.supervision._label_crops import _crop_size, _sample_batch

    labels = discs(8, size=64)
    size = _crop_size(32, labels.shape, multiple=16)
    assert size == (32, 32)
    assert _crop_size(100, labels.shape, multiple=16) is None  # larger than the maps: whole
    assert _crop_size(40, labels.shape, multiple=16) == (32, 32)  # rounded down
    gen = torch.Generator().manual_seed(0)
    always = _sample_batch(labels, 64, size, 1.0, gen)
    assert always.shape == (64, 32, 32)
    assert all(c.any() for c in always)  # every crop centred on a foreground pixel
    never = _sample_batch(labels, 64, size, 0.0, gen)
    assert sum(bool(c.any()) for c in never) < 64  # uniform crops miss the small discs


def test_foreground_share_follows_its_schedule() -> None:
    from featsup.supervision._label_crops import _LabelCrops

    labels = torch.zeros(4, 64, 64, dtype=torch.long)
    labels[:, 60:, 60:] = 1  # a corner that uniform 16 x 16 crops hold about 6 % of the time
    crops = _LabelCrops(labels, (16, 16), (1.0, 0.0), seed=0, length=400)
    first = [bool(crops[k].any()) for k in range(40)]
    last = [bool(crops[k].any()) for k in range(360, 400)]
    assert all(first) and sum(last) < 12  # share 1.0 -> 0.9 first; 0.1 -> 0 last (seeded)
    constant = _LabelCrops(labels, (16, 16), 0.5, seed=0, length=400)
    assert constant.fraction == (0.5, 0.5)
    with pytest.raises(ValueError, match="foreground_fraction"):
        train_encoding_teacher(labels, num_classes=2, foreground_fraction=(0.5, 0.2, 0.1))
    with pytest.raises(ValueError, match="foreground_fraction"):
        train_encoding_teacher(labels, num_classes=2, foreground_fraction=(0.5, 1.5))


def test_batch_norm_is_calibrated_on_the_maps_given() -> None:
    from featsup.supervision.teacher import _calibrate_batch_norm

    model = UNetPlusPlus(2, 2, widths=(4, 8, 16), skip_connections=False)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    maps = discs(40)  # three batches of up to 16
    seen: list[torch.Tensor] = []
    hook = norms[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model.train()
        model(torch.ones(4, 2, 16, 16))  # stale statistics from other inputs
        seen.clear()
        _calibrate_batch_norm(model, maps, 2)
    hook.remove()
    inputs = torch.cat(seen)  # (40, C, H, W): what the first BatchNorm saw, the maps
    assert len(seen) == 3 and len(inputs) == 40
    # the running statistics average the three batches' statistics equally (momentum None)
    means = torch.stack([x.mean((0, 2, 3)) for x in seen])
    torch.testing.assert_close(norms[0].running_mean, means.mean(0))
    assert all(m.momentum == 0.1 for m in norms)  # restored for training
    x = one_hot(maps[:4], 2, dtype=torch.float32)
    assert torch.isfinite(model.eval()(x)[-1]).all()


@pytest.mark.parametrize(("crop", "shape"), [(8, (8, 8)), (None, (32, 32))])
def test_batch_norm_statistics_come_from_the_last_training_crops(
    monkeypatch: pytest.MonkeyPatch, crop: int | None, shape: tuple[int, int]
) -> None:
    import featsup.supervision.teacher as teacher_module

    calibrated: list[torch.Tensor] = []
    real = teacher_module._calibrate_batch_norm

    def record(model: UNetPlusPlus, maps: torch.Tensor, num_classes: int) -> None:
        calibrated.append(maps)
        real(model, maps, num_classes)

    monkeypatch.setattr(teacher_module, "_calibrate_batch_norm", record)
    # foreground-centred crops early, uniform ones at the end: calibration sees the end
    train_encoding_teacher(
        discs(12), num_classes=2, widths=(4, 8), steps=10, batch_size=8, crop=crop,
        eval_every=10, dice_threshold=1.0, progress=False,
    )  # fmt: skip
    maps, served = calibrated  # the evaluation's, then the weight average's to serve
    assert torch.equal(maps, served)
    assert maps.shape == (64, *shape) and maps.dtype == torch.long
    if crop is not None:  # the late crops, drawn mostly at random: some miss the disc
        assert ((maps > 0).flatten(1).sum(1) == 0).any()


def test_held_out_maps_are_not_trained_on_and_reported(tmp_path: Path) -> None:
    labels = discs(20)
    with pytest.warns(UserWarning, match="on 2 held-out maps"):
        teacher = train_encoding_teacher(labels, num_classes=2, widths=(4, 8), steps=2,
                                         dice_threshold=1.0, progress=False)  # fmt: skip
    assert teacher.training_report["held_out_maps"] == 2
    with pytest.warns(UserWarning, match="on 3 held-out maps"):
        train_encoding_teacher(labels, val_labels=discs(3), num_classes=2, widths=(4, 8),
                               steps=2, dice_threshold=1.0, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="at least 2 label maps"):
        train_encoding_teacher(labels[:1], num_classes=2, steps=1, progress=False)
    with pytest.raises(ValueError, match="amp"):
        train_encoding_teacher(labels, num_classes=2, steps=1, amp="fp16", progress=False)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the shared Trainer
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[UNetPlusPlus, Path]:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    teacher = train_encoding_teacher(
        discs(16), num_classes=2, widths=(4, 8, 16), steps=300, dice_threshold=0.9,
        eval_every=10, path=path, progress=False, seed=1,
    )  # fmt: skip
    return teacher, path


def test_teacher_round_trips_through_load_model_bitwise(
    trained: tuple[UNetPlusPlus, Path],
) -> None:
    teacher, path = trained
    loaded = load_model(path)
    assert isinstance(loaded, UNetPlusPlus) and not loaded.training
    assert loaded.config == teacher.config
    for (name, a), (_, b) in zip(
        teacher.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    x = torch.nn.functional.one_hot(discs(4), 2).movedim(-1, 1).float()
    for a, b in zip(teacher(x), loaded(x), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert load_checkpoint(path)["report"] == teacher.training_report


def test_teacher_stops_at_the_first_evaluation_that_reaches_the_threshold(
    trained: tuple[UNetPlusPlus, Path],
) -> None:
    teacher, path = trained
    history = load_checkpoint(path)["history"]
    evaluations = [(r["step"], r["val/dice"]) for r in history if "val/dice" in r]
    assert [s for s, _ in evaluations] == list(range(10, 10 * len(evaluations) + 1, 10))
    assert all(dice < 0.9 for _, dice in evaluations[:-1])
    assert evaluations[-1][1] >= 0.9
    report = teacher.training_report
    assert report["steps"] == evaluations[-1][0] < 300
    assert report["dice"] == evaluations[-1][1] and report["reached_threshold"]


def test_teacher_progress_off_a_terminal_is_one_line_per_evaluation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.warns(UserWarning, match="step limit reached"):
        train_encoding_teacher(discs(4, size=16), num_classes=2, widths=(4, 8), steps=4,
                               eval_every=2, dice_threshold=1.0)  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    steps = ["step 2/4 (epoch 0)", "step 4/4 (epoch 0)"]  # named: a log also holds students'
    assert [line.split(" | ")[0] for line in lines] == [f"encoding teacher: {s}" for s in steps]
    assert all(" | val dice " in line and "remaining" in line for line in lines)


def test_teacher_is_reused_only_for_the_same_maps_and_recipe(tmp_path: Path) -> None:
    labels = torch.zeros(6, 16, 16, dtype=torch.long)
    labels[:, 4:12, 3:9] = 1
    path = tmp_path / "teacher.pt"
    kwargs = {"num_classes": 2, "widths": (4, 8), "steps": 6, "eval_every": 3, "path": path}
    warnings.simplefilter("ignore", UserWarning)  # 6 steps do not reach the threshold
    first = train_encoding_teacher(labels, progress=False, **kwargs)
    assert first.training_report["reused"] is False
    again = train_encoding_teacher(labels, progress=False, **kwargs)
    assert again.training_report["reused"] is True
    assert again.training_report["dice"] == first.training_report["dice"]
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = labels.clone()
    other[0, 0, 0] = 1  # one pixel differs: another teacher
    assert (
        train_encoding_teacher(other, progress=False, **kwargs).training_report["reused"] is False
    )
    longer = {**kwargs, "steps": 9}  # another recipe
    assert (
        train_encoding_teacher(other, progress=False, **longer).training_report["reused"] is False
    )
    forced = train_encoding_teacher(other, progress=False, reuse=False, **longer)
    assert forced.training_report["reused"] is False


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_teacher_trains_like_the_default_and_reuses_either_layout(
    tmp_path: Path, dims: int
) -> None:
    labels = torch.zeros((6, 8, 16, 16) if dims == 3 else (6, 16, 16), dtype=torch.long)
    labels[..., 4:12, 3:9] = 1
    layout = torch.channels_last_3d if dims == 3 else torch.channels_last
    kwargs = {"num_classes": 2, "widths": (4, 8), "steps": 6, "eval_every": 3, "crop": None}
    warnings.simplefilter("ignore", UserWarning)  # 6 steps do not reach the threshold
    plain = train_encoding_teacher(labels, progress=False, **kwargs)
    fast = train_encoding_teacher(
        labels, progress=False, channels_last=True, path=tmp_path / "t.pt", **kwargs
    )
    assert fast.channels_last and not plain.channels_last
    convs = [p for p in fast.parameters() if p.ndim == dims + 2]
    assert convs and all(p.is_contiguous(memory_format=layout) for p in convs)
    assert not all(p.is_contiguous(memory_format=layout) for p in plain.parameters() if p.ndim > 2)
    # the same function: weights after six steps agree to float rounding
    for a, b in zip(plain.state_dict().values(), fast.state_dict().values(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-3, atol=2e-3)
    x = torch.nn.functional.one_hot(labels[:2], 2).movedim(-1, 1).float()
    with torch.no_grad():
        torch.testing.assert_close(fast(x)[-1], plain(x)[-1], rtol=1e-3, atol=1e-3)
    # the layout is not part of the recipe: a channels-last teacher is reused contiguous
    again = train_encoding_teacher(labels, progress=False, path=tmp_path / "t.pt", **kwargs)
    assert again.training_report["reused"] is True and not again.channels_last
    for a, b in zip(fast.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("ema_decay", [0.9, None])
def test_the_teacher_served_is_the_teacher_judged(tmp_path: Path, ema_decay: float | None) -> None:
    held = discs(6, size=16)
    kwargs: dict = {"num_classes": 2, "widths": (4, 8), "steps": 40, "eval_every": 20,
                    "crop": None, "ema_decay": ema_decay, "val_labels": held,
                    "path": tmp_path / "t.pt", "progress": False}  # fmt: skip
    warnings.simplefilter("ignore", UserWarning)  # 40 steps do not reach the threshold
    teacher = train_encoding_teacher(discs(12, size=16), **kwargs)
    with torch.no_grad():
        logits = teacher(one_hot(held, 2, dtype=torch.float32))[-1]
    report = teacher.training_report
    assert reconstruction_dice(logits, held, 2) == pytest.approx(report["dice"], abs=1e-6)
    trainer_state = load_checkpoint(tmp_path / "t.pt")
    assert (trainer_state["average"] is None) == (ema_decay is None)
    # the average is part of the recipe: a teacher trained without it is not reused
    other = {**kwargs, "ema_decay": 0.5 if ema_decay is None else None}
    assert train_encoding_teacher(discs(12, size=16), **other).training_report["reused"] is False
