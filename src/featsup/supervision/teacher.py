"""The encoding UNet++ teacher: its training recipe, run by the shared Trainer.

:func:`train_encoding_teacher` trains the paper's encoding UNet++ (no skip connections,
deep supervision; section 3.2.1) label -> label with :class:`featsup.training.Trainer`
until its reconstruction Dice on held-out label maps passes a threshold, and saves a
Trainer checkpoint, which :func:`featsup.training.load_model` rebuilds like any other.
The teacher's features for a whole dataset are cached by :mod:`featsup.supervision.cache`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from featsup._checks import check_choice, check_in_range, check_positive
from featsup.losses import one_hot
from featsup.models.unetpp import UNetPlusPlus
from featsup.supervision._label_crops import _crop_size, _LabelCrops, label_tensor
from featsup.supervision.cache import TeacherFeatureCache, build_feature_cache
from featsup.training.checkpoint import load_checkpoint, load_model, rng_preserved
from featsup.training.schedule import warmup_cosine
from featsup.training.trainer import Trainer

__all__ = [
    "TeacherFeatureCache",
    "build_feature_cache",
    "reconstruction_dice",
    "train_encoding_teacher",
]

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- encoding teacher
def reconstruction_dice(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean over foreground classes of the Dice of ``argmax(logits)`` against ``labels``.

    Sums run over the whole batch; a class absent from both is skipped (1.0 if all are).

    Args:
        logits: (B, K, *spatial) scores, 2D or 3D.
        labels: (B, *spatial) integer labels.
        num_classes: K.

    Example:
        >>> labels = torch.tensor([[[0, 1], [1, 1]]])
        >>> reconstruction_dice(F.one_hot(labels, 2).movedim(-1, 1).float(), labels, 2)
        1.0
    """
    from featsup.metrics import dice_score

    pred = logits.max(1).indices  # argmax over a strided axis is 20x slower on the CPU
    present = [c for c in range(1, num_classes) if bool(((pred == c) | (labels == c)).any())]
    scores = [dice_score(pred == c, labels == c) for c in present]
    return float(np.mean(scores)) if scores else 1.0


def _split_held_out(
    data: torch.Tensor, val_labels: Any, gen: torch.Generator, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training maps, held-out maps): up to 64 of ``val_labels``, or 10 % of ``data``."""
    if val_labels is not None:
        held = label_tensor(val_labels, data.ndim - 1, num_classes)
        return data, held[torch.randperm(len(held), generator=gen)[:64]]
    if len(data) < 2:
        raise ValueError(
            f"labels: expected at least 2 label maps (one is held out), got {len(data)}; "
            "fix: pass more maps or val_labels"
        )
    order = torch.randperm(len(data), generator=gen)
    n_held = min(64, max(1, len(data) // 10))
    return data[order[n_held:]], data[order[:n_held]]


def _reconstruction_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch Dice of the foreground classes + cross-entropy, for one head (eq. 13)."""
    from featsup.losses.dice import dice_loss

    logits = logits.float()
    dice = dice_loss(logits, target, include_background=False, batch=True)
    return dice + F.cross_entropy(logits, target)


def train_encoding_teacher(
    labels: Any,
    *,
    num_classes: int,
    widths: Sequence[int] = (32, 64, 128, 256, 512),
    steps: int = 2000,
    batch_size: int = 16,
    lr: float = 1e-2,
    crop: int | Sequence[int] | None = 64,
    spatial_dims: Literal[2, 3] | None = None,
    pooling: Sequence[Sequence[int]] | None = None,
    foreground_fraction: float | tuple[float, float] = (0.67, 0.0),
    val_labels: Any = None,
    dice_threshold: float = 0.98,
    eval_every: int = 25,
    amp: Literal["bf16"] | None = None,
    channels_last: bool = False,
    ema_decay: float | None = 0.99,
    device: torch.device | str = "cpu",
    path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    reuse: bool = True,
) -> UNetPlusPlus:
    """Train the encoding UNet++ label -> label until it reconstructs held-out label maps.

    The network is featsup's :class:`~featsup.models.UNetPlusPlus` with
    ``skip_connections=False`` and deep supervision (paper section 3.2.1): it sees the
    one-hot label map and is trained with the mean over its heads of Dice + cross-entropy
    (eq. 13-14) to output the labels again. The recipe makes that cheap, because the
    network is fully convolutional and sees only label maps:

    - it trains on random ``crop`` x ``crop`` crops, a quarter of the work of a 128 x 128
      map per sample; early crops are mostly centred on a foreground pixel, so that small
      lesions are seen often, and the share falls to none by the end
      (``foreground_fraction``), because a teacher trained on foreground-centred crops
      over-segments the whole maps it serves on; label volumes (N, D, H, W) train a 3D
      teacher (``spatial_dims=3``) on ``crop``-sized 3D crops in the same way;
    - the Dice term pools the batch and leaves the background out, so that a lesion of a
      few pixels is not drowned by the background's Dice;
    - Adam at a high learning rate ``lr`` with a linear warm-up over 5 % of ``steps``
      and a cosine decay to 5 % of it at ``steps``;
    - the teacher judged and served is an exponential moving average of the weights
      (``ema_decay``), which settles before the weights themselves do.

    The loop is :class:`featsup.training.Trainer`'s: the crops are its training data,
    the held-out evaluation its ``val_fn`` and the threshold its ``stop_when``.

    Every ``eval_every`` steps the Dice of the deepest head X0,4 (eval mode, whole maps,
    mean over foreground classes) is measured on up to 64 held-out maps (from
    ``val_labels``, or 10 % of ``labels`` set aside), after the BatchNorm statistics are
    re-estimated on the last 64 training crops (whole maps if ``crop`` is None), the
    inputs the weights settle on; the teacher keeps them to serve whole maps; training
    stops at the first evaluation that reaches ``dice_threshold``, or after ``steps``. A
    ``UserWarning`` says so when the threshold was not reached; the outcome is logged and
    saved in the checkpoint's ``"report"``.

    Args:
        labels: (N, H, W) integer label maps or (N, D, H, W) label volumes (tensor or
            array), or a dataset whose items are label maps or volumes, ``(image, target,
            ...)`` tuples or ``{"target": ...}`` dicts such as 3D patches (only the target
            is used).
        num_classes: classes of the label maps (input and output channels).
        widths: UNet++ widths, as for the student it will supervise.
        steps: maximum optimisation steps.
        batch_size: label maps (crops) per step, sampled at random.
        lr: peak Adam learning rate.
        crop: training crop size in pixels, an int for every axis or one size per axis
            ((h, w) or (d, h, w)), each rounded down to a multiple of the teacher's
            deepest reduction along it (``2 ** (len(widths) - 1)`` in 2D); None trains
            on whole maps.
        spatial_dims: 2 (images) or 3 (volumes); None infers it from ``labels``' rank,
            (N, H, W) or (N, 1, H, W) being 2D and (N, D, H, W) 3D.
        pooling: 3D only: the teacher's max-pool factors per level along (D, H, W), as
            for :class:`~featsup.models.UNetPlusPlus`; give the student's, so that
            anisotropic levels pair. None pools by 2 along every axis.
        foreground_fraction: share of crops centred on a foreground pixel, in [0, 1], or
            ``(start, end)``: the share goes linearly from ``start`` to ``end`` over the
            training, so that late crops are drawn as the whole maps are (``end=0``).
        val_labels: held-out label maps, as ``labels``; None holds out 10 % of ``labels``.
        dice_threshold: stop once the reconstruction Dice is >= this, in (0, 1].
        eval_every: steps between Dice measurements.
        amp: ``"bf16"`` runs forward passes under bfloat16 autocast (CUDA, or CPUs with
            bfloat16 matrix units); None keeps float32.
        channels_last: keep the teacher's weights and activations channels-last
            (channels-last-3d for volumes), by
            :meth:`~featsup.models.UNetPlusPlus.use_channels_last`: the same function,
            computed faster by oneDNN for these narrow 3x3 convolutions
            (docs/supervision.md). The layout is not part of the recipe: a teacher saved
            in either layout is reused in the other.
        ema_decay: the weight average's decay per step
            (:class:`~featsup.training.averaging.WeightAverage`, warmed up over the
            first steps): the evaluations judge it and the teacher returned holds it;
            None judges and returns the trained weights (the recipe until 2026-12-03).
            On the example's liver maps the average reached 0.97 at steps 500-600 where
            the weights took 700-1000 (docs/supervision.md).
        device: where to train.
        path: if given, save the Trainer's checkpoint there (atomically), with the report
            under ``"report"``; :func:`featsup.training.load_model` rebuilds the teacher.
        seed: seeds the initial weights, the split and the crops (the global generators
            are left as they were).
        progress: show progress: a tqdm bar on a terminal, else one line per evaluation.
        reuse: if ``path`` holds a teacher trained on the same label maps (training and
            held-out) with the same arguments, load it instead of training again. The
            checkpoint stores a SHA-1 digest of both for this check.

    Returns:
        The trained teacher, in eval mode; its ``training_report`` attribute holds the
        report (``steps``, ``dice``, ``dice_threshold``, ``reached_threshold``,
        ``held_out_maps``, and ``reused``: whether it was loaded from ``path``).

    Raises:
        ValueError: for bad values, one-hot labels, ``pooling`` for 2D labels, or fewer
            than 2 maps without ``val_labels``.

    Example:
        >>> labels = torch.zeros(8, 16, 16, dtype=torch.long)
        >>> labels[:, 4:12, 4:12] = 1
        >>> teacher = train_encoding_teacher(labels, num_classes=2, widths=(4, 8), steps=100,
        ...                                  dice_threshold=0.9, progress=False)
        >>> teacher.skip_connections, teacher.in_channels
        (False, 2)
        >>> volumes = torch.zeros(4, 8, 16, 16, dtype=torch.long)
        >>> volumes[:, 2:6, 4:12, 4:12] = 1
        >>> teacher = train_encoding_teacher(volumes, num_classes=2, widths=(4, 8), steps=100,
        ...                                  eval_every=10, dice_threshold=0.9, progress=False)
        >>> teacher.spatial_dims
        3
    """
    check_positive("steps", steps)
    check_positive("lr", lr)
    check_positive("batch_size", batch_size)
    check_in_range("dice_threshold", dice_threshold, 1e-6, 1.0)
    fractions = (
        (foreground_fraction,) * 2
        if isinstance(foreground_fraction, (int, float))
        else tuple(foreground_fraction)
    )
    if len(fractions) != 2:
        raise ValueError(
            f"foreground_fraction: expected a share or (start, end), got {foreground_fraction!r}"
        )
    for fraction in fractions:
        check_in_range("foreground_fraction", fraction, 0.0, 1.0)
    check_choice("amp", amp, ("bf16", None))
    gen = torch.Generator().manual_seed(seed)
    data = label_tensor(labels, spatial_dims, num_classes)
    train, held = _split_held_out(data, val_labels, gen, num_classes)
    model = _encoding_unetpp(num_classes, widths, data.ndim - 1, pooling, seed)
    if channels_last:
        model.use_channels_last()
    recipe = {
        "num_classes": num_classes, "widths": list(widths), "steps": steps,
        "batch_size": batch_size, "lr": lr, "crop": crop, "eval_every": eval_every,
        "foreground_fraction": fractions[0] if fractions[0] == fractions[1] else list(fractions),
        "dice_threshold": dice_threshold,
        "amp": amp, "seed": seed,
    }  # fmt: skip
    if ema_decay is not None:  # teachers trained without an average keep their digest
        recipe["ema_decay"] = ema_decay
    if model.spatial_dims == 3:  # 2D recipes keep their digest, so saved teachers are reused
        recipe.update(spatial_dims=3, pooling=model.config["pooling"])
    digest = _digest(train, held, recipe)
    if reuse and path is not None and os.path.exists(path):
        if _load_if_same(path, digest, model):
            return model.to(device).eval()
    size = _crop_size(crop, train.shape, model.feature_info[-1].reduction_per_axis)
    crops = _LabelCrops(
        train, size, (fractions[0], fractions[1]), seed=seed, length=steps * batch_size
    )
    # BatchNorm statistics for evaluation and serving: the last 64 training crops, the
    # inputs the weights settle on (whole maps when crop is None)
    calibration = torch.stack([crops[k] for k in range(max(0, len(crops) - 64), len(crops))])
    trainer = Trainer(
        model, _reconstruction_step(num_classes), crops,
        val_data=TensorDataset(held), val_fn=_evaluation(calibration, num_classes),
        val_batch_size=_chunk(train),
        optimizer=torch.optim.Adam(model.parameters(), lr=lr),
        scheduler=lambda optimizer, total: torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(warmup=max(1, steps // 20), total=total, floor=0.05)
        ),
        max_steps=steps, batch_size=batch_size, shuffle=False, log_every=eval_every,
        val_every=eval_every, stop_when=lambda metrics: metrics["val/dice"] >= dice_threshold,
        amp=amp, ema_decay=ema_decay, device=device, seed=seed,
        progress=None if progress else False, name="encoding teacher",
    )  # fmt: skip
    start = time.perf_counter()
    with rng_preserved(trainer.device):
        history = trainer.fit()
    if ema_decay is not None:  # serve what the evaluations judged: the average, with
        trainer.use_average()  # BatchNorm statistics re-estimated for it, as there
        _calibrate_batch_norm(model, calibration.to(trainer.device), num_classes)
    model.zero_grad(set_to_none=True)  # a served teacher holds no gradients
    dice = next(r["val/dice"] for r in reversed(history) if "val/dice" in r)
    report = {"steps": trainer.step, "dice": dice, "dice_threshold": dice_threshold}
    report["seconds"] = time.perf_counter() - start
    report.update(reached_threshold=dice >= dice_threshold, held_out_maps=len(held))
    _report(report)
    report["reused"] = False
    if path is not None:
        trainer.save(path, extra={"report": report, "recipe_digest": digest})
    model.training_report = report  # type: ignore[assignment]
    return model.eval()


def _encoding_unetpp(
    num_classes: int,
    widths: Sequence[int],
    spatial_dims: int,
    pooling: Sequence[Sequence[int]] | None,
    seed: int,
) -> UNetPlusPlus:
    """The untrained encoding UNet++ (no skips, deep supervision), seeded by ``seed``.

    Raises:
        ValueError: for ``pooling`` with 2D labels (or a bad ``pooling``).
    """
    if pooling is not None and spatial_dims == 2:
        raise ValueError(
            f"pooling: expected None for 2D label maps, got {pooling!r}; fix: pass label "
            "volumes (N, D, H, W) or spatial_dims=3 for a 3D teacher"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNetPlusPlus(
            num_classes, num_classes, widths=widths, deep_supervision=True,
            skip_connections=False, spatial_dims=spatial_dims,  # type: ignore[arg-type]
            pooling=pooling,
        )  # fmt: skip


def _chunk(maps: torch.Tensor) -> int:
    """Whole maps per forward pass outside training: 16 images, or 2 volumes (memory)."""
    return 16 if maps.ndim == 3 else 2


def _digest(train: torch.Tensor, held: torch.Tensor, recipe: dict[str, Any]) -> str:
    """SHA-1 of the training and held-out maps and the recipe: what a teacher depends on."""
    sha = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode())
    for maps in (train, held):
        sha.update(str(tuple(maps.shape)).encode())
        sha.update(maps.to(torch.uint8 if maps.max() < 256 else torch.int64).numpy().tobytes())
    return sha.hexdigest()


def _load_if_same(path: str | os.PathLike[str], digest: str, model: UNetPlusPlus) -> bool:
    """Load the teacher saved at ``path`` into ``model`` if it was trained with ``digest``."""
    try:
        state = load_checkpoint(path, map_location="cpu")
    except ValueError:  # unreadable, or another format: train again and replace it
        state = {}
    if state.get("recipe_digest") != digest:
        _log.info("encoding teacher: %s was trained on other maps or settings; retraining", path)
        return False
    load_model(path, model=model)
    model.training_report = {**state["report"], "reused": True}  # type: ignore[assignment]
    _log.info("encoding teacher: reusing %s (same label maps and recipe)", path)
    return True


def _reconstruction_step(
    num_classes: int,
) -> Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, dict[str, Any]]]:
    """The Trainer's ``step_fn``: one-hot crops in, mean over heads of Dice + CE (eq. 13-14)."""

    def step(model: nn.Module, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        heads = model(one_hot(target, num_classes, dtype=torch.float32))
        with torch.autocast(target.device.type, enabled=False):  # the loss in float32
            loss = torch.stack([_reconstruction_loss(h, target) for h in heads]).mean()
        return loss, {}

    return step


def _evaluation(
    calibration: torch.Tensor, num_classes: int
) -> Callable[[nn.Module, Any], Mapping[str, float]]:
    """The Trainer's ``val_fn``: BatchNorm re-estimated, then the deepest head's Dice."""

    def evaluate(model: nn.Module, loader: Any) -> dict[str, float]:
        device = next(model.parameters()).device
        with torch.autocast(device.type, enabled=False):  # evaluation in float32
            _calibrate_batch_norm(model, calibration.to(device), num_classes)  # type: ignore[arg-type]
            model.eval()
            logits, maps = [], []
            for (held,) in loader:
                held = held.to(device)
                logits.append(model(one_hot(held, num_classes, dtype=torch.float32))[-1])
                maps.append(held)
        return {"dice": reconstruction_dice(torch.cat(logits), torch.cat(maps), num_classes)}

    return evaluate


@torch.no_grad()
def _calibrate_batch_norm(model: UNetPlusPlus, maps: torch.Tensor, num_classes: int) -> None:
    """Re-estimate every BatchNorm's running statistics on ``maps`` (B, *spatial).

    The running averages of training follow its last batches alone, and early ones
    (mostly centred on foreground) shifted every level's features (a liver teacher lost
    0.4 Dice between two evaluations). ``maps`` are the last training crops: statistics
    of other inputs, such as whole maps under crop-trained weights, shifted the deepest
    head's boundaries outward by a pixel (a tumour teacher: 0.951 instead of 0.963 held
    out, docs/supervision.md).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    for batch in maps.split(_chunk(maps)):
        model(one_hot(batch, num_classes, dtype=torch.float32))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def _report(report: dict[str, Any]) -> None:
    text = (
        f"encoding teacher: reconstruction Dice {report['dice']:.4f} on "
        f"{report['held_out_maps']} held-out maps after {report['steps']} steps, "
        f"{report['seconds']:.0f} s (threshold {report['dice_threshold']})"
    )
    if report["reached_threshold"]:
        _log.info("%s: threshold reached", text)
    else:
        warnings.warn(f"{text}: step limit reached first; fix: more steps", stacklevel=3)
