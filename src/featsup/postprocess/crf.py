"""Fully connected (dense) CRF post-processing, paper section 4.1.4 (eq. 1-6).

The CRF refines a network's class probabilities with the Gibbs energy of eq. 3: the
unary ``-log p`` from the network and the pairwise Potts term of eq. 4-5,

    k(f_i, f_j) = w1 exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)
                + w2 exp(-|p_i - p_j|^2 / 2 theta_gamma^2),

solved approximately (eq. 6) by mean-field inference (Krähenbühl and Koltun, 2011). Two
backends compute the same model: ``pydensecrf`` (permutohedral lattice, the optional
``crf`` extra) and ``torch`` (bilateral grid and separable Gaussian blur, CPU or CUDA).
See ``docs/crf.md`` for the model, the defaults and the measured agreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar, cast

import numpy as np
import torch
from torch import nn

from featsup._checks import check_choice, resolve_device
from featsup.metrics import bounding_box
from featsup.postprocess._crf_inputs import (
    CRFParams,
    as_tensor,
    check_image,
    check_mask,
    check_params,
    check_probs,
    relative_spacing,
)
from featsup.postprocess._crf_pydensecrf import import_pydensecrf, pydensecrf_available
from featsup.postprocess._crf_run import BackendName, cpu_threads, run_field, run_slices

__all__ = [
    "CRF_PRESETS",
    "DenseCRF",
    "crf_labels",
    "dense_crf",
]

Backend = Literal["auto", "torch", "pydensecrf"]
Mode = Literal["auto", "2d", "3d"]
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

#: Parameter sets of eq. 5 (thetas in in-plane voxels, intensity on a 0..255 scale).
#: ``"liver"`` (liver / background stage) and ``"tumour"`` (tumour / liver stage, with the
#: liver as ``mask``) were chosen by mean Dice on simulated predictions for phantom seeds
#: 5000-5003 at 48 x 256 x 256 (1.4 mm pixels), ``scripts/tune_crf_presets.py``. Both
#: switch the smoothness kernel off (``w2 = 0``; ``theta_gamma`` is then unused). On
#: held-out seeds the liver preset raised Dice and the tumour preset lowered it: tune on
#: your own validation cases, and leave a stage without CRF where it does not help.
#: ``"christ2016"`` is the 3D dense CRF released with the cascaded FCN of Christ et al.
#: (MICCAI 2016, DenseInferenceWrapper defaults). Numbers: docs/crf.md.
CRF_PRESETS: dict[str, dict[str, float | int]] = {
    "liver": {"theta_alpha": 5.0, "theta_beta": 10.0, "theta_gamma": 3.0, "w1": 30.0,
              "w2": 0.0, "iterations": 20},
    "tumour": {"theta_alpha": 2.0, "theta_beta": 3.0, "theta_gamma": 3.0, "w1": 1.0,
               "w2": 0.0, "iterations": 5},
    "christ2016": {"theta_alpha": 60.0, "theta_beta": 20.0, "theta_gamma": 3.0, "w1": 10.0,
                   "w2": 3.0, "iterations": 10},
}  # fmt: skip


def _resolve_backend(backend: str, device: torch.device) -> BackendName:
    check_choice("backend", backend, ("auto", "torch", "pydensecrf"))
    if backend == "auto":
        use_lattice = device.type == "cpu" and pydensecrf_available()
        return "pydensecrf" if use_lattice else "torch"
    if backend == "pydensecrf":
        import_pydensecrf()  # raises ImportError naming the extra
        if device.type != "cpu":
            raise ValueError(
                f"backend: 'pydensecrf' runs on the CPU only, got device {str(device)!r}; "
                "use backend='torch' on a GPU"
            )
    return backend  # type: ignore[return-value]


def _resolve_mode(mode: str, probs: torch.Tensor) -> Literal["2d", "3d"]:
    check_choice("mode", mode, ("auto", "2d", "3d"))
    if mode == "3d" and probs.ndim == 3:
        raise ValueError(
            f"mode: '3d' needs a volume (K, D, H, W), got probs of shape {tuple(probs.shape)}; "
            "use mode='2d' or 'auto'"
        )
    if mode == "auto":
        return "2d" if probs.ndim == 3 else "3d"
    return mode  # type: ignore[return-value]


def dense_crf(
    probs: ArrayT,
    image: np.ndarray | torch.Tensor,
    *,
    mode: Mode = "auto",
    spacing: Sequence[float] | None = None,
    theta_alpha: float = 10.0,
    theta_beta: float = 10.0,
    theta_gamma: float = 3.0,
    w1: float = 10.0,
    w2: float = 3.0,
    iterations: int = 10,
    backend: Backend = "auto",
    mask: np.ndarray | torch.Tensor | None = None,
    workers: int = 1,
    device: str | torch.device | None = None,
    out: np.ndarray | torch.Tensor | None = None,
) -> ArrayT:
    """Refine class probabilities with a fully connected CRF (eq. 3-6).

    Args:
        probs: (K, H, W) or (K, D, H, W) class probabilities (K >= 2), float16/32/64, in
            [0, 1] and summing to 1 over axis 0; numpy array or tensor.
        image: (H, W) or (D, H, W) intensities on the scale of ``theta_beta``: the
            HU-windowed CT (``featsup.data.hu_window``) rescaled to 0..255.
        mode: ``"2d"`` refines each slice on its own (a volume slice by slice), ``"3d"``
            runs one CRF over the volume; ``"auto"`` is 2d for a slice, 3d for a volume.
        spacing: voxel spacing per spatial axis ((sy, sx) or (sz, sy, sx)), folded into
            the positions; thetas are in units of the finest in-plane spacing. None: 1.
        theta_alpha: spatial width (standard deviation, voxels) of the appearance
            kernel, eq. 5. ``CRF_PRESETS["liver"]`` and ``CRF_PRESETS["tumour"]`` hold
            the values tuned per stage on phantoms (docs/crf.md).
        theta_beta: intensity width of the appearance kernel (image units).
        theta_gamma: spatial width of the smoothness kernel (voxels).
        w1: weight of the appearance kernel (>= 0).
        w2: weight of the smoothness kernel (>= 0).
        iterations: mean-field iterations (0 returns ``probs``, clipped at 1e-5).
        backend: ``"pydensecrf"``, ``"torch"``, or ``"auto"`` (pydensecrf if installed
            and the device is the CPU, else torch).
        mask: (H, W) or (D, H, W) bool; only these voxels form the CRF (e.g. the liver
            for the tumour stage) and elsewhere ``probs`` is returned. In 3d mode the CRF
            runs on the mask's bounding box.
        workers: processes for slice-wise (2d) processing of a volume on the CPU. The
            torch backend uses one intra-op thread on the CPU (restored afterwards), so
            parallelism comes from here.
        device: computation device of the torch backend; None: the device of ``probs``
            (CPU for numpy). On CUDA, slices are batched and ``workers`` is not used.
        out: float32 array (or tensor on the computation device) of ``probs``' shape to
            write the result into; it may be ``probs`` itself, refined in place, which
            in 2d mode with one worker spares a volume-sized copy. None: a new array.

    Returns:
        Refined probabilities of the shape, kind (numpy / torch), dtype and device of
        ``probs``; ``out`` itself when given.

    Raises:
        TypeError: if an input is neither a numpy array nor a tensor, or a count is not an int.
        ValueError: on shapes, dtypes or values that do not fit (see the message).
        ImportError: if ``backend="pydensecrf"`` and the ``crf`` extra is missing.

    Example:
        A bright square predicted with a hole in it; the CRF fills the hole.

        >>> fg = np.full((32, 32), 0.35, dtype=np.float32)
        >>> fg[8:24, 8:24], fg[14:18, 14:18] = 0.6, 0.45
        >>> p = np.stack([1 - fg, fg])
        >>> image = np.full((32, 32), 50.0)
        >>> image[8:24, 8:24] = 200.0
        >>> out = dense_crf(p, image, backend="torch")
        >>> out.shape, out.dtype
        ((2, 32, 32), dtype('float32'))
        >>> int(p.argmax(0).sum()), int(out.argmax(0).sum())
        (240, 256)
    """
    probs_t, image_t = as_tensor("probs", probs), as_tensor("image", image)
    check_probs(probs_t)
    check_image(image_t, probs_t)
    mask_t = None if mask is None else check_mask(as_tensor("mask", mask), image_t)
    check_params(
        theta_alpha=theta_alpha,
        theta_beta=theta_beta,
        theta_gamma=theta_gamma,
        w1=w1,
        w2=w2,
        iterations=iterations,
        workers=workers,
    )
    run_mode = _resolve_mode(mode, probs_t)
    run_device = probs_t.device if device is None else resolve_device(device)
    run_backend = _resolve_backend(backend, run_device)
    rel = relative_spacing(spacing, probs_t.ndim - 1)
    params = CRFParams(
        float(theta_alpha),
        float(theta_beta),
        float(theta_gamma),
        float(w1),
        float(w2),
        iterations,
    )
    work = probs_t.float()  # the image is made float batch by batch
    target = None if out is None else _out_tensor(out, probs_t, run_device)
    if run_mode == "2d" and probs_t.ndim == 4:
        args = (run_backend, work, image_t, mask_t, rel[-2:], params, run_device, workers)
        result = run_slices(*args, out=target)
    else:
        result = _run_whole(run_backend, work, image_t, mask_t, rel, params, run_device)
        if target is not None:
            target.copy_(result)
    return _like(result, probs) if out is None else cast(ArrayT, out)


def _out_tensor(
    out: np.ndarray | torch.Tensor, probs: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """``out`` as a tensor sharing its memory, checked: float32, ``probs``' shape, on ``device``."""
    target = as_tensor("out", out)
    if target.dtype != torch.float32 or target.shape != probs.shape or target.device != device:
        raise ValueError(
            f"out: expected float32 of shape {tuple(probs.shape)} on {device}, got "
            f"{target.dtype} {tuple(target.shape)} on {target.device}; fix: pass "
            "np.empty_like(probs, dtype=np.float32), probs itself when float32, or None"
        )
    if isinstance(out, np.ndarray) and target.data_ptr() != out.__array_interface__["data"][0]:
        raise ValueError(
            "out: expected a C-contiguous array of native byte order; fix: np.ascontiguousarray"
        )
    return target


def _run_whole(
    backend: BackendName,
    probs: torch.Tensor,
    image: torch.Tensor,
    mask: torch.Tensor | None,
    rel: tuple[float, ...],
    params: CRFParams,
    device: torch.device,
) -> torch.Tensor:
    """One CRF over the whole slice / volume, or over the mask's bounding box."""
    if mask is None:
        with cpu_threads(device):
            return run_field(backend, probs, image, None, rel, params, device)
    box = bounding_box(mask)
    out = probs.to(device, copy=True)
    if box is None:
        return out
    roi = (slice(None), *box)
    with cpu_threads(device):
        out[roi] = run_field(backend, probs[roi], image[box], mask[box], rel, params, device)
    return out


def _like(out: torch.Tensor, reference: ArrayT) -> ArrayT:
    """``out`` as the kind, dtype and device of ``reference``."""
    if isinstance(reference, np.ndarray):
        return out.cpu().numpy().astype(reference.dtype, copy=False)
    return out.to(device=reference.device, dtype=reference.dtype)


def crf_labels(probs: ArrayT, image: np.ndarray | torch.Tensor, **kwargs: object) -> ArrayT:
    """Label map of the refined probabilities: ``argmax`` over classes of ``dense_crf``.

    Args:
        probs: (K, H, W) or (K, D, H, W) class probabilities, as for ``dense_crf``.
        image: (H, W) or (D, H, W) intensities.
        **kwargs: keyword options of ``dense_crf``.

    Returns:
        (H, W) or (D, H, W) int64 labels, numpy or torch like ``probs``.

    Example:
        >>> p = np.stack([np.full((8, 8), 0.8), np.full((8, 8), 0.2)]).astype(np.float32)
        >>> crf_labels(p, np.zeros((8, 8)), backend="torch").sum()
        np.int64(0)
    """
    refined = dense_crf(probs, image, **kwargs)  # type: ignore[arg-type]
    if isinstance(refined, np.ndarray):
        return refined.argmax(0).astype(np.int64)
    return refined.argmax(0)


class DenseCRF(nn.Module):
    """Dense CRF post-processing as a module storing the options of ``dense_crf``.

    It has no parameters; ``forward(probs, image, mask=None, spacing=None)`` calls
    ``dense_crf`` with the stored options (numpy or torch in, the same kind out).

    Example:
        >>> crf = DenseCRF(backend="torch", iterations=5)
        >>> p = torch.full((2, 16, 16), 0.5)
        >>> crf(p, torch.zeros(16, 16)).shape
        torch.Size([2, 16, 16])
    """

    def __init__(
        self,
        *,
        mode: Mode = "auto",
        theta_alpha: float = 10.0,
        theta_beta: float = 10.0,
        theta_gamma: float = 3.0,
        w1: float = 10.0,
        w2: float = 3.0,
        iterations: int = 10,
        backend: Backend = "auto",
        workers: int = 1,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        check_choice("mode", mode, ("auto", "2d", "3d"))
        check_choice("backend", backend, ("auto", "torch", "pydensecrf"))
        check_params(
            theta_alpha=theta_alpha,
            theta_beta=theta_beta,
            theta_gamma=theta_gamma,
            w1=w1,
            w2=w2,
            iterations=iterations,
            workers=workers,
        )
        self.options = {
            "mode": mode,
            "theta_alpha": theta_alpha,
            "theta_beta": theta_beta,
            "theta_gamma": theta_gamma,
            "w1": w1,
            "w2": w2,
            "iterations": iterations,
            "backend": backend,
            "workers": workers,
            "device": device,
        }

    def forward(
        self,
        probs: ArrayT,
        image: np.ndarray | torch.Tensor,
        mask: np.ndarray | torch.Tensor | None = None,
        spacing: Sequence[float] | None = None,
    ) -> ArrayT:
        """Refined probabilities (see ``dense_crf``)."""
        return dense_crf(probs, image, mask=mask, spacing=spacing, **self.options)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        """The stored options, shown by ``print(module)``."""
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
