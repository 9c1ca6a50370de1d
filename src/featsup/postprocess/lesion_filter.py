"""A learned filter of predicted tumour components (false-positive reduction).

At its threshold the cascade's tumour model leaves many components that touch no lesion:
on the phantom's held-out cases about four in five, most of them small. The smallest
tumour kept (:func:`~featsup.postprocess.drop_small_tumours`) clears them only with
the small lesions beside them, which set the tumour Dice per case. This module scores each
component instead, with a small CNN that sees

- a patch of the tumour model's input image and of its tumour probability, three slices
  deep (the component's most probable voxel's slice and its neighbours), ``PATCH`` x
  ``PATCH`` pixels around that voxel: ``(6, PATCH, PATCH)``;
- six numbers (:data:`FEATURES`): the component's log size, its peak and mean
  probability, its extent in slices, and its mean image value and spread against the
  liver around it;

and drops the components it scores below a keep threshold (chosen on validation, as
the smallest tumour is). It is trained on the components the cascade itself leaves on
training cases (:func:`featsup.inference.train_lesion_filter`), labelled by whether they
touch a reference tumour, so it learns the model's own false positives, as the
false-positive reduction stage of a nodule detector does.

Example:
    >>> rng = np.random.default_rng(0)
    >>> patches = rng.random((40, 6, PATCH, PATCH), dtype=np.float32)
    >>> features = rng.random((40, len(FEATURES)), dtype=np.float32)
    >>> targets = np.arange(40) % 2 == 0
    >>> features[targets, 1] += 2.0  # true components: a higher peak probability
    >>> lesion_filter, info = fit_lesion_filter(patches, features, targets, steps=30)
    >>> scores = lesion_filter.score(patches, features)
    >>> scores.shape, bool(scores[targets].mean() > scores[~targets].mean())
    ((40,), True)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from featsup._checks import check_in_range, check_positive

__all__ = [
    "FEATURES",
    "PATCH",
    "TUMOUR_FILTER_KEEP",
    "TUMOUR_FILTER_KEEPS",
    "LesionFilter",
    "component_inputs",
    "drop_unlikely_tumours",
    "fit_lesion_filter",
    "score_tumours",
    "tumour_components",
]

PATCH = 32
"""In-plane size (pixels) of a component's patch."""

FEATURES = ("log_voxels", "peak_probability", "mean_probability", "slices", "contrast", "spread")
"""The numbers each component is described by besides its patch, in this order."""

TUMOUR_FILTER_KEEP = 0.9
"""The smallest score a component keeps, by default: 0.9 with the tumour threshold 0.2 since
rule AO on held-out phantom cases (0.8 before it, chosen on validation-type cases where five
validation cases tie across keeps; docs/cascade.md)."""

TUMOUR_FILTER_KEEPS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9)
"""Candidate keep thresholds :func:`~featsup.inference.tune_on_validation` tries (0 keeps
every component)."""

_CUBE = np.ones((3, 3, 3), bool)


def tumour_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected tumour (label 2) components of a (D, H, W) label volume, and their count.

    Example:
        >>> labels = np.zeros((1, 4, 4), np.uint8)
        >>> labels[0, 0, 0], labels[0, 3, 3] = 2, 2
        >>> tumour_components(labels)[1]
        2
    """
    if np.ndim(labels) != 3:
        raise ValueError(f"labels: expected (D, H, W), got shape {np.shape(labels)}")
    components, count = ndimage.label(np.asarray(labels) == 2, structure=_CUBE)
    return components, int(count)


def component_inputs(
    image: np.ndarray,
    probability: np.ndarray,
    components: np.ndarray,
    count: int,
    liver_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """What :class:`LesionFilter` sees of components ``1..count``.

    Args:
        image: (D, H, W) float tumour-model input (the cascade's ``LiverStage.image``).
        probability: (D, H, W) tumour probability.
        components: (D, H, W) int component labels (0: none), as :func:`tumour_components`.
        count: the number of components.
        liver_mask: (D, H, W) bool liver mask; the contrast is taken against its voxels
            outside every component (None: every voxel outside them).

    Returns:
        ``(patches, features)``: float32 (count, 6, PATCH, PATCH) (three image slices,
        then the same three of the probability, around each component's most probable
        voxel; the volume's edge repeated beyond it) and float32 (count, 6) in the order of
        :data:`FEATURES`.

    Raises:
        ValueError: if the arrays are not 3D of one shape.

    Example:
        >>> image = np.zeros((3, 40, 40), np.float32)
        >>> prob = np.zeros_like(image)
        >>> prob[1, 10:13, 10:13] = 0.9
        >>> components, count = tumour_components(np.where(prob > 0.5, 2, 1))
        >>> patches, features = component_inputs(image, prob, components, count)
        >>> patches.shape, [round(float(v), 2) for v in features[0, :4]]
        ((1, 6, 32, 32), [2.2, 0.9, 0.9, 1.0])
    """
    shape = np.shape(image)
    arrays = {"probability": probability, "components": components}
    if liver_mask is not None:
        arrays["liver_mask"] = liver_mask
    if len(shape) != 3 or any(np.shape(a) != shape for a in arrays.values()):
        found = {"image": shape, **{k: np.shape(a) for k, a in arrays.items()}}
        raise ValueError(
            f"image, probability, components, liver_mask: expected one (D, H, W) shape, got {found}"
        )
    patches = np.zeros((count, 6, PATCH, PATCH), np.float32)
    features = np.zeros((count, len(FEATURES)), np.float32)
    if count == 0:
        return patches, features
    image = np.asarray(image, dtype=np.float32)
    probability = np.asarray(probability, dtype=np.float32)
    around = components == 0
    if liver_mask is not None:
        around &= np.asarray(liver_mask, dtype=bool)
    reference = float(np.median(image[around])) if around.any() else 0.0
    half = PATCH // 2
    pad = ((1, 1), (half, half), (half, half))
    padded = (np.pad(image, pad, mode="edge"), np.pad(probability, pad, mode="edge"))
    for k, box in enumerate(ndimage.find_objects(components)[:count]):
        if box is None:  # a label with no voxel
            continue
        inside = components[box] == k + 1
        p, values = probability[box], image[box][inside]
        z, y, x = np.unravel_index(np.argmax(np.where(inside, p, -1.0)), inside.shape)
        z, y, x = z + box[0].start, y + box[1].start, x + box[2].start  # padded: + (1, h, h)
        for c, volume in enumerate(padded):
            patches[k, 3 * c : 3 * c + 3] = volume[z : z + 3, y : y + PATCH, x : x + PATCH]
        features[k] = (
            np.log(inside.sum()),
            p[inside].max(),
            p[inside].mean(),
            box[0].stop - box[0].start,
            values.mean() - reference,
            values.std(),
        )
    return patches, features


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class LesionFilter(nn.Module):
    """A small CNN that scores tumour components: is this one a lesion?

    Three conv blocks (``width``, 2x, 4x channels; two 2x2 max-pools), a global average,
    then with the standardised :data:`FEATURES` two linear layers to one logit.

    Args:
        width: channels of the first block.

    Shapes:
        ``forward(patches (N, 6, PATCH, PATCH), features (N, 6))`` -> logits (N,).

    Example:
        >>> net = LesionFilter(width=4)
        >>> net(torch.zeros(2, 6, PATCH, PATCH), torch.zeros(2, 6)).shape
        torch.Size([2])
    """

    feature_mean: torch.Tensor
    feature_scale: torch.Tensor

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        check_positive("width", width)
        self.config = {"width": int(width)}
        w = int(width)
        self.body = nn.Sequential(
            _block(6, w),
            nn.MaxPool2d(2),
            _block(w, 2 * w),
            nn.MaxPool2d(2),
            _block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(4 * w + len(FEATURES), 2 * w), nn.ReLU(inplace=True), nn.Linear(2 * w, 1)
        )
        self.register_buffer("feature_mean", torch.zeros(len(FEATURES)))
        self.register_buffer("feature_scale", torch.ones(len(FEATURES)))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LesionFilter:
        """Rebuild from :attr:`config` (what a cascade file stores)."""
        return cls(**config)

    def forward(self, patches: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """(N,) logits of (N, 6, H, W) patches and (N, 6) raw features."""
        if patches.ndim != 4 or patches.shape[1] != 6 or features.shape != (len(patches), 6):
            raise ValueError(
                f"patches, features: expected (N, 6, H, W) and (N, 6), got "
                f"{tuple(patches.shape)} and {tuple(features.shape)}"
            )
        f = (features - self.feature_mean) / self.feature_scale
        return self.head(torch.cat([self.body(patches), f], 1)).squeeze(1)

    @torch.no_grad()
    def score(self, patches: np.ndarray, features: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N,) float32 probabilities that each component is a lesion.

        Each is the mean over the patch's eight in-plane rotations and mirror images. The
        model is put in eval mode.
        """
        self.eval()
        device = self.feature_mean.device
        out = np.zeros(len(patches), np.float32)
        for start in range(0, len(patches), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(patches[start : start + batch_size])).to(
                device
            )
            f = torch.from_numpy(np.ascontiguousarray(features[start : start + batch_size])).to(
                device
            )
            views = [torch.rot90(v, k, (-2, -1)) for v in (x, x.flip(-1)) for k in range(4)]
            probs = torch.stack([torch.sigmoid(self(v, f)) for v in views]).mean(0)
            out[start : start + len(x)] = probs.float().cpu().numpy()
        return out


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One of the patch's eight in-plane views, and its slices reversed half the time."""
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(-1)
    x = torch.rot90(x, int(torch.randint(4, (1,), generator=g)), (-2, -1))
    if torch.rand(1, generator=g).item() < 0.5:
        x = x[:, [2, 1, 0, 5, 4, 3]]
    return x


def fit_lesion_filter(
    patches: np.ndarray,
    features: np.ndarray,
    targets: np.ndarray,
    *,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 3e-3,
    width: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[LesionFilter, dict[str, Any]]:
    """Train a :class:`LesionFilter` on labelled components.

    Each step draws half its batch from the true components and half from the false
    ones (with replacement), in one random view of the eight (rotations, mirror images)
    with the slice order reversed half the time; AdamW under a one-cycle schedule of peak
    ``lr``; binary cross-entropy. The features are standardised by their mean and
    spread over every component.

    Args:
        patches: (N, 6, PATCH, PATCH) float, as :func:`component_inputs`.
        features: (N, 6) float.
        targets: (N,) bool: does the component touch a reference tumour?
        steps: optimizer steps.
        batch_size: components a step (even).
        lr: peak learning rate.
        width: :class:`LesionFilter` width.
        seed: weights and sampling seed (the global RNGs are left as they were).
        device: where to train.

    Returns:
        ``(lesion_filter, info)``: the trained filter in eval mode, and
        ``{"candidates", "true", "steps", "seconds", "final_loss"}``.

    Raises:
        ValueError: for mismatched shapes, or when the components are all true or all
            false (nothing to learn).
    """
    check_positive("steps", steps)
    check_positive("batch_size", batch_size)
    check_positive("lr", lr)
    patches, features = np.asarray(patches, np.float32), np.asarray(features, np.float32)
    targets = np.asarray(targets, dtype=bool)
    n = len(targets)
    if (
        patches.shape[1:] != (6, PATCH, PATCH)
        or features.shape != (n, len(FEATURES))
        or len(patches) != n
        or targets.ndim != 1
    ):
        raise ValueError(
            f"patches, features, targets: expected (N, 6, {PATCH}, {PATCH}), (N, 6) "
            f"and (N,), got {patches.shape}, {features.shape} and {targets.shape}"
        )
    true, false = np.flatnonzero(targets), np.flatnonzero(~targets)
    if not len(true) or not len(false):
        raise ValueError(
            f"targets: expected true and false components, got {len(true)} true and "
            f"{len(false)} false; fix: more training cases, or no filter"
        )
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = LesionFilter(width).to(device)
    net.feature_mean.copy_(torch.from_numpy(features.mean(0)))
    net.feature_scale.copy_(torch.from_numpy(features.std(0) + 1e-3))
    x_all = torch.from_numpy(patches).to(device)
    f_all, y_all = (
        torch.from_numpy(features).to(device),
        torch.from_numpy(targets).float().to(device),
    )
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr / 10, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    half = max(1, batch_size // 2)
    t_true, t_false = torch.from_numpy(true), torch.from_numpy(false)
    net.train()
    loss = torch.zeros(())
    for _ in range(steps):
        pick = torch.cat(
            [
                t_true[torch.randint(len(true), (half,), generator=g)],
                t_false[torch.randint(len(false), (half,), generator=g)],
            ]
        ).to(device)
        logits = net(_augment(x_all[pick], g), f_all[pick])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y_all[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    net.eval()
    info = {
        "candidates": n,
        "true": len(true),
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "final_loss": float(loss.detach()),
    }
    return net, info


def score_tumours(
    labels: np.ndarray,
    image: np.ndarray,
    probability: np.ndarray,
    lesion_filter: LesionFilter,
    liver_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The tumour components of ``labels`` and the filter's score of each.

    Returns ``(components, scores)``: (D, H, W) component labels and (count,) scores
    (``scores[k - 1]`` is component ``k``'s).

    Args:
        labels: (D, H, W) labels {0, 1, 2}.
        image: (D, H, W) tumour-model input.
        probability: (D, H, W) tumour probability.
        lesion_filter: the trained filter.
        liver_mask: (D, H, W) bool liver mask, for the contrast (None: ``labels > 0``).
    """
    components, count = tumour_components(labels)
    mask = np.asarray(labels) > 0 if liver_mask is None else liver_mask
    patches, features = component_inputs(image, probability, components, count, mask)
    scores = lesion_filter.score(patches, features) if count else np.zeros(0, np.float32)
    return components, scores


def drop_unlikely_tumours(
    labels: np.ndarray,
    components: np.ndarray,
    scores: np.ndarray,
    keep: float,
    liver_mask: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of ``labels`` without the tumour components scored below ``keep``.

    A dropped component becomes liver where ``liver_mask`` holds (everywhere when it is
    None) and background elsewhere, as :func:`~featsup.postprocess.label_tumours` leaves a
    component it drops.

    Args:
        labels: (D, H, W) labels {0, 1, 2}.
        components: their tumour components, as :func:`score_tumours` gives.
        scores: (count,) the components' scores.
        keep: smallest score kept, in [0, 1] (0 keeps every component).
        liver_mask: (D, H, W) bool.

    Example:
        >>> labels = np.array([[[2, 0, 2]]], np.uint8)
        >>> components, _ = tumour_components(labels)
        >>> drop_unlikely_tumours(labels, components, np.array([0.9, 0.2]), 0.5).tolist()
        [[[2, 0, 1]]]
    """
    check_in_range("keep", keep, 0.0, 1.0)
    scores = np.asarray(scores)
    if len(scores) != int(components.max(initial=0)):
        raise ValueError(
            f"scores: expected one per component ({int(components.max(initial=0))}),"
            f" got {len(scores)}"
        )
    out = np.array(labels, copy=True)
    gone = np.concatenate([[False], scores < keep])[components]
    out[gone] = 1
    if liver_mask is not None:
        out[gone & ~np.asarray(liver_mask, dtype=bool)] = 0
    return out
