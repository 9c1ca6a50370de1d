"""Running the dense CRF on one field, on ROI crops and slice by slice (private).

On the CPU the torch backend runs with one intra-op thread (restored afterwards): its
operations are small, and with several threads on a busy machine every operation waits
for the slowest thread (one development run on the shared 2-core machine: 5.0 s
instead of 0.11 s per slice with 2 threads, docs/crf.md). Parallelism comes from
``workers`` instead: slice-wise processing of a volume runs in a process pool, each
worker with one thread. With the ``fork`` start method the workers inherit the inputs
and write into a shared-memory output, so no volume is pickled. On a GPU the torch
backend batches slices instead.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Literal

import numpy as np
import torch

from featsup.metrics import bounding_box
from featsup.postprocess._crf_inputs import CRFParams
from featsup.postprocess._crf_pydensecrf import mean_field_pydensecrf
from featsup.postprocess._crf_torch import mean_field_torch

__all__ = ["BackendName", "cpu_threads", "run_field", "run_slices"]

BackendName = Literal["torch", "pydensecrf"]
#: voxels per torch batch of slices (bounds the sparse matrices' memory).
_BATCH_VOXELS = {"cpu": 2**19, "cuda": 2**23}
#: slices are cut into about this many chunks per worker (load balancing).
_CHUNKS_PER_WORKER = 4
#: inputs and output of a slice-wise pool, inherited by forked workers.
_SHARED: dict[str, Any] = {}


@contextlib.contextmanager
def cpu_threads(device: torch.device, threads: int = 1) -> Iterator[None]:
    """Limit torch's intra-op threads while computing on the CPU (restored on exit)."""
    if device.type != "cpu" or torch.get_num_threads() == threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_field(
    backend: BackendName,
    probs: torch.Tensor,
    image: torch.Tensor,
    mask: torch.Tensor | None,
    rel_spacing: tuple[float, ...],
    params: CRFParams,
    device: torch.device,
) -> torch.Tensor:
    """One 2D or 3D field. probs (K, *S) float32 -> (K, *S) float32 on ``device``."""
    if backend == "pydensecrf":
        out = mean_field_pydensecrf(
            probs.cpu().numpy(),
            image.cpu().numpy(),
            None if mask is None else mask.cpu().numpy(),
            rel_spacing,
            params,
        )
        return torch.from_numpy(out).to(device)
    batch_mask = None if mask is None else mask.to(device)[None]
    refined = mean_field_torch(
        probs.to(device)[None], image.to(device).float()[None], batch_mask, rel_spacing, params
    )
    return refined[0]


def _torch_slices(
    probs: torch.Tensor,
    image: torch.Tensor,
    mask: torch.Tensor | None,
    rel_spacing: tuple[float, ...],
    params: CRFParams,
    device: torch.device,
) -> torch.Tensor:
    """Slices (K, n, H, W) in batches of whole slices on ``device``."""
    n, h, w = probs.shape[1:]
    step = _torch_step(h, w, device)
    out = []
    for start in range(0, n, step):
        part = slice(start, min(start + step, n))
        batch_probs = probs[:, part].to(device).transpose(0, 1)
        batch_mask = None if mask is None else mask[part].to(device)
        refined = mean_field_torch(
            batch_probs, image[part].to(device).float(), batch_mask, rel_spacing, params
        )
        out.append(refined.transpose(0, 1))
    return torch.cat(out, 1)


def _torch_step(h: int, w: int, device: torch.device) -> int:
    """Slices per batch of the torch backend (a function of the slice size only)."""
    return max(1, _BATCH_VOXELS.get(device.type, _BATCH_VOXELS["cpu"]) // (h * w))


def _run_chunk(
    backend: BackendName,
    probs: torch.Tensor,
    image: torch.Tensor,
    mask: torch.Tensor | None,
    rel_spacing: tuple[float, ...],
    params: CRFParams,
    device: torch.device,
) -> torch.Tensor:
    """Slices (K, n, H, W) -> refined (K, n, H, W) float32 on ``device``."""
    if backend == "torch":
        return _torch_slices(probs, image, mask, rel_spacing, params, device)
    out = []
    for i in range(probs.shape[1]):
        mask_i = None if mask is None else mask[i]
        out.append(run_field(backend, probs[:, i], image[i], mask_i, rel_spacing, params, device))
    return torch.stack(out, 1)


def _init_worker() -> None:
    torch.set_num_threads(1)


def _worker(args: tuple) -> np.ndarray:
    """Spawned worker: the chunk's arrays come pickled, the result goes back pickled."""
    backend, probs, image, mask, rel_spacing, params = args
    mask_t = None if mask is None else torch.from_numpy(mask)
    out = _run_chunk(
        backend,
        torch.from_numpy(probs),
        torch.from_numpy(image),
        mask_t,
        rel_spacing,
        params,
        torch.device("cpu"),
    )
    return out.numpy()


def _forked_worker(chunk: tuple[int, int]) -> None:
    """Forked worker: slices ``chunk`` of the inherited inputs into the shared output."""
    start, stop = chunk
    sh = _SHARED
    mask = None if sh["mask"] is None else sh["mask"][start:stop]
    part = sh["index"][start:stop]
    sh["out"][:, start:stop] = _run_chunk(
        sh["backend"],
        sh["probs"][:, part],
        sh["image"][part],
        mask,
        sh["rel_spacing"],
        sh["params"],
        torch.device("cpu"),
    )


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` where available (workers start in milliseconds), else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def run_slices(
    backend: BackendName,
    probs: torch.Tensor,
    image: torch.Tensor,
    mask: torch.Tensor | None,
    rel_spacing: tuple[float, ...],
    params: CRFParams,
    device: torch.device,
    workers: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Slice-wise CRF of a volume; slices with an empty mask are returned unchanged.

    In this process (one worker, or a GPU) the slices go batch by batch from ``probs``
    to the output, so no other volume-sized copy is made; ``out`` may be ``probs``.

    Args:
        backend: ``"torch"`` or ``"pydensecrf"``.
        probs: (K, D, H, W) float32 probabilities (any device).
        image: (D, H, W) intensities.
        mask: (D, H, W) bool or None.
        rel_spacing: in-plane spacing (2 values).
        params: CRF parameters.
        device: computation device.
        workers: processes for CPU computation (1 runs in this process).
        out: (K, D, H, W) float32 on ``device`` to write into (None: a new tensor).

    Returns:
        (K, D, H, W) float32 on ``device``: ``out`` when given.
    """
    if out is None:
        out = probs.to(device, copy=True)
    elif out.data_ptr() != probs.data_ptr():
        out.copy_(probs)
    if mask is None:
        todo = list(range(probs.shape[1]))
    else:
        todo = torch.nonzero(mask.flatten(1).any(1)).flatten().tolist()
    if not todo:
        return out
    index = torch.tensor(todo)
    sub_mask = None
    box: tuple[slice, ...] = (slice(None), slice(None))
    if mask is not None:  # crop to the mask's in-plane bounding box over all slices
        sub_mask = mask[index]
        box = bounding_box(sub_mask.any(0)) or box
        in_box = (slice(None), *box)
        all_box = (slice(None), *in_box)
        probs, image, sub_mask = probs[all_box], image[in_box], sub_mask[in_box]
    region = out[(slice(None), slice(None), box[0], box[1])]
    if workers == 1 or device.type != "cpu" or len(todo) == 1:
        # batches as _torch_slices cuts them (the same results), each read before written
        h, w = probs.shape[2:]
        step = _torch_step(h, w, device) if backend == "torch" else 1
        with cpu_threads(device):
            for start in range(0, len(todo), step):
                sel = index[start : start + step]
                part_mask = None if sub_mask is None else sub_mask[start : start + step]
                refined = _run_chunk(
                    backend, probs[:, sel], image[sel], part_mask, rel_spacing, params, device
                )
                region[:, sel.to(device)] = refined.to(device)
        return out
    refined = _pool_map(backend, probs, image, sub_mask, index, rel_spacing, params, workers)
    region[:, index.to(device)] = refined.to(device)
    return out


def _pool_map(
    backend: BackendName,
    probs: torch.Tensor,
    image: torch.Tensor,
    sub_mask: torch.Tensor | None,
    index: torch.Tensor,
    rel_spacing: tuple[float, ...],
    params: CRFParams,
    workers: int,
) -> torch.Tensor:
    """Slices ``index`` of the volume in a process pool, results in slice order."""
    n_chunks = min(len(index), workers * _CHUNKS_PER_WORKER)
    bounds = torch.tensor_split(torch.arange(len(index)), n_chunks)
    chunks = [(int(c[0]), int(c[-1]) + 1) for c in bounds]
    context = _pool_context()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    if context.get_start_method() == "fork":
        out = torch.empty(probs.shape[0], len(index), *probs.shape[2:]).share_memory_()
        _SHARED.update(
            backend=backend,
            probs=probs.cpu(),
            image=image.cpu(),
            index=index,
            mask=None if sub_mask is None else sub_mask.cpu(),
            out=out,
            rel_spacing=rel_spacing,
            params=params,
        )
        try:
            with pool:
                list(pool.map(_forked_worker, chunks))
        finally:
            _SHARED.clear()
        return out
    jobs = []
    for start, stop in chunks:
        sel = index[start:stop]
        mask_np = None if sub_mask is None else sub_mask[start:stop].cpu().numpy()
        jobs.append(
            (
                backend,
                probs[:, sel].cpu().numpy(),
                image[sel].cpu().numpy(),
                mask_np,
                rel_spacing,
                params,
            )
        )
    with pool:
        results = list(pool.map(_worker, jobs))
    return torch.from_numpy(np.concatenate(results, axis=1))
