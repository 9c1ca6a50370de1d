"""Look through model wrappers: DDP, DataParallel and :func:`torch.compile`.

One home for two questions asked across the library: "which network is inside these
wrappers?" (:func:`unwrap`) and "is this a :class:`~featsup.supervision.FeatureSupervisor`,
and which network is its student?" (:func:`supervised_student`).

A leaf module: it imports nothing of featsup at module level, so that any package
(training, inference, supervision) may use it without import cycles.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

__all__ = ["supervised_student", "unwrap", "wrapper_layers"]


def _inner(model: nn.Module) -> nn.Module | None:
    """The module one wrapper holds, or None when ``model`` is no wrapper."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    inner = model.__dict__.get("_modules", {}).get("_orig_mod")  # torch.compile's OptimizedModule
    return inner if isinstance(inner, nn.Module) else None


def wrapper_layers(model: nn.Module) -> Iterator[nn.Module]:
    """Yield ``model``, then each module it wraps, outermost first, the network last.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> [type(m).__name__ for m in wrapper_layers(nn.DataParallel(net))]
        ['DataParallel', 'Linear']
    """
    layer: nn.Module | None = model
    while layer is not None:
        yield layer
        layer = _inner(layer)


def unwrap(model: nn.Module) -> nn.Module:
    """Return the network inside any nesting of DDP, DataParallel and compiled wrappers.

    Args:
        model: a module, possibly wrapped.

    Returns:
        The innermost module (``model`` itself when it is not wrapped).

    Example:
        >>> net = nn.Linear(2, 2)
        >>> unwrap(nn.DataParallel(net)) is net
        True
    """
    *_, network = wrapper_layers(model)
    return network


def supervised_student(model: nn.Module) -> nn.Module | None:
    """The student of a :class:`~featsup.supervision.FeatureSupervisor`, else None.

    ``model`` may be the supervisor or any wrapper around it; the student returned is the
    network itself, unwrapped too (a student given as ``torch.compile(net)`` or
    ``DDP(net)`` gives ``net``).

    Args:
        model: any module, possibly wrapped.

    Returns:
        The unwrapped student, or None when ``model`` is not a (wrapped) supervisor.

    Example:
        >>> from featsup.models import UNetPlusPlus
        >>> from featsup.supervision import FeatureSupervisor
        >>> student = UNetPlusPlus(1, 2, widths=(4, 8, 16))
        >>> teacher = UNetPlusPlus(2, 2, widths=(4, 8, 16), skip_connections=False)
        >>> sup = FeatureSupervisor(student, teacher)
        >>> supervised_student(nn.DataParallel(sup)) is student, supervised_student(student)
        (True, None)
        >>> sup.close()
    """
    from featsup.supervision.supervisor import FeatureSupervisor  # supervision imports training

    network = unwrap(model)
    if not isinstance(network, FeatureSupervisor):
        return None
    return unwrap(network.student)
