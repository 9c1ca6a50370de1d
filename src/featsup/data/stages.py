"""The datasets of a cascade stage, as featsup's example and benchmarks train them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

from featsup._checks import check_choice
from featsup.data.augment import SliceAugment
from featsup.data.lits import LitsCase
from featsup.data.patches import TumourPatchDataset
from featsup.data.preprocess import Preprocessing
from featsup.data.slices import LiverSliceDataset, TumourSliceDataset

__all__ = ["STAGE_EMPTY_FRACTION", "stage_datasets"]

#: Share of slices without foreground drawn into each stage's training set.
STAGE_EMPTY_FRACTION = {"liver": 0.2, "tumour": 0.3}


def stage_datasets(
    stage: Literal["liver", "tumour"],
    train_cases: Sequence[LitsCase],
    val_cases: Sequence[LitsCase],
    *,
    size: int,
    context: int = 0,
    seed: int = 0,
    mask_dilation: int = 0,
    mask_outside: bool = True,
    empty_fraction: float | None = None,
    val_empty_fraction: float | None = None,
    patch: Sequence[int] | None = None,
    patches_per_case: int = 16,
    preprocessing: Preprocessing | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    augment: SliceAugment | None = None,
    lesion_weight: float | None = None,
    lesion_balance: float = 0.0,
    contrast_balance: float = 0.0,
    crop: int | None = None,
    crop_lesion: float = 0.5,
    classes: Literal["liver", "all"] = "liver",
    darkness: tuple[float, float] | None = None,
) -> tuple[Any, Any]:
    """Training and validation datasets of one cascade stage.

    - liver: whole slices, ``size`` x ``size``, augmented without left-right flips (the
      side of the body the liver is on is a cue), ``empty_fraction`` of them liver-free;
    - tumour: liver-ROI crops, ``size`` x ``size``, augmented with flips,
      ``empty_fraction`` of them tumour-free; the training liver masks are grown
      by a random 0..``mask_dilation`` pixels and hole-filled (the predicted mask the
      tumour model sees at test time holds a rim of neighbouring tissue);
    - tumour with ``patch`` (a 3D tumour stage): :class:`TumourPatchDataset` patches of
      the liver box (8 pixels of in-plane margin), half of them centred on tumour,
      flipped in-plane, ``patches_per_case`` per training case and 8 per validation case
      (``size`` and the empty fractions unused).

    Args:
        stage: ``"liver"`` or ``"tumour"``.
        train_cases: the training cases.
        val_cases: the validation cases.
        size: in-plane size of every item.
        context: 2D stages only: neighbouring slices on each side as extra channels
            (2.5D; items have ``2 * context + 1`` channels).
        seed: augmentation and sampling seed of the training set.
        mask_dilation: tumour stage only: largest growth of the training liver masks.
        mask_outside: tumour stage only: zero the image outside the liver (paper 4.1.3);
            False serves the whole ROI box, for a cascade with ``tumour_scope="roi"``.
        empty_fraction: the training set's share of slices without the stage's
            foreground; None takes ``STAGE_EMPTY_FRACTION[stage]``.
        val_empty_fraction: the validation set's share of empty slices; None keeps every
            slice.
        patch: (D, H, W) for 3D tumour patches instead of slices.
        patches_per_case: with ``patch``, training patches per case and epoch.
        preprocessing: HU window, CLAHE and normalisation (None: the paper's).
        cache_dir: where the preprocessed volumes are cached.
        augment: 2D stages only: the training slices' augmentation instead of the stage's
            own (above), for example ``SliceAugment(lesion_reversal_p=0.3)``.
        lesion_weight: liver stage only: the Dice weight of tumour pixels in the
            training items (``LiverSliceDataset(lesion_weight=)``); None weighs every
            pixel alike (the paper). Validation items carry no weight.
        lesion_balance: 2D tumour stage only: how evenly the training slices serve the
            lesions (``TumourSliceDataset(lesion_balance=)``: 0 each slice once, 1 each
            lesion equally often). Validation serves every slice.
        contrast_balance: 2D tumour stage only: how evenly the training slices serve
            dark, near-isodense and bright lesions (``TumourSliceDataset(contrast_balance=)``:
            0 as they come, 1 each class present equally often).
        crop: 2D tumour stage only: train on random ``crop`` x ``crop`` windows of the
            slices, ``crop_lesion`` of them centred on tumour
            (``TumourSliceDataset(crop=, crop_lesion=)``); validation serves whole slices.
        crop_lesion: see ``crop``.
        darkness: 2D tumour stage only: (local, background) sigmas in pixels of a
            darkness channel added to its training and validation slices
            (``TumourSliceDataset(darkness=)``); None adds none.
        classes: liver stage only: ``"liver"`` (targets 0 background, 1 liver or lesion)
            or ``"all"`` (0 background, 1 liver, 2 tumour; no ``lesion_weight``), for a
            three-class liver model (``LiverSliceDataset(classes=)``).

    Returns:
        ``(train, val)``; items ``{"image": (2 * context + 1, size, size),
        "target": (size, size)}``, or ``(1, D, H, W)`` and ``(D, H, W)`` with ``patch``.

    Example:
        >>> import tempfile
        >>> from featsup.data import find_cases, write_phantom_dataset
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_phantom_dataset(folder, 2, shape=(12, 64, 64))
        >>> first, second = find_cases(folder)
        >>> train, val = stage_datasets("liver", [first], [second], size=32)
        >>> tuple(train[0]["image"].shape), train.augment.flip_p
        ((1, 32, 32), 0.0)
    """
    check_choice("stage", stage, ("liver", "tumour"))
    if augment is not None and patch is not None:
        raise ValueError("augment: expected None with patch (3D patches flip in-plane only)")
    if lesion_weight is not None and stage != "liver":
        raise ValueError(
            f"lesion_weight: expected None for the {stage} stage (it weighs the liver "
            f"stage's tumour pixels), got {lesion_weight}"
        )
    if classes != "liver" and stage != "liver":
        raise ValueError(
            f"classes: expected 'liver' for the {stage} stage (it picks the liver stage's "
            f"targets), got {classes!r}"
        )
    only_2d_tumour = (  # (name, value, its off value, what it does)
        ("lesion_balance", lesion_balance, 0, "balances the 2D tumour stage's lesions"),
        ("contrast_balance", contrast_balance, 0, "balances the 2D tumour stage's lesions"),
        ("crop", crop, None, "crops the 2D tumour stage's training slices"),
        ("darkness", darkness, None, "adds a channel to the 2D tumour stage's slices"),
    )
    for name, value, off, what in only_2d_tumour:
        if value != off and (stage != "tumour" or patch is not None):
            raise ValueError(
                f"{name}: expected {off} for the {stage} stage{' in 3D' if patch else ''} "
                f"(it {what}), got {value}"
            )
    empty = STAGE_EMPTY_FRACTION[stage] if empty_fraction is None else empty_fraction
    if patch is not None:
        if stage != "tumour":
            raise ValueError(f"patch: expected None for the {stage} stage (it is 2D), got {patch}")
        if context:
            raise ValueError(f"context: expected 0 with patch (3D patches), got {context}")
        patches: dict[str, Any] = {
            "patch": patch, "margin": (0, 8, 8), "tumour_fraction": 0.5,
            "cache_dir": cache_dir, "preprocessing": preprocessing,
        }  # fmt: skip
        train_patches = TumourPatchDataset(
            list(train_cases), patches_per_case=patches_per_case, flip_axes=(1, 2),
            mask_dilation=mask_dilation, seed=seed, mask_outside=mask_outside, **patches,
        )  # fmt: skip
        val_patches = TumourPatchDataset(
            list(val_cases), patches_per_case=8, mask_outside=mask_outside, **patches
        )
        return train_patches, val_patches
    common: dict[str, Any] = {
        "size": (size, size), "context": context, "cache_dir": cache_dir,
        "preprocessing": preprocessing,
    }  # fmt: skip
    if stage == "liver":
        train = LiverSliceDataset(
            list(train_cases), augment=augment or SliceAugment(flip_p=0.0), seed=seed,
            empty_fraction=empty, lesion_weight=lesion_weight, classes=classes, **common,
        )  # fmt: skip
        return train, LiverSliceDataset(
            list(val_cases), empty_fraction=val_empty_fraction, classes=classes, **common
        )
    tumour = TumourSliceDataset(
        list(train_cases), augment=augment or SliceAugment(), seed=seed,
        empty_fraction=empty, mask_dilation=mask_dilation, mask_outside=mask_outside,
        mask_fill_holes=mask_dilation > 0, lesion_balance=lesion_balance,
        contrast_balance=contrast_balance, crop=crop, crop_lesion=crop_lesion,
        darkness=darkness, **common,
    )  # fmt: skip
    val = TumourSliceDataset(
        list(val_cases), empty_fraction=val_empty_fraction, mask_outside=mask_outside,
        darkness=darkness, **common,
    )  # fmt: skip
    return tumour, val
