"""The liver -> tumour cascade: labels on the grid, prepared models reused per head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _cascades import threshold_cascade
from featsup.data import Preprocessing, make_phantom
from featsup.inference import Cascade, predict_volume
from featsup.metrics import dice_score
from featsup.models import UNetPlusPlus


class _Oracle(torch.nn.Module):
    """A 'model' whose logits favour class 1 where the input is bright."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        score = 20 * (image[:, :1] - self.threshold)
        return torch.cat([-score, score], dim=1)


def test_cascade_puts_labels_back_on_the_grid() -> None:
    pytest.importorskip("cv2")
    volume = np.full((6, 48, 40), -500, dtype=np.int16)
    volume[1:5, 10:30, 8:32] = 60  # "liver"
    volume[2:4, 15:20, 12:18] = 200  # "tumour" inside it
    volume[0, 40:44, 2:6] = 60  # a stray blob the largest component removes
    liver_model, tumour_model = _Oracle(0.3), _Oracle(0.8)
    cascade = Cascade(liver_model, tumour_model, tumour_size=32, roi_margin=2, device="cpu",
                      preprocessing=Preprocessing(clahe=False))  # fmt: skip
    result = cascade(volume)
    assert result.labels.shape == volume.shape and result.labels.dtype == np.uint8
    expected = np.zeros(volume.shape, np.uint8)
    expected[1:5, 10:30, 8:32] = 1
    expected[2:4, 15:20, 12:18] = 2
    # resizing the ROI to 32x32 and back moves a boundary by at most a pixel
    assert (result.labels != expected).mean() < 0.02
    assert result.labels[0, 40:44, 2:6].max() == 0
    assert set(result.timings) >= {"preprocess", "liver_model", "tumour_model", "total"}


def test_cascade_without_liver_returns_background() -> None:
    cascade = Cascade(_Oracle(2.0), _Oracle(2.0), tumour_size=16, device="cpu",
                      preprocessing=Preprocessing(clahe=False))  # fmt: skip
    result = cascade(np.zeros((3, 16, 16), np.int16))
    assert result.labels.max() == 0 and result.roi is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_volume_and_cascade_on_cuda_match_cpu(model: UNetPlusPlus) -> None:
    volume = np.random.default_rng(2).random((6, 32, 32)).astype(np.float32)
    cpu = predict_volume(model, volume, head=2, batch_size=4, device="cpu")
    gpu = predict_volume(model, volume, head=2, batch_size=4, device="cuda")
    np.testing.assert_allclose(gpu, cpu, atol=2e-3)  # cuDNN may use TF32
    hu = np.random.default_rng(3).integers(-200, 300, (4, 48, 48)).astype(np.int16)
    options = {"liver_size": 32, "tumour_size": 32, "liver_crf": {"backend": "torch"}}
    on_cpu = Cascade(model, model, device="cpu", **options)(hu)
    on_gpu = Cascade(model, model, device="cuda", **options)(hu)
    assert on_gpu.labels.shape == (4, 48, 48)
    assert np.mean(on_gpu.labels != on_cpu.labels) < 0.01


def test_cascade_prepares_each_head_once_across_volumes(
    model: UNetPlusPlus, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = UNetPlusPlus.pruned

    def counting(self: UNetPlusPlus, head: int, **kwargs: object) -> UNetPlusPlus:
        calls.append(head)
        return original(self, head, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(UNetPlusPlus, "pruned", counting)
    cascade = Cascade(model, model, liver_size=32, tumour_size=32, device="cpu")
    hu = np.random.default_rng(6).integers(-200, 300, (3, 32, 32)).astype(np.int16)
    hu[:, 8:24, 8:24] = 60
    for _ in range(3):
        cascade(hu)
    assert calls == [2] or calls == [2, 2]  # liver head, and tumour head once if reached
    liver = cascade.liver_stage(hu)
    for head in (1, 2, 1):
        cascade.liver_stage(hu, head=head)
        result = cascade.tumour_stage(liver, head=head)
        assert result.labels.shape == hu.shape
    assert sorted(set(calls)) == [1, 2] and len(calls) == len(cascade._prepared)


def test_liver_and_tumour_stages_compose_to_the_call() -> None:
    volume = np.full((6, 48, 40), -500, dtype=np.int16)
    volume[1:5, 10:30, 8:32] = 60
    volume[2:4, 15:20, 12:18] = 200
    cascade = Cascade(_Oracle(0.3), _Oracle(0.8), tumour_size=32, roi_margin=2, device="cpu",
                      preprocessing=Preprocessing(clahe=False))  # fmt: skip
    whole = cascade(volume)
    liver = cascade.liver_stage(volume)
    staged = cascade.tumour_stage(liver)
    np.testing.assert_array_equal(staged.labels, whole.labels)
    np.testing.assert_array_equal(liver.probability, whole.liver_probability)
    assert liver.image_u8.dtype == np.uint8 and liver.mask.dtype == bool
    # a known liver mask replaces the liver model: with the model's own mask, the same labels
    known = cascade.liver_stage(volume, mask=liver.mask)
    assert "liver_model" not in known.timings and known.mask.dtype == bool
    np.testing.assert_array_equal(known.image, liver.image)
    np.testing.assert_array_equal(cascade.tumour_stage(known).labels, whole.labels)
    smaller = np.zeros_like(liver.mask)
    smaller[2:4] = liver.mask[2:4]
    labels = cascade.tumour_stage(cascade.liver_stage(volume, mask=smaller)).labels
    assert not labels[[0, 1, 4, 5]].any() and (labels[2:4] > 0).sum() == smaller.sum()
    with pytest.raises(ValueError, match="mask"):
        cascade.liver_stage(volume, mask=liver.mask[:3])


def test_roi_scope_lets_the_tumour_model_see_and_keep_a_lesion_past_the_liver_mask() -> None:
    volume = np.full((6, 48, 40), -500, dtype=np.int16)
    volume[1:5, 10:30, 8:32] = 60
    volume[2:4, 15:20, 26:32] = 200  # a bright lesion at the liver's right edge
    known = np.zeros(volume.shape, bool)
    known[1:5, 10:30, 8:29] = True  # a liver mask that leaves out half the lesion
    options = {"tumour_size": 32, "roi_margin": 6, "device": "cpu",
               "preprocessing": Preprocessing(clahe=False)}  # fmt: skip
    lesion = volume == 200
    for scope, found in (("liver", lesion & known), ("roi", lesion)):
        cascade = Cascade(_Oracle(0.3), _Oracle(0.8), tumour_scope=scope, **options)
        result = cascade.tumour_stage(cascade.liver_stage(volume, mask=known))
        np.testing.assert_array_equal(result.labels == 2, found)
        np.testing.assert_array_equal(result.labels > 0, known | found)
        np.testing.assert_array_equal(result.liver_mask, known)
    with pytest.raises(ValueError, match="tumour_scope"):
        Cascade(_Oracle(0.3), _Oracle(0.8), tumour_scope="organ")  # type: ignore[arg-type]
    # a liver mask that holds a sixth of it: dropped at the default share inside (0.5), kept
    # whole with 0 (a touch is enough)
    slim = np.zeros(volume.shape, bool)
    slim[1:5, 10:30, 8:27] = True
    for share, found in ((0.5, np.zeros_like(lesion)), (0.0, lesion)):
        cascade = Cascade(_Oracle(0.3), _Oracle(0.8), tumour_scope="roi", tumour_min_inside=share,
                          **options)  # fmt: skip
        result = cascade.tumour_stage(cascade.liver_stage(volume, mask=slim))
        np.testing.assert_array_equal(result.labels == 2, found)
    assert Cascade(_Oracle(0.3), _Oracle(0.8), **options).tumour_min_inside == 0.5
    with pytest.raises(ValueError, match="tumour_min_inside"):
        Cascade(_Oracle(0.3), _Oracle(0.8), tumour_min_inside=2.0)


def test_cascade_window_comes_from_its_preprocessing() -> None:
    # 150 HU is bright (> 0.3 of the range) in [-100, 400] but saturated to 1 in [-400, 100]
    volume = np.full((2, 16, 16), -1000, dtype=np.int16)
    volume[:, 4:12, 4:12] = 150
    narrow = Preprocessing(hu_window=(-400.0, 100.0), clahe=False)
    cascade = Cascade(_Oracle(0.3), _Oracle(2.0), tumour_size=16, device="cpu",
                      preprocessing=narrow)  # fmt: skip
    liver = cascade.liver_stage(volume)
    assert liver.image_u8[0, 8, 8] == 255 and cascade.preprocessing is narrow
    with pytest.raises(TypeError, match="preprocessing"):
        Cascade(_Oracle(0.3), _Oracle(0.3), preprocessing={"clahe": False})  # type: ignore[arg-type]


def test_tumour_components_below_min_voxels_become_liver() -> None:
    from scipy import ndimage

    volume = make_phantom(5, (16, 64, 64)).volume
    every = threshold_cascade(tumour=0.45)(volume).labels
    sizes = np.bincount(ndimage.label(every == 2, structure=np.ones((3, 3, 3)))[0].ravel())[1:]
    assert len(sizes) > 1  # several components of different sizes: the check can fail
    cut = int(np.sort(sizes)[-1])  # keep only the largest
    kept = threshold_cascade(tumour=0.45, tumour_min_voxels=cut)(volume).labels
    assert (kept == 2).sum() == sizes.max() and ((kept >= 1) == (every >= 1)).all()
    with pytest.raises(ValueError, match="tumour_min_voxels"):
        threshold_cascade(tumour_min_voxels=-1)


def test_tumour_surface_drops_the_components_on_the_liver_surface_last() -> None:
    from featsup.postprocess import drop_surface_tumours

    volume = make_phantom(5, (16, 64, 64)).volume
    every = threshold_cascade(tumour=0.45)(volume).labels
    dropped = drop_surface_tumours(every, 1, 0.5)
    assert (dropped == 2).sum() < (every == 2).sum()  # the check can fail: some go, not all
    assert (dropped == 2).any()
    assert np.array_equal(threshold_cascade(tumour=0.45, tumour_surface=(1, 0.5))(volume).labels,
                          dropped)  # fmt: skip
    assert threshold_cascade(tumour_surface=[2, 0.9]).tumour_surface == (2, 0.9)  # a file's list
    for wrong in ((0, 0.9), (1, 0.0), (1.5, 0.9)):
        with pytest.raises(ValueError, match="tumour_surface"):
            threshold_cascade(tumour_surface=wrong)


def test_tumour_threshold_labels_only_the_more_probable_voxels() -> None:
    volume = make_phantom(5, (16, 64, 64)).volume
    argmax = threshold_cascade(tumour=0.45)(volume)
    strict = threshold_cascade(tumour=0.45, tumour_threshold=0.9)(volume)
    np.testing.assert_array_equal(strict.tumour_probability, argmax.tumour_probability)
    inside = argmax.labels > 0
    assert ((argmax.labels == 2) == (inside & (argmax.tumour_probability > 0.5))).all()
    assert ((strict.labels == 2) == (inside & (strict.tumour_probability > 0.9))).all()
    assert 0 < (strict.labels == 2).sum() < (argmax.labels == 2).sum()  # the check can fail
    assert ((strict.labels > 0) == inside).all()
    with pytest.raises(ValueError, match="tumour_threshold"):
        threshold_cascade(tumour_threshold=1.5)


class _CentreSpy(_Oracle):
    """An :class:`_Oracle` on the centre input channel that records the channels it got."""

    def __init__(self, threshold: float) -> None:
        super().__init__(threshold)
        self.channels: set[int] = set()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.channels.add(image.shape[1])
        centre = image.shape[1] // 2
        return super().forward(image[:, centre : centre + 1])


def test_tumour_context_gives_only_the_tumour_model_neighbouring_slices() -> None:
    volume = np.full((6, 48, 40), -500, dtype=np.int16)
    volume[1:5, 10:30, 8:32] = 60
    volume[2:4, 15:20, 12:18] = 200
    options = {"tumour_size": 32, "roi_margin": 2, "device": "cpu",
               "preprocessing": Preprocessing(clahe=False)}  # fmt: skip
    flat = Cascade(_CentreSpy(0.3), _CentreSpy(0.8), **options)(volume)
    liver, tumour = _CentreSpy(0.3), _CentreSpy(0.8)
    cascade = Cascade(liver, tumour, tumour_context=1, **options)
    assert (cascade.context, cascade.tumour_context) == (0, 1)
    np.testing.assert_array_equal(cascade(volume).labels, flat.labels)  # the centre decides
    assert (liver.channels, tumour.channels) == ({1}, {3})
    assert Cascade(liver, tumour, context=2, device="cpu").tumour_context == 2  # None: context's
    with pytest.raises(ValueError, match="tumour_context"):
        Cascade(liver, tumour, tumour_context=-1, device="cpu")


def _tumour_volume() -> np.ndarray:
    hu = np.random.default_rng(11).integers(-60, 60, (5, 48, 48)).astype(np.int16)
    hu[:, 10:38, 8:40] += 150  # a bright "liver" for the untrained nets to find
    return hu


@pytest.mark.parametrize("crf", [None, {"backend": "torch", "iterations": 2}])
def test_stages_of_several_heads_equal_each_head_alone(
    model: UNetPlusPlus, crf: dict | None
) -> None:
    cascade = Cascade(model, model, liver_size=32, tumour_size=32, device="cpu", liver_crf=crf,
                      tumour_crf=crf, tumour_threshold=0.4, tumour_scope="roi")  # fmt: skip
    hu = _tumour_volume()
    livers = cascade.liver_stages(hu, [2, 1, None])
    assert livers[0].image is livers[1].image  # one preprocessing for every head
    for stage, head in zip(livers, (2, 1, 2), strict=True):
        alone = cascade.liver_stage(hu, head=head)
        np.testing.assert_allclose(stage.probability, alone.probability, atol=1e-6)
        np.testing.assert_array_equal(stage.mask, alone.mask)
    liver = livers[1]
    assert liver.mask.any()
    results = cascade.tumour_stages(liver, [1, 2])
    for result, head in zip(results, (1, 2), strict=True):
        alone = cascade.tumour_stage(liver, head=head)
        np.testing.assert_allclose(result.tumour_probability, alone.tumour_probability, atol=1e-6)
        np.testing.assert_array_equal(result.labels, alone.labels)
    with pytest.raises(ValueError, match="heads"):
        cascade.liver_stages(hu, [])
    with pytest.raises(ValueError, match="heads"):
        cascade.tumour_stages(liver, [])


@pytest.mark.parametrize("heads", [[2], [1, 2]])  # a pruned head, and every head from one pass
def test_tumour_tta_flips_only_the_tumour_stage(model: UNetPlusPlus, heads: list[int]) -> None:
    hu = _tumour_volume()
    options = {"liver_size": 32, "tumour_size": 32, "device": "cpu", "tumour_scope": "roi"}
    plain, both = Cascade(model, model, **options), Cascade(model, model, tta=True, **options)
    tumour_only = Cascade(model, model, tumour_tta="flips", **options)
    every = Cascade(model, model, tta="flips", **options)
    assert (plain.tumour_tta, both.tumour_tta, every.tumour_tta) == (False, True, "flips")
    liver = tumour_only.liver_stage(hu, head=1)  # the liver stage is not mirrored
    np.testing.assert_array_equal(liver.probability, plain.liver_stage(hu, head=1).probability)
    assert np.abs(liver.probability - both.liver_stage(hu, head=1).probability).max() > 1e-4
    assert liver.mask.any()
    flipped = tumour_only.tumour_stages(liver, heads)[-1].tumour_probability
    np.testing.assert_allclose(flipped, every.tumour_stages(liver, heads)[-1].tumour_probability,
                               atol=1e-6)  # fmt: skip
    unflipped = plain.tumour_stages(liver, heads)[-1].tumour_probability
    assert np.abs(flipped - unflipped).max() > 1e-4
    with pytest.raises(ValueError, match="tumour_tta"):
        Cascade(model, model, tumour_tta="lr", device="cpu")  # type: ignore[arg-type]


def test_liver_crf_on_its_box_agrees_with_the_crf_of_the_whole_slices() -> None:
    from featsup.inference import liver_crf
    from featsup.postprocess import dense_crf

    volume, labels = make_phantom(3, (8, 96, 96))[:2]
    liver = (labels > 0).astype(np.float32)
    noise = np.random.default_rng(4).normal(0, 0.25, liver.shape).astype(np.float32)
    blurred = np.clip(0.15 + 0.7 * liver + noise, 0, 1)  # a noisy, uncertain liver map
    image = np.clip((volume + 100) / 500 * 255, 0, 255).astype(np.uint8)
    options = {"backend": "torch", "theta_alpha": 5.0, "theta_beta": 10.0, "w1": 30.0,
               "w2": 0.0, "iterations": 5}  # fmt: skip
    whole = dense_crf(np.stack([1 - blurred, blurred]), image, mode="2d", **options)[1]
    boxed = liver_crf(blurred, image, options)
    assert np.mean((whole > 0.5) != (boxed > 0.5)) < 0.002
    assert dice_score(boxed > 0.5, labels > 0) > dice_score(blurred > 0.5, labels > 0)
    far = np.zeros_like(blurred)  # nothing to refine: returned as it is, a copy
    far[:, :4, :4] = 0.01
    out = liver_crf(far, image, options)
    np.testing.assert_array_equal(out, far)
    assert out is not far


class _ThreeClass(torch.nn.Module):
    """A 'model' of three classes (background, liver, tumour) by the input's brightness."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image[:, :1]
        return torch.cat([20 * (0.3 - x), 20 * (x - 0.3) - 30 * (x > 0.8), 20 * (x - 0.8)], 1)


def test_a_three_class_liver_model_gives_the_liver_as_one_minus_background() -> None:
    pytest.importorskip("cv2")
    volume = np.full((4, 32, 32), -500, dtype=np.int16)
    volume[1:3, 8:24, 8:24] = 60  # liver
    volume[1:3, 12:16, 12:16] = 400  # a lesion the three-class model calls tumour
    kwargs = {"tumour_size": 16, "device": "cpu", "preprocessing": Preprocessing(clahe=False)}
    three = Cascade(_ThreeClass(), _Oracle(0.8), liver_classes=[1, 2], **kwargs)
    liver_only = Cascade(_ThreeClass(), _Oracle(0.8), **kwargs)  # class 1 alone
    both, one = three.liver_stage(volume), liver_only.liver_stage(volume)
    image = three._liver_input(volume)[0]
    every = predict_volume(_ThreeClass(), image, device="cpu")  # (3, D, H, W)
    np.testing.assert_allclose(both.probability, 1 - every[0], atol=1e-5)
    assert both.mask[1:3, 12:16, 12:16].all()  # the lesion is inside the liver
    assert not one.mask[1:3, 12:16, 12:16].any()  # with class 1 alone it is a hole
    assert three(volume).labels[1:3, 12:16, 12:16].min() == 2
    assert three.liver_classes == (1, 2) and liver_only.liver_classes == (1,)
    for bad in ([], [0, 1], [1, 1]):
        with pytest.raises(ValueError, match="liver_classes"):
            Cascade(_ThreeClass(), _Oracle(0.8), liver_classes=bad, **kwargs)


def test_mean_heads_are_every_heads_mean_from_one_pass_or_alone(model: UNetPlusPlus) -> None:
    hu = np.random.default_rng(11).integers(-200, 300, (3, 32, 32)).astype(np.int16)
    hu[:, 6:26, 6:26] = 60
    hu[1, 12:16, 12:16] = 0  # a dark spot inside
    options = {"liver_size": 32, "tumour_size": 32, "device": "cpu", "tumour_threshold": 0.4}
    cascade = Cascade(model, model, **options)
    known = np.pad(np.ones((3, 22, 22), bool), ((0, 0), (5, 5), (5, 5)))
    liver = cascade.liver_stage(hu, mask=known)
    one, two, mean = cascade.tumour_stages(liver, [1, 2, "mean"])  # one pass of the network
    assert not np.allclose(one.tumour_probability, two.tumour_probability)  # heads differ
    np.testing.assert_allclose(
        mean.tumour_probability, (one.tumour_probability + two.tumour_probability) / 2, atol=1e-6
    )
    alone = Cascade(model, model, tumour_head="mean", **options)  # the mean-head model alone
    np.testing.assert_allclose(
        alone.tumour_stage(liver).tumour_probability, mean.tumour_probability, atol=1e-5
    )
    assert alone.tumour_stage(liver).labels.shape == hu.shape
    livers = cascade.liver_stages(hu, [1, 2, "mean"])
    np.testing.assert_allclose(
        livers[2].probability, (livers[0].probability + livers[1].probability) / 2, atol=1e-6
    )
    mean_liver = Cascade(model, model, liver_head="mean", **options).liver_stage(hu)
    np.testing.assert_allclose(mean_liver.probability, livers[2].probability, atol=1e-5)
    for bad in ({"tumour_head": "all"}, {"liver_head": 0}):
        with pytest.raises(ValueError, match=r"_head: expected a head 1\.\.d"):
            Cascade(model, model, **options, **bad)
    with pytest.raises(ValueError, match=r"heads: expected a head 1\.\.d"):
        cascade.tumour_stages(liver, [1, "best"])
