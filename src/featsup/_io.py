"""Atomic, durable file writes: the one implementation checkpoints and cascade files share."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_torch_save"]


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable; folders cannot be opened on Windows, where this is a no-op."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """:func:`torch.save` ``obj`` to ``path`` atomically: temporary file, fsync, rename.

    If anything fails or the process is interrupted, ``path`` keeps its previous content
    (or stays absent) and the temporary file is removed where Python still runs.

    Args:
        obj: what to save.
        path: destination file; its folder is created if needed.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> p = atomic_torch_save({"step": 3}, os.path.join(tempfile.mkdtemp(), "a.pt"))
        >>> torch.load(p)["step"]
        3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_folder(path.parent)
    return path
