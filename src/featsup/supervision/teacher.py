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
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from featsup._checks import check_choice, check_in_range, check_positive
from featsup.losses import one_hot
from featsup.models.unetpp import UNetPlusPlus
from featsup.supervision.cache import TeacherFeatureCache, build_feature_cache, label_maps
from featsup.training.checkpoint import load_checkpoint, load_model, rng_preserved
from featsup.training.distributed import epoch_seed
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


class _LabelCrops(Dataset[torch.Tensor]):
    """``length`` label crops (h, w); crop ``k`` is a pure function of ``(seed, k)``.

    Sampling per index (rather than from one running generator) makes the crops a
    map-style data set for the Trainer, so that a resumed run sees the same crops.
    """

    def __init__(
        self,
        maps: torch.Tensor,
        size: tuple[int, int] | None,
        foreground_fraction: float,
        *,
        seed: int,
        length: int,
    ) -> None:
        self.maps, self.size, self.fraction = maps, size, foreground_fraction
        self.seed, self.length = seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, k))
        return _sample_batch(self.maps, 1, self.size, self.fraction, gen)[0]


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
    reuse: bool = True,
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

    The loop is :class:`featsup.training.Trainer`'s: the crops are its training data,
    the held-out evaluation its ``val_fn`` and the threshold its ``stop_when``.

    Every ``eval_every`` steps the Dice of the deepest head X0,4 (eval mode, whole maps,
    mean over foreground classes) is measured on up to 64 held-out maps (from
    ``val_labels``, or 10 % of ``labels`` set aside), after the BatchNorm statistics are
    re-estimated on 64 whole training maps (where the teacher will serve); training
    stops at the first evaluation that reaches ``dice_threshold``, or after ``steps``. A
    ``UserWarning`` says so when the threshold was not reached; the outcome is logged and
    saved in the checkpoint's ``"report"``.

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
        )
    recipe = {
        "num_classes": num_classes, "widths": list(widths), "steps": steps,
        "batch_size": batch_size, "lr": lr, "crop": crop, "eval_every": eval_every,
        "foreground_fraction": foreground_fraction, "dice_threshold": dice_threshold,
        "amp": amp, "seed": seed,
    }  # fmt: skip
    digest = _digest(train, held, recipe)
    if reuse and path is not None and os.path.exists(path):
        if _load_if_same(path, digest, model):
            return model.to(device).eval()
    size = _crop_size(crop, train.shape, 2 ** (len(widths) - 1))
    calibration = train[torch.randperm(len(train), generator=gen)[:64]]
    trainer = Trainer(
        model, _reconstruction_step(num_classes),
        _LabelCrops(train, size, foreground_fraction, seed=seed, length=steps * batch_size),
        val_data=TensorDataset(held), val_fn=_evaluation(calibration, num_classes),
        val_batch_size=16,
        optimizer=torch.optim.Adam(model.parameters(), lr=lr),
        scheduler=lambda optimizer, total: torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(warmup=max(1, steps // 20), total=total, floor=0.05)
        ),
        max_steps=steps, batch_size=batch_size, shuffle=False, log_every=eval_every,
        val_every=eval_every, stop_when=lambda metrics: metrics["val/dice"] >= dice_threshold,
        amp=amp, device=device, seed=seed, progress=None if progress else False,
    )  # fmt: skip
    with rng_preserved(trainer.device):
        history = trainer.fit()
    dice = next(r["val/dice"] for r in reversed(history) if "val/dice" in r)
    report = {"steps": trainer.step, "dice": dice, "dice_threshold": dice_threshold}
    report.update(reached_threshold=dice >= dice_threshold, held_out_maps=len(held))
    _report(report)
    report["reused"] = False
    if path is not None:
        trainer.save(path, extra={"report": report, "recipe_digest": digest})
    model.training_report = report  # type: ignore[assignment]
    return model.eval()


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
