"""The encoding UNet++ teacher: its training recipe, saving and loading.

:func:`train_encoding_teacher` trains the paper's encoding UNet++ (no skip connections,
deep supervision; section 3.2.1) label -> label until its reconstruction Dice on held-out
label maps passes a threshold, and saves it; :func:`load_encoding_teacher` rebuilds it.
The teacher's features for a whole dataset are cached by :mod:`featsup.supervision.cache`.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from featsup._checks import check_choice, check_in_range, check_positive
from featsup.models.unetpp import UNetPlusPlus
from featsup.supervision.cache import TeacherFeatureCache, build_feature_cache, label_maps

__all__ = [
    "TeacherFeatureCache",
    "build_feature_cache",
    "load_encoding_teacher",
    "one_hot",
    "reconstruction_dice",
    "train_encoding_teacher",
]

_log = logging.getLogger(__name__)


def one_hot(target: torch.Tensor, num_classes: int, *, dtype: torch.dtype) -> torch.Tensor:
    """One-hot ``(B, K, *spatial)`` map of an integer ``(B, *spatial)`` or ``(B, 1, ...)`` target.

    A floating ``(B, K, ...)`` target is taken as one-hot already and only cast. This is
    :func:`featsup.losses.one_hot`, the one implementation.

    Raises:
        ValueError: if labels fall outside ``[0, num_classes)``.

    Example:
        >>> one_hot(torch.tensor([[[0, 2]]]), 3, dtype=torch.float32)[0, :, 0].tolist()
        [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    from featsup.losses import one_hot as shared_one_hot

    return shared_one_hot(target, num_classes, dtype=dtype)


# ---------------------------------------------------------------------- encoding teacher
def reconstruction_dice(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean over foreground classes of the Dice of ``argmax(logits)`` against ``labels``.

    Sums run over the whole batch; a class absent from both is skipped (1.0 if all are).

    Args:
        logits: (B, K, H, W) scores.
        labels: (B, H, W) integer labels.
        num_classes: K.

    Example:
        >>> labels = torch.tensor([[[0, 1], [1, 1]]])
        >>> reconstruction_dice(F.one_hot(labels, 2).movedim(-1, 1).float(), labels, 2)
        1.0
    """
    from featsup.metrics import dice_score

    pred = logits.argmax(1)
    present = [c for c in range(1, num_classes) if bool(((pred == c) | (labels == c)).any())]
    scores = [dice_score(pred == c, labels == c) for c in present]
    return float(np.mean(scores)) if scores else 1.0


def _split_held_out(
    data: torch.Tensor, val_labels: Any, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training maps, held-out maps): up to 64 of ``val_labels``, or 10 % of ``data``."""
    if val_labels is not None:
        held = label_maps(val_labels)
        return data, held[torch.randperm(len(held), generator=gen)[:64]]
    if len(data) < 2:
        raise ValueError(
            f"labels: expected at least 2 label maps (one is held out), got {len(data)}; "
            "fix: pass more maps or val_labels"
        )
    order = torch.randperm(len(data), generator=gen)
    n_held = min(64, max(1, len(data) // 10))
    return data[order[n_held:]], data[order[:n_held]]


def _crop_size(crop: int | None, shape: torch.Size, multiple: int) -> tuple[int, int] | None:
    """The (h, w) training crop, a multiple of ``multiple`` no larger than the maps; None: whole."""
    if crop is None:
        return None
    h, w = (max(multiple, min(crop, n) // multiple * multiple) for n in shape[-2:])
    return None if (h, w) == tuple(shape[-2:]) else (h, w)


def _sample_batch(
    data: torch.Tensor,
    batch_size: int,
    size: tuple[int, int] | None,
    foreground_fraction: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """(B, h, w) label crops; ``foreground_fraction`` of them centred on a foreground pixel."""
    maps = data[torch.randint(0, len(data), (batch_size,), generator=gen)]
    if size is None:
        return maps
    (h, w), (H, W) = size, maps.shape[-2:]
    crops = []
    for m in maps:
        fg = (m > 0).nonzero()
        if len(fg) and torch.rand((), generator=gen) < foreground_fraction:
            cy, cx = fg[torch.randint(0, len(fg), (), generator=gen)].tolist()
            top, left = min(max(cy - h // 2, 0), H - h), min(max(cx - w // 2, 0), W - w)
        else:
            top = int(torch.randint(0, H - h + 1, (), generator=gen))
            left = int(torch.randint(0, W - w + 1, (), generator=gen))
        crops.append(m[top : top + h, left : left + w])
    return torch.stack(crops)


def _reconstruction_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch Dice of the foreground classes + cross-entropy, for one head (eq. 13)."""
    from featsup.losses.dice import dice_loss

    logits = logits.float()
    dice = dice_loss(logits, target, include_background=False, batch=True)
    return dice + F.cross_entropy(logits, target)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_encoding_teacher(
    labels: Any,
    *,
    num_classes: int,
    widths: Sequence[int] = (32, 64, 128, 256, 512),
    steps: int = 2000,
    batch_size: int = 16,
    lr: float = 1e-2,
    crop: int | None = 64,
    foreground_fraction: float = 0.67,
    val_labels: Any = None,
    dice_threshold: float = 0.98,
    eval_every: int = 25,
    amp: Literal["bf16"] | None = None,
    device: torch.device | str = "cpu",
    path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> UNetPlusPlus:
    """Train the encoding UNet++ label -> label until it reconstructs held-out label maps.

    The network is featsup's :class:`~featsup.models.UNetPlusPlus` with
    ``skip_connections=False`` and deep supervision (paper section 3.2.1): it sees the
    one-hot label map and is trained with the mean over its heads of Dice + cross-entropy
    (eq. 13-14) to output the labels again. The recipe makes that cheap, because the
    network is fully convolutional and sees only label maps:

    - it trains on random ``crop`` x ``crop`` crops (``foreground_fraction`` of them
      centred on a foreground pixel, so that small lesions are seen often), a quarter of
      the work of a 128 x 128 map per sample;
    - the Dice term pools the batch and leaves the background out, so that a lesion of a
      few pixels is not drowned by the background's Dice;
    - Adam at a high learning rate ``lr`` with a linear warm-up over 5 % of ``steps``
      and a cosine decay to 5 % of it at ``steps``.

    Every ``eval_every`` steps the Dice of the deepest head X0,4 (eval mode, whole maps,
    mean over foreground classes) is measured on up to 64 held-out maps (from
    ``val_labels``, or 10 % of ``labels`` set aside), after the BatchNorm statistics are
    re-estimated on 64 whole training maps (where the teacher will serve); training
    stops once it reaches ``dice_threshold`` or after ``steps``. A ``UserWarning`` says so
    when the threshold was not reached; the outcome is logged and saved in the
    checkpoint's ``"report"``.

    Args:
        labels: (N, H, W) integer tensor or array, or a dataset whose items are label maps
            or ``(image, target, ...)`` tuples (only the target is used).
        num_classes: classes of the label maps (input and output channels).
        widths: UNet++ widths, as for the student it will supervise.
        steps: maximum optimisation steps.
        batch_size: label maps (crops) per step, sampled at random.
        lr: peak Adam learning rate.
        crop: training crop size in pixels (rounded down to a multiple of
            ``2 ** (len(widths) - 1)``); None trains on whole maps.
        foreground_fraction: share of crops centred on a foreground pixel, in [0, 1].
        val_labels: held-out label maps, as ``labels``; None holds out 10 % of ``labels``.
        dice_threshold: stop once the reconstruction Dice is >= this, in (0, 1].
        eval_every: steps between Dice measurements.
        amp: ``"bf16"`` runs forward passes under bfloat16 autocast (CUDA, or CPUs with
            bfloat16 matrix units); None keeps float32.
        device: where to train.
        path: if given, save ``{"config", "state_dict", "report"}`` there (atomically).
        seed: seeds the initial weights, the split and the batches (global RNG untouched).
        progress: show a tqdm bar.

    Returns:
        The trained teacher, in eval mode; its ``training_report`` attribute holds the
        report (``steps``, ``dice``, ``dice_threshold``, ``reached_threshold``,
        ``held_out_maps``).

    Raises:
        ValueError: for bad values, one-hot labels, or fewer than 2 maps without
            ``val_labels``.

    Example:
        >>> labels = torch.zeros(8, 16, 16, dtype=torch.long)
        >>> labels[:, 4:12, 4:12] = 1
        >>> teacher = train_encoding_teacher(labels, num_classes=2, widths=(4, 8), steps=100,
        ...                                  dice_threshold=0.9, progress=False)
        >>> teacher.skip_connections, teacher.in_channels
        (False, 2)
    """
    check_positive("steps", steps)
    check_positive("lr", lr)
    check_positive("batch_size", batch_size)
    check_in_range("dice_threshold", dice_threshold, 1e-6, 1.0)
    check_in_range("foreground_fraction", foreground_fraction, 0.0, 1.0)
    check_choice("amp", amp, ("bf16", None))
    gen = torch.Generator().manual_seed(seed)
    train, held = _split_held_out(label_maps(labels), val_labels, gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNetPlusPlus(
            num_classes, num_classes, widths=widths, deep_supervision=True, skip_connections=False
        ).to(device)
    size = _crop_size(crop, train.shape, 2 ** (len(widths) - 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: _lr_factor(k, steps, max(1, steps // 20))
    )
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if amp else None
    held = held.to(device)
    calibration = train[torch.randperm(len(train), generator=gen)[:64]].to(device)
    dice, step = 0.0, 0
    with tqdm(total=steps, disable=not progress, desc="encoding teacher") as bar:
        while step < steps:
            target = _sample_batch(train, batch_size, size, foreground_fraction, gen).to(device)
            with autocast or nullcontext():
                heads = model(one_hot(target, num_classes, dtype=torch.float32))
            loss = torch.stack([_reconstruction_loss(h, target) for h in heads]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            bar.update(1)
            if step % eval_every == 0 or step == steps:
                dice = _evaluate(model, held, calibration, num_classes)
                bar.set_postfix(loss=f"{loss.item():.4f}", dice=f"{dice:.4f}")
                if dice >= dice_threshold:
                    break
    report = {"steps": step, "dice": dice, "dice_threshold": dice_threshold}
    report.update(reached_threshold=dice >= dice_threshold, held_out_maps=len(held))
    _report(report)
    if path is not None:
        _save(model, report, Path(path))
    model.training_report = report  # type: ignore[assignment]
    return model.eval()


@torch.no_grad()
def _calibrate_batch_norm(model: UNetPlusPlus, maps: torch.Tensor, num_classes: int) -> None:
    """Re-estimate every BatchNorm's running statistics on whole ``maps`` (B, H, W).

    Training sees crops, most of them centred on foreground, but the teacher serves
    features in eval mode on whole label maps: statistics taken from crops would shift
    every level's features (and cost a liver teacher 0.4 Dice between two evaluations).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    for batch in maps.split(16):
        model(one_hot(batch, num_classes, dtype=torch.float32))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


@torch.no_grad()
def _evaluate(
    model: UNetPlusPlus, held: torch.Tensor, calibration: torch.Tensor, num_classes: int
) -> float:
    _calibrate_batch_norm(model, calibration, num_classes)
    model.eval()
    logits = torch.cat(
        [model(one_hot(t, num_classes, dtype=torch.float32))[-1] for t in held.split(16)]
    )
    model.train()
    return reconstruction_dice(logits, held, num_classes)


def _report(report: dict[str, Any]) -> None:
    text = (
        f"encoding teacher: reconstruction Dice {report['dice']:.4f} on "
        f"{report['held_out_maps']} held-out maps after {report['steps']} steps "
        f"(threshold {report['dice_threshold']})"
    )
    if report["reached_threshold"]:
        _log.info("%s: threshold reached", text)
    else:
        warnings.warn(f"{text}: step limit reached first; fix: more steps", stacklevel=3)


def _save(model: UNetPlusPlus, report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    with tmp.open("wb") as f:
        torch.save({"config": model.config, "state_dict": state, "report": report}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_encoding_teacher(
    path: str | os.PathLike[str], *, map_location: torch.device | str = "cpu"
) -> UNetPlusPlus:
    """Rebuild a teacher saved by :func:`train_encoding_teacher`, in eval mode.

    Raises:
        ValueError: if the file is not such a checkpoint.
    """
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= checkpoint.keys():
        raise ValueError(
            f"path: expected a checkpoint with 'config' and 'state_dict', got {str(path)!r}; "
            "fix: save it with train_encoding_teacher(path=...)"
        )
    model = UNetPlusPlus.from_config(checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(map_location).eval()
