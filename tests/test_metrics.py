from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import cdist

from featsup.metrics import (
    MetricAccumulator,
    average_symmetric_surface_distance,
    case_metrics,
    dice_from_counts,
    dice_score,
    maximum_symmetric_surface_distance,
    relative_volume_difference,
    surface_distances,
    volume_overlap_error,
)


def brute_surface_distances(p: np.ndarray, g: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """medpy-style surfaces (erosion, border counts as surface) and pairwise distances."""
    cross = ndimage.generate_binary_structure(p.ndim, 1)
    sp = p & ~ndimage.binary_erosion(p, cross, border_value=0)
    sg = g & ~ndimage.binary_erosion(g, cross, border_value=0)
    cp, cg = np.argwhere(sp) * np.asarray(spacing), np.argwhere(sg) * np.asarray(spacing)
    d = cdist(cp, cg)
    return d.min(1), d.min(0)


def random_blob(rng: np.random.Generator, shape, p: float = 0.5) -> np.ndarray:
    mask = ndimage.binary_opening(rng.random(shape) < p)
    if not mask.any():
        mask[tuple(rng.integers(0, s) for s in shape)] = True
    return mask


# ----------------------------------------------------------------- overlap metrics


def test_overlap_metrics_hand_computed():
    pred = np.array([[1, 1, 1, 0], [0, 0, 0, 0]])
    target = np.array([[0, 1, 1, 1], [1, 0, 0, 0]])
    # |P| = 3, |G| = 4, |P & G| = 2, |P | G| = 5
    assert dice_score(pred, target) == pytest.approx(4 / 7)
    assert volume_overlap_error(pred, target) == pytest.approx(1 - 2 / 5)
    assert relative_volume_difference(pred, target) == pytest.approx(-1 / 4)


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        (np.zeros((3, 3)), np.zeros((3, 3)), (1.0, 0.0, 0.0, 0.0, 0.0)),
        (np.eye(3), np.zeros((3, 3)), (0.0, 1.0, math.inf, math.inf, math.inf)),
        (np.zeros((3, 3)), np.eye(3), (0.0, 1.0, -1.0, math.inf, math.inf)),
    ],
    ids=["both-empty", "target-empty", "pred-empty"],
)
def test_empty_mask_cases(pred, target, expected):
    values = (
        dice_score(pred, target),
        volume_overlap_error(pred, target),
        relative_volume_difference(pred, target),
        average_symmetric_surface_distance(pred, target),
        maximum_symmetric_surface_distance(pred, target),
    )
    assert values == expected
    m = case_metrics(pred, target)
    assert (m["dice"], m["voe"], m["rvd"], m["assd"], m["msd"]) == expected


def test_torch_and_label_inputs():
    pred = torch.tensor([[0, 2, 2], [0, 0, 1]])
    target = torch.tensor([[0, 1, 1], [0, 0, 0]])
    assert dice_score(pred, target) == pytest.approx(
        dice_score(pred.numpy() > 0, target.numpy() > 0)
    )
    assert dice_score(pred == 2, target == 1) == 1.0


# ----------------------------------------------------------------- surface distances


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(2, 7), st.integers(2, 9), st.integers(2, 9)),
    spacing=st.tuples(st.floats(0.3, 5.0), st.floats(0.3, 5.0), st.floats(0.3, 5.0)),
    seed=st.integers(0, 2**16),
)
def test_surface_distances_match_brute_force_anisotropic_3d(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    p, g = random_blob(rng, shape), random_blob(rng, shape)
    ref_pg, ref_gp = brute_surface_distances(p, g, spacing)
    pg, gp = surface_distances(p, g, spacing=spacing)
    np.testing.assert_allclose(np.sort(pg), np.sort(ref_pg), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.sort(gp), np.sort(ref_gp), rtol=1e-10, atol=1e-10)
    assd = (ref_pg.sum() + ref_gp.sum()) / (ref_pg.size + ref_gp.size)
    msd = max(ref_pg.max(), ref_gp.max())
    assert average_symmetric_surface_distance(p, g, spacing=spacing) == pytest.approx(assd)
    assert maximum_symmetric_surface_distance(p, g, spacing=spacing) == pytest.approx(msd)


def test_crop_is_exact_for_small_masks_in_a_large_volume_and_at_borders():
    rng = np.random.default_rng(3)
    p, g = np.zeros((40, 50, 60), bool), np.zeros((40, 50, 60), bool)
    p[10:16, 20:27, 0:5] = random_blob(rng, (6, 7, 5), 0.8)  # touches the x = 0 border
    g[12:19, 22:30, 1:7] = random_blob(rng, (7, 8, 6), 0.8)
    spacing = (2.0, 0.7, 0.9)
    cross = ndimage.generate_binary_structure(3, 1)
    sp = p & ~ndimage.binary_erosion(p, cross)
    sg = g & ~ndimage.binary_erosion(g, cross)
    full_pg = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    full_gp = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
    pg, gp = surface_distances(p, g, spacing=spacing)
    np.testing.assert_array_equal(pg, full_pg)
    np.testing.assert_array_equal(gp, full_gp)


def test_surface_distance_hand_computed_2d():
    p, g = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    p[1, 1] = True
    g[4, 1] = True
    # one voxel each, 3 rows apart with a 1.5 mm row spacing
    assert average_symmetric_surface_distance(p, g, spacing=(1.5, 1.0)) == pytest.approx(4.5)
    assert maximum_symmetric_surface_distance(p, g, spacing=(1.5, 1.0)) == pytest.approx(4.5)
    assert average_symmetric_surface_distance(p, p) == 0.0


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_metrics_match_monai_hausdorff_on_identical_surface_definition():
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(5)
    p, g = random_blob(rng, (12, 14, 10), 0.6), random_blob(rng, (12, 14, 10), 0.6)
    p[0], g[0] = False, False  # keep the surfaces away from the border, where conventions differ
    p[-1], g[-1] = False, False
    p[:, 0], g[:, 0], p[:, -1], g[:, -1] = False, False, False, False
    p[:, :, 0], g[:, :, 0], p[:, :, -1], g[:, :, -1] = False, False, False, False
    ref = monai_metrics.compute_hausdorff_distance(
        torch.from_numpy(p)[None, None], torch.from_numpy(g)[None, None], spacing=(1.0, 2.0, 0.5)
    )
    assert maximum_symmetric_surface_distance(p, g, spacing=(1.0, 2.0, 0.5)) == pytest.approx(
        float(ref), rel=1e-5
    )


# ----------------------------------------------------------------- accumulator


def test_dice_per_case_vs_global_hand_computed():
    acc = MetricAccumulator(surface=False)
    # case A: small object, perfect -> Dice 1; |P| = |G| = 2, I = 2
    acc.update(np.array([1, 1, 0, 0, 0, 0]), np.array([1, 1, 0, 0, 0, 0]), case_id="A")
    # case B: large object, half found -> |P| = 2, |G| = 4, I = 2, Dice = 4/6
    acc.update(np.array([1, 1, 0, 0, 0, 0]), np.array([1, 1, 1, 1, 0, 0]), case_id="B")
    summary = acc.compute()
    assert summary["dice_per_case"] == pytest.approx((1.0 + 4 / 6) / 2)
    # global: 2 * (2 + 2) / ((2 + 2) + (2 + 4)) = 0.8
    assert summary["dice_global"] == pytest.approx(0.8)
    assert summary["voe"] == pytest.approx((0.0 + 0.5) / 2)
    assert summary["rvd"] == pytest.approx((0.0 - 0.5) / 2)
    assert summary["cases"] == 2 and "assd" not in summary
    assert [c["case"] for c in acc.cases] == ["A", "B"]


def test_accumulator_surface_merge_reset_and_memory():
    rng = np.random.default_rng(0)
    cases = [(random_blob(rng, (6, 8, 8)), random_blob(rng, (6, 8, 8))) for _ in range(4)]
    spacing = (2.0, 0.8, 0.8)
    whole = MetricAccumulator()
    first, second = MetricAccumulator(), MetricAccumulator()
    for i, (p, g) in enumerate(cases):
        record = whole.update(torch.from_numpy(p), g, spacing=spacing)
        (first if i < 2 else second).update(p, g, spacing=spacing)
        assert record["assd"] == pytest.approx(
            average_symmetric_surface_distance(p, g, spacing=spacing)
        )
    merged = first.merge(second).compute()
    assert merged == pytest.approx(whole.compute())
    assert merged["msd"] == pytest.approx(
        np.mean([maximum_symmetric_surface_distance(p, g, spacing=spacing) for p, g in cases])
    )
    # only numbers are kept: the pickled state is tiny compared with one volume
    assert len(pickle.dumps(whole)) < 4096
    whole.reset()
    assert len(whole) == 0
    with pytest.raises(ValueError, match="at least one case"):
        whole.compute()


def test_accumulator_keeps_inf_visible():
    acc = MetricAccumulator()
    acc.update(np.ones((3, 3)), np.ones((3, 3)))
    acc.update(np.zeros((3, 3)), np.eye(3))
    summary = acc.compute()
    assert summary["dice_per_case"] == 0.5 and math.isinf(summary["assd"])


def test_errors():
    with pytest.raises(ValueError, match="same shape"):
        dice_score(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(np.zeros((2, 2)), np.zeros((2, 2)), spacing=(1.0,))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(np.zeros((2, 2)), np.zeros((2, 2)), spacing=(1.0, -1.0))
    with pytest.raises(TypeError, match="pred"):
        dice_score([1, 0], np.zeros(2))
    with pytest.raises(TypeError, match="MetricAccumulator"):
        MetricAccumulator().merge(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="surface"):
        MetricAccumulator().merge(MetricAccumulator(surface=False))


def test_bounding_box_numpy_torch_margin_and_empty():
    from featsup.metrics import bounding_box

    m = np.zeros((4, 6, 5), np.uint8)
    m[1:3, 2, 1:4] = 2
    assert bounding_box(m) == (slice(1, 3), slice(2, 3), slice(1, 4))
    assert bounding_box(m, margin=(0, 1, 9)) == (slice(1, 3), slice(1, 4), slice(0, 5))
    assert bounding_box(torch.from_numpy(m)) == bounding_box(m)
    assert bounding_box(np.zeros((3, 3))) is None
    with pytest.raises(ValueError, match="margin"):
        bounding_box(m, margin=(1, 1))


def test_bounding_box_at_the_old_call_sites():
    from featsup.data import _cache, find_roi
    from featsup.metrics import bounding_box

    m = np.zeros((5, 9, 9), bool)
    m[1, 2:4, 3] = m[3, 6, 7] = True
    assert find_roi(m, margin=(1, 2, 2)).bbox == ((0, 5), (0, 9), (1, 9))
    assert find_roi(np.zeros_like(m), if_empty="full").bbox == ((0, 5), (0, 9), (0, 9))
    assert _cache._bbox(m) == ((1, 4), (2, 7), (3, 8))
    assert _cache._bbox(np.zeros_like(m)) is None
    box = bounding_box(m | np.roll(m, 1, axis=2), margin=1)  # surface distances' crop
    assert box == (slice(0, 5), slice(1, 8), slice(2, 9))


def test_boundary_is_public_and_drives_the_weight_map():
    from featsup.losses import boundary_weight_map
    from featsup.metrics import boundary

    square = np.zeros((7, 7), bool)
    square[2:5, 2:5] = True
    ring = boundary(square, outside=False)
    assert ring.sum() == 8 and not ring[3, 3]
    weights = boundary_weight_map(square, backend="scipy")
    assert weights[3, 3] < weights[2, 2]  # inner boundary: the weight map's maximum


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_lits_metrics_score_liver_as_label_ge_1_and_tumour_as_label_2(seed: int) -> None:
    from featsup.metrics import LitsMetrics

    rng = np.random.default_rng(seed)
    scores, accs = LitsMetrics(surface=False), [MetricAccumulator(surface=False) for _ in "lt"]
    for case in range(3):
        pred, truth = rng.integers(0, 3, (2, 4, 5, 6))
        record = scores.update(pred, truth, case_id=f"c{case}")
        assert record["case"] == f"c{case}"
        for acc, stage, label in zip(accs, ("liver", "tumour"), (1, 2), strict=True):
            expected = acc.update(pred >= label, truth >= label, case_id=f"c{case}")
            assert record[stage] == expected
    summary = scores.compute()
    assert summary["liver"] == accs[0].compute(ignore_undefined=True)
    assert summary["tumour"] == accs[1].compute(ignore_undefined=True)
    assert len(scores) == 3
    with pytest.raises(ValueError, match="shape"):
        scores.update(pred[:1], truth)


@given(st.lists(st.booleans(), min_size=1, max_size=40), st.integers(0, 2**31 - 1))
def test_dice_from_counts_matches_dice_score(bits, seed) -> None:
    pred = np.array(bits)
    target = np.random.default_rng(seed).random(pred.size) < 0.5
    counts = (int((pred & target).sum()), int(pred.sum()), int(target.sum()))
    assert dice_from_counts(*counts) == pytest.approx(dice_score(pred, target))


def test_dice_from_counts_refuses_impossible_counts() -> None:
    for bad in ((-1, 0, 0), (3, 2, 5), (1, 4, 0)):
        with pytest.raises(ValueError, match="overlap"):
            dice_from_counts(*bad)
