"""An ensemble of UNet++ models that averages their class probabilities.

Independent trainings of one recipe (other seeds, other folds) make different mistakes;
averaging their softmax probabilities, as nnU-Net does with its folds, keeps what they
agree on. :class:`Ensemble` is a model like its members: it prunes to a head (every
member to that head), optimises for inference, saves and loads through its ``config``,
so a :class:`~featsup.inference.Cascade` or :func:`~featsup.inference.predict_volume`
takes it where it takes one UNet++.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from featsup.models.unetpp import UNetPlusPlus

_SHARED = ("in_channels", "num_classes", "depth", "spatial_dims")


def mean_probability_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits whose probabilities are the mean of the probabilities of ``logits``.

    With C > 1 classes, ``log(mean_k softmax(z_k))``, whose softmax is the mean softmax;
    with one channel (a sigmoid output, as ``predict_volume`` reads it),
    ``log(mean_k sigmoid(z_k)) - log(mean_k sigmoid(-z_k))``, whose sigmoid is the mean
    sigmoid. Both are computed as log-sum-exps of log-probabilities, so that no
    probability underflows to ``log(0)``.

    Args:
        logits: K tensors of one shape (B, C, *S), classes on axis 1.

    Returns:
        (B, C, *S) float32 logits of the mean probabilities.

    Raises:
        ValueError: if ``logits`` is empty.

    Example:
        >>> a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> mean_probability_logits([a, b]).softmax(1)
        tensor([[0.5000, 0.5000]])
        >>> mean_probability_logits([torch.tensor([[3.0]]), torch.tensor([[-3.0]])]).sigmoid()
        tensor([[0.5000]])
    """
    if not logits:
        raise ValueError("logits: expected at least one tensor, got none")
    log_k = math.log(len(logits))
    z = torch.stack([t.float() for t in logits])  # (K, B, C, *S)
    if z.shape[2] == 1:  # one channel: the mean sigmoid, as its logit
        yes = torch.logsumexp(nn.functional.logsigmoid(z), 0)
        no = torch.logsumexp(nn.functional.logsigmoid(-z), 0)
        return yes - no
    return torch.logsumexp(z.log_softmax(2), 0) - log_k


class Ensemble(nn.Module):
    """Average the class probabilities of several UNet++ models of one shape.

    The members must agree on input channels, classes, depth and spatial dimensions;
    their widths may differ. The forward returns logits whose softmax is the mean of the
    members' softmaxes (their sigmoid the mean sigmoid, for one output channel;
    :func:`mean_probability_logits`); with deep supervision, one such tensor per head.
    Any code that turns a model's logits into probabilities (``predict_volume``, the
    cascade, the metrics) therefore sees the averaged probabilities.

    Args:
        members: the trained models (featsup :class:`~featsup.models.UNetPlusPlus`).

    Raises:
        TypeError: if a member is not a UNet++.
        ValueError: if there is no member or they disagree on channels, classes, depth or
            spatial dimensions.

    Example:
        >>> a, b = UNetPlusPlus(1, 2, widths=(4, 8)), UNetPlusPlus(1, 2, widths=(4, 8))
        >>> both = Ensemble([a, b]).eval()
        >>> x = torch.randn(1, 1, 16, 16)
        >>> mean = (a.eval()(x)[-1].softmax(1) + b.eval()(x)[-1].softmax(1)) / 2
        >>> torch.allclose(both(x)[-1].softmax(1), mean, atol=1e-6)
        True
        >>> both.pruned(1)(x).shape
        torch.Size([1, 2, 16, 16])
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("members: expected at least one model, got none")
        for k, member in enumerate(members):
            if not isinstance(member, UNetPlusPlus):
                raise TypeError(
                    f"members[{k}]: expected a featsup UNetPlusPlus, got "
                    f"{type(member).__name__}; fix: ensemble featsup UNet++ models"
                )
        first = members[0]
        for name in _SHARED:
            values = [getattr(m, name) for m in members]
            if any(v != values[0] for v in values):
                raise ValueError(
                    f"members: expected one {name} for every member, got {values}; fix: "
                    "ensemble trainings of one recipe"
                )
        self.members = nn.ModuleList(members)
        found = getattr(first, "preprocessing", None)  # set by load_model from a checkpoint
        if found is not None and all(getattr(m, "preprocessing", None) == found for m in members):
            self.preprocessing = found

    # ------------------------------------------------------------------ shared attributes
    @property
    def unets(self) -> list[UNetPlusPlus]:
        """The members, typed."""
        return [cast(UNetPlusPlus, m) for m in self.members]

    @property
    def in_channels(self) -> int:
        """Input channels of every member."""
        return self.unets[0].in_channels

    @property
    def num_classes(self) -> int:
        """Classes of every member."""
        return self.unets[0].num_classes

    @property
    def depth(self) -> int:
        """Depth (number of heads) of every member."""
        return self.unets[0].depth

    @property
    def spatial_dims(self) -> int:
        """2 or 3, as every member."""
        return self.unets[0].spatial_dims

    @property
    def deep_supervision(self) -> bool:
        """Whether the forward returns every head (setting it sets every member's)."""
        return self.unets[0].deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        for member in self.unets:
            member.deep_supervision = value

    @property
    def config(self) -> dict[str, Any]:
        """The members' configs, so that a checkpoint or cascade file rebuilds it."""
        return {"members": [m.config for m in self.unets]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Ensemble:
        """Build an (untrained) ensemble from :attr:`config`."""
        members = config.get("members") if isinstance(config, dict) else None
        if not isinstance(members, list):
            raise ValueError(f"config: expected {{'members': [...]}}, got {config!r}")
        return cls([UNetPlusPlus.from_config(c) for c in members])

    # ------------------------------------------------------------------ forward
    def forward(self, image: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Averaged logits of the members.

        Args:
            image: (B, in_channels, H, W), or (B, in_channels, D, H, W) in 3D.

        Returns:
            (B, num_classes, *S) logits whose softmax is the members' mean probability;
            with deep supervision a list of them, shallowest head first.
        """
        outputs = [member(image) for member in self.members]
        if isinstance(outputs[0], (list, tuple)):
            return [mean_probability_logits(heads) for heads in zip(*outputs, strict=True)]
        return mean_probability_logits(outputs)

    # ------------------------------------------------------------------ pruning / inference
    def pruned(self, head: int, *, optimize: bool = False) -> Ensemble:
        """Every member pruned to ``head`` (see :meth:`UNetPlusPlus.pruned`), ensembled.

        Raises:
            ValueError: if ``head`` is not in 1..depth.
        """
        return Ensemble([m.pruned(head, optimize=optimize) for m in self.unets])

    def optimize_for_inference(self) -> Ensemble:
        """Every member optimised for eval-mode inference, ensembled (a new model)."""
        return Ensemble([m.optimize_for_inference() for m in self.unets]).eval()
