"""Volume prediction with any head of a UNet++, or with every head in one pass.

:func:`predict_volume` runs a 2D model over the axial slices of a volume in batches and
returns class probabilities; :func:`prepare_model` prunes, optimises and moves a model
for one head once (:func:`select_head` is its pruning step), so that many volumes can be
predicted without preparing the model again. Prepared with ``head="all"``, a deeply
supervised UNet++ gives every head's probabilities from one pass of the full network
(head ``k``'s equal to those of the model pruned to ``k``), which is how heads are scored.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from featsup._checks import check_ndim, check_positive, check_type, resolve_device
from featsup._wrappers import supervised_student, unwrap
from featsup.data.preprocess import Preprocessing, preprocess_volume
from featsup.models.ensemble import Ensemble
from featsup.models.unetpp import UNetPlusPlus

__all__ = [
    "TTA",
    "PreparedModel",
    "StageHead",
    "check_head",
    "check_tta",
    "head_probability",
    "heads_of",
    "mean_head_logits",
    "model_preprocessing",
    "parse_head",
    "predict_volume",
    "prepare_model",
    "resolve_device",
    "select_head",
    "stack_context",
    "tta_flips",
]

Head: TypeAlias = int | Literal["all", "mean"] | None
"""A UNet++ head 1..d, None for the deepest, ``"all"`` for every head from one pass, or
``"mean"`` for the mean of every head's probabilities from one pass (UNet++'s "accurate
mode", beside the pruned "fast mode" of one head)."""

StageHead: TypeAlias = int | Literal["mean"] | None
"""The head a cascade stage predicts with: 1..d, None for the deepest, or ``"mean"``."""

TTA: TypeAlias = bool | Literal["flips"]
"""Test-time augmentation: False (none), True (left-right mirror) or ``"flips"`` (the
identity and the three in-plane flips: left-right, up-down and both)."""


def check_tta(name: str, tta: object) -> TTA:
    """``tta`` if it is a valid :data:`TTA`, else a ValueError naming ``name``.

    Example:
        >>> check_tta("tta", "flips")
        'flips'
    """
    if tta is True or tta is False or tta == "flips":
        return tta  # type: ignore[return-value]
    raise ValueError(f"{name}: expected False, True (left-right) or 'flips', got {tta!r}")


def check_head(name: str, head: object) -> StageHead:
    """``head`` if it names one output of a stage: 1..d, None or ``"mean"``.

    The upper bound d is the model's, checked where the model is pruned.

    Raises:
        ValueError: naming ``name``, for anything else.

    Example:
        >>> check_head("tumour_head", "mean"), check_head("liver_head", 2)
        ('mean', 2)
    """
    if head is None or head == "mean":
        return head  # type: ignore[return-value]
    if isinstance(head, (int, np.integer)) and not isinstance(head, bool) and head >= 1:
        return int(head)
    raise ValueError(f"{name}: expected a head 1..d, None (the deepest) or 'mean', got {head!r}")


def parse_head(text: str) -> StageHead:
    """A head from a command line: ``"1"``..``"d"`` or ``"mean"`` (argparse's ``type=``).

    Example:
        >>> parse_head("3"), parse_head("mean")
        (3, 'mean')
    """
    value: object = int(text) if text.strip().isdigit() else text
    try:
        return check_head("head", value)
    except ValueError:  # argparse shows a ValueError as "invalid parse_head value"
        raise argparse.ArgumentTypeError(f"expected a head 1..d or 'mean', got {text!r}") from None


def mean_head_logits(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, K, ...) logits whose softmax is the mean of the heads' softmax probabilities.

    ``log(mean_k softmax(z_k))``, computed in log space (float32), so that a mean-head model
    passes through every consumer of logits (:func:`predict_volume`, TTA, patch
    inference) unchanged. A one-logit head gives ``logit(mean_k sigmoid(z_k))``, one channel.

    Example:
        >>> z = [torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, -1.0]])]
        >>> mean = (z[0].softmax(1) + z[1].softmax(1)) / 2
        >>> torch.allclose(mean_head_logits(z).softmax(1), mean)
        True
    """
    if not outputs:
        raise ValueError("outputs: expected at least one head's logits, got none")
    z = torch.stack([o.float() for o in outputs])  # (N, B, K, ...)
    log_n = float(np.log(len(outputs)))
    if z.shape[2] == 1:  # sigmoid heads: log of the mean p and of the mean 1 - p
        on = torch.logsumexp(F.logsigmoid(z), dim=0) - log_n
        off = torch.logsumexp(F.logsigmoid(-z), dim=0) - log_n
        return on - off
    return torch.logsumexp(torch.log_softmax(z, dim=2), dim=0) - log_n


def head_probability(every: np.ndarray, head: StageHead) -> np.ndarray:
    """One head's probabilities from every head's, as ``predict_volume(head="all")`` gives.

    Args:
        every: (N, ...) probabilities of heads 1..N.
        head: 1..N, None (the deepest, N) or ``"mean"`` (their mean).

    Returns:
        (...) the head's probabilities (a view, or a new array for ``"mean"``).

    Example:
        >>> every = np.array([[0.2], [0.4], [0.9]])
        >>> head_probability(every, 2).tolist(), head_probability(every, "mean").round(2).tolist()
        ([0.4], [0.5])
    """
    if head == "mean":
        return every.mean(axis=0, dtype=np.float32)
    return every[-1 if head is None else int(head) - 1]


def tta_flips(tta: TTA) -> list[tuple[int, ...]]:
    """The axes (of the last two, H and W) each averaged prediction flips.

    Example:
        >>> tta_flips(False), tta_flips(True), tta_flips("flips")
        ([()], [(), (-1,)], [(), (-1,), (-2,), (-2, -1)])
    """
    check_tta("tta", tta)
    if tta == "flips":
        return [(), (-1,), (-2,), (-2, -1)]
    return [(), (-1,)] if tta else [()]


class PreparedModel(nn.Module):
    """A model ready to predict one head on one device: pruned, optimised, in eval mode.

    Made by :func:`prepare_model`; :func:`predict_volume` uses it as it is, so a model
    prepared once serves any number of volumes. Its forward returns the head's logits,
    with ``head="all"`` the list of every head's, and with ``head="mean"`` the logits of
    the heads' mean probabilities (:func:`mean_head_logits`).

    Attributes:
        network: the pruned (and, on CPU, fused) network.
        head: the head it computes (None: the deepest, or the model's only output;
            ``"all"``: every head, from one pass; ``"mean"``: their mean).
        device: where its parameters are.
        preprocessing: the preprocessing the source model was trained with, when its
            checkpoint recorded one (see :func:`model_preprocessing`), else None.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        head: Head,
        device: torch.device,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__()
        self.network, self.head, self.device = network, head, device
        self.preprocessing = preprocessing
        self._pick = None if isinstance(network, (UNetPlusPlus, Ensemble)) else head

    def forward(self, image: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, C, H, W) image -> (B, K, H, W) logits of the prepared head.

        With ``head="all"``, a list of them, shallowest head first.
        """
        output = self.network(image)
        if self.head in ("all", "mean"):
            every = list(output) if isinstance(output, (list, tuple)) else [output]
            return every if self.head == "all" else mean_head_logits(every)
        return _logits_of(output, self._pick)


def model_preprocessing(model: nn.Module) -> Preprocessing | None:
    """The preprocessing ``model`` was trained with, if its checkpoint recorded one.

    :func:`featsup.training.load_model` sets ``model.preprocessing`` from a checkpoint
    whose training data had a :class:`~featsup.data.Preprocessing` (the slice datasets
    do); a :class:`PreparedModel` keeps it. A FeatureSupervisor answers for its student.

    Args:
        model: a model, possibly wrapped (DDP, ``torch.compile``, FeatureSupervisor).

    Returns:
        The :class:`~featsup.data.Preprocessing`, or None when none was recorded.

    Example:
        >>> net = UNetPlusPlus(1, 2, widths=(4, 8))
        >>> model_preprocessing(net) is None
        True
        >>> net.preprocessing = Preprocessing(hu_window=(-50.0, 250.0))
        >>> model_preprocessing(net).hu_window
        (-50.0, 250.0)
    """
    for candidate in (model, supervised_student(model), unwrap(model)):
        found = getattr(candidate, "preprocessing", None)
        if isinstance(found, Preprocessing):
            return found
    return None


def prepare_model(
    model: nn.Module, *, head: Head = None, device: str | torch.device | None = "auto"
) -> PreparedModel:
    """Prune ``model`` to ``head``, optimise it for inference and move it to ``device``.

    Do this once per (model, head, device) and pass the result to :func:`predict_volume`;
    passing the raw model prepares it again on every call.

    Args:
        model: a 2D model returning logits or a list of them (a FeatureSupervisor
            predicts with its student).
        head: 1..4, the UNet++ head; None = the deepest; ``"all"``: every head, from
            one pass of the whole network; ``"mean"``: the mean of their probabilities.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...

    Returns:
        A :class:`PreparedModel` in eval mode.

    Raises:
        ValueError: if ``head`` is out of range for a UNet++ or the device is unknown.

    Example:
        >>> net = prepare_model(UNetPlusPlus(1, 2, widths=(4, 8)), head=1, device="cpu")
        >>> predict_volume(net, np.zeros((2, 16, 16), np.float32)).shape
        (2, 2, 16, 16)
    """
    if isinstance(model, PreparedModel):
        raise TypeError(
            "model: expected a model to prepare, got a PreparedModel; fix: use it as it is"
        )
    if head != "all":
        head = check_head("head", head)  # a NumPy integer becomes an int: _logits_of's index
    dev = resolve_device(device)
    network = select_head(model, head, optimize=dev.type == "cpu").to(dev)
    prep = model_preprocessing(model)
    return PreparedModel(network, head=head, device=dev, preprocessing=prep).eval()


def select_head(model: nn.Module, head: Head, *, optimize: bool = True) -> nn.Module:
    """Return the network that computes ``head`` alone, in eval mode.

    For a featsup :class:`~featsup.models.UNetPlusPlus` (or an
    :class:`~featsup.models.Ensemble` of them) this is ``model.pruned(head)`` (optimised
    for inference when ``optimize``), which computes only the nodes the head needs;
    ``head=None`` means the deepest head, and ``head="all"`` or ``"mean"`` a copy of the
    whole network that returns every head's logits (a :class:`PreparedModel` averages
    them for ``"mean"``). Any other model is returned as is and ``head`` picks an element
    when its output is a list.

    Raises:
        ValueError: if ``head`` is out of range for a UNet++.
    """
    student = supervised_student(model) or unwrap(model)  # a supervisor: with its student
    if not isinstance(student, (UNetPlusPlus, Ensemble)):
        return student.eval()
    if isinstance(head, str):  # "all" or "mean": every head from one pass
        whole = student.optimize_for_inference() if optimize else copy.deepcopy(student).eval()
        whole.deep_supervision = True  # every head's output, whatever it was trained with
        return whole
    return student.pruned(head=head or student.depth, optimize=optimize).eval()


def heads_of(model: nn.Module) -> int:
    """How many heads ``prepare_model(model, head="all")`` gives.

    A UNet++'s or an ensemble's depth (a supervisor's student's), else 1.

    Example:
        >>> heads_of(UNetPlusPlus(1, 2, widths=(4, 8, 16))), heads_of(nn.Conv2d(1, 2, 1))
        (2, 1)
    """
    student = supervised_student(model) or unwrap(model)
    return student.depth if isinstance(student, (UNetPlusPlus, Ensemble)) else 1


def stack_context(volume: np.ndarray, context: int) -> np.ndarray:
    """Stack each slice with ``context`` neighbours on each side as channels (2.5D).

    Indices are clamped at the ends of the volume, as in the slice datasets. The result
    is a new array 2 * context + 1 times the volume's size; :func:`predict_volume`'s
    ``context`` stacks batch by batch instead.

    Args:
        volume: (D, H, W) array.
        context: neighbours on each side (0 gives one channel: a view of ``volume``).

    Returns:
        (D, 2 * context + 1, H, W) array.

    Example:
        >>> stack_context(np.arange(3)[:, None, None], 1)[:, :, 0, 0].tolist()
        [[0, 0, 1], [0, 1, 2], [1, 2, 2]]
    """
    if context < 0:
        raise ValueError(f"context: expected an int >= 0, got {context!r}")
    if context == 0:
        return volume[:, None]
    depth = volume.shape[0]
    offsets = np.arange(-context, context + 1)
    index = np.clip(np.arange(depth)[:, None] + offsets[None, :], 0, depth - 1)
    return volume[index]


def _logits_of(output: torch.Tensor | list[torch.Tensor] | tuple, head: Head) -> torch.Tensor:
    if isinstance(output, (list, tuple)):
        return output[head - 1 if isinstance(head, int) else -1]
    return output


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits.float())
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits.float(), dim=1)


@torch.inference_mode()
def predict_volume(
    model: nn.Module,
    volume: np.ndarray | torch.Tensor,
    *,
    head: Head = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    size: int | tuple[int, int] | None = None,
    tta: TTA = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    preprocessing: Preprocessing | Literal["model"] | None = None,
    context: int = 0,
    classes: Sequence[int] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Predict class probabilities of every axial slice of a volume.

    Batches are written into one preallocated output as they come, so the memory taken
    is the output (``len(classes)`` x the float32 volume) plus one batch.

    Args:
        model: a :class:`PreparedModel` (used as it is), or a 2D segmentation model
            returning logits (B, C, H, W) or a list of them (deep supervision), which is
            prepared (pruned to ``head``, optimised, moved) for this call only.
        volume: (D, H, W) or (D, C, H, W) slices (any real dtype, converted to float32
            batch by batch), already preprocessed the way the model was trained; with
            ``preprocessing``, (D, H, W) Hounsfield units.
        head: 1..4, the UNet++ head to use; None = the deepest (or the prepared one);
            ``"all"``: every head, from one pass of the whole network; ``"mean"``: the
            mean of every head's probabilities, from one pass.
        batch_size: slices per forward pass (the result does not depend on it).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...; None is
            ``"auto"``, or the device of a prepared model.
        size: if given, slices are resized (bilinear) to this size for the model and the
            probabilities resized back to (H, W).
        tta: also predict the left-right mirrored slices (True), or every in-plane flip
            (``"flips"``: left-right, up-down and both), and average the probabilities;
            each flip costs one more pass.
        transform: optional callable applied to each (B, C, H, W) batch on the device.
        preprocessing: if given, ``volume`` is in HU and is preprocessed with it first:
            the training dataset's ``.preprocessing``, or ``"model"`` for the one the
            model's checkpoint recorded (:func:`model_preprocessing`).
        context: 2.5D neighbours on each side stacked as channels, batch by batch, as
            :func:`stack_context` does for the whole (D, H, W) volume (0: one channel).
        classes: indices of the classes to return, e.g. ``[1]`` for the foreground of a
            two-class model; None returns all K.
        progress: show a progress bar.

    Returns:
        (K, D, H, W) float32 probabilities summing to 1 over K (K = 2 for a one-logit
        model: background, foreground); with ``classes``, (len(classes), D, H, W). With
        ``head="all"`` (or a model prepared so), (N, K, D, H, W) for the N heads,
        shallowest first: N times the memory of one head.

    Raises:
        ValueError: if ``volume`` is not 3D or 4D (3D with ``preprocessing`` or
            ``context``), has no slice, ``batch_size`` < 1, ``context`` < 0, ``classes``
            is out of range, ``head`` / ``device`` contradict a prepared model, or
            ``preprocessing="model"`` and the model recorded none, or ``tta`` is not a
            :data:`TTA`.

    Example:
        >>> net = UNetPlusPlus(1, 2, widths=(4, 8))
        >>> predict_volume(net, np.zeros((3, 20, 20), np.float32), device="cpu").shape
        (2, 3, 20, 20)
        >>> predict_volume(net, np.zeros((3, 20, 20), np.float32), classes=[1]).shape
        (1, 3, 20, 20)
        >>> predict_volume(net, np.zeros((3, 20, 20), np.float32), head="all").shape
        (1, 2, 3, 20, 20)
        >>> predict_volume(net, np.zeros((3, 20, 20), np.float32), head="mean").shape
        (2, 3, 20, 20)
    """
    check_ndim("volume", volume, (3, 4), "(D, H, W) or (D, C, H, W)")
    check_positive("batch_size", batch_size)
    flips = tta_flips(tta)  # checks it
    if context < 0:
        raise ValueError(f"context: expected an int >= 0, got {context!r}")
    if context and volume.ndim != 3:
        raise ValueError(
            f"volume: expected (D, H, W) slices with context={context}, got shape "
            f"{tuple(volume.shape)}; fix: pass one channel per slice or context=0"
        )
    net = _prepared(model, head, device)
    if preprocessing == "model":
        preprocessing = net.preprocessing
        if preprocessing is None:
            raise ValueError(
                "preprocessing: expected a model whose checkpoint recorded its preprocessing, "
                "got none; fix: pass preprocessing=Preprocessing(...) as in training"
            )
    if preprocessing is not None:
        check_type("preprocessing", preprocessing, Preprocessing)
        check_ndim("volume", volume, 3, "(D, H, W) Hounsfield units with preprocessing")
        hu = volume.cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
        volume = preprocess_volume(hu, preprocessing=preprocessing)
    slices = torch.as_tensor(volume) if torch.is_tensor(volume) else torch.from_numpy(volume)
    if slices.shape[0] == 0:
        raise ValueError(f"volume: expected at least one slice, got shape {tuple(slices.shape)}")
    out: torch.Tensor | None = None  # (heads, K, D, H, W)
    starts = range(0, slices.shape[0], batch_size)
    for start in tqdm(starts, desc="slices", disable=not progress, leave=False):
        stop = min(start + batch_size, slices.shape[0])
        x = _batch(slices, start, stop, context).to(net.device)
        probs = _predict_batch(net, x, size=size, flips=flips, transform=transform)
        if classes is not None:
            probs = [p[:, _class_index(classes, p.shape[1])] for p in probs]
        if out is None:
            k, hw = probs[0].shape[1], probs[0].shape[2:]
            out = torch.empty((len(probs), k, slices.shape[0], *hw), dtype=torch.float32)
        for n, p in enumerate(probs):
            out[n, :, start:stop].copy_(p.transpose(0, 1))
    assert out is not None  # at least one slice, checked above
    return out.numpy() if net.head == "all" else out[0].numpy()


def _batch(slices: torch.Tensor, start: int, stop: int, context: int) -> torch.Tensor:
    """Slices ``start:stop`` as a float32 (B, C, H, W) batch, with 2.5D context."""
    if slices.ndim == 4:
        return slices[start:stop].float()
    if context == 0:
        return slices[start:stop, None].float()
    offsets = torch.arange(-context, context + 1)
    index = (torch.arange(start, stop)[:, None] + offsets).clamp(0, slices.shape[0] - 1)
    return slices[index].float()


def _predict_batch(
    net: PreparedModel,
    x: torch.Tensor,
    *,
    size: int | tuple[int, int] | None,
    flips: list[tuple[int, ...]],
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
) -> list[torch.Tensor]:
    """(B, C, H, W) batch on the device -> (B, K, H, W) float32 probabilities on the CPU.

    A list with one per head: one, or every head with ``head="all"``; each the mean over
    ``flips`` (:func:`tta_flips`) of the flipped input's prediction, flipped back.
    """
    out_hw = tuple(x.shape[-2:])
    if size is not None:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if transform is not None:
        x = transform(x)

    def heads(batch: torch.Tensor) -> list[torch.Tensor]:
        logits = net(batch)
        return [_probabilities(z) for z in (logits if isinstance(logits, list) else [logits])]

    probs = heads(x)
    for dims in flips[1:]:
        more = heads(x.flip(dims))
        probs = [p + q.flip(dims) for p, q in zip(probs, more, strict=True)]
    if len(flips) > 1:
        probs = [p / len(flips) for p in probs]
    if size is not None:
        probs = [F.interpolate(p, size=out_hw, mode="bilinear", align_corners=False) for p in probs]
    return [p.cpu() for p in probs]


def _class_index(classes: Sequence[int], count: int) -> list[int]:
    index = [int(k) for k in classes]
    if not index or any(not 0 <= k < count for k in index):
        raise ValueError(
            f"classes: expected class indices in [0, {count - 1}], got {list(classes)}; "
            f"fix: pick among the model's {count} classes"
        )
    return index


def _prepared(model: nn.Module, head: Head, device: str | torch.device | None) -> PreparedModel:
    """``model`` itself when prepared (checked against ``head`` and ``device``), else prepared."""
    if not isinstance(model, PreparedModel):
        return prepare_model(model, head=head, device="auto" if device is None else device)
    if head is not None and head != model.head:
        raise ValueError(
            f"head: expected None or {model.head} for a model prepared for head {model.head}, "
            f"got {head}; fix: prepare_model(model, head={head})"
        )
    if device is not None:
        wanted = resolve_device(device)
        if wanted.type != model.device.type or wanted.index not in (None, model.device.index):
            raise ValueError(
                f"device: expected None or {str(model.device)!r} for a model prepared there, "
                f"got {str(device)!r}; fix: prepare_model(model, device={str(device)!r})"
            )
    return model
