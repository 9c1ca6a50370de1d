"""Pure-PyTorch mean-field inference for the fully connected CRF (private backend).

The model is the one of Krähenbühl and Koltun (2011) as implemented by pydensecrf: a
Potts compatibility, an appearance kernel over (position, intensity) and a smoothness
kernel over position (the paper's eq. 5), each normalised symmetrically
(``NORMALIZE_SYMMETRIC``: ``D^-1/2 K D^-1/2`` with ``D = diag(K 1)``), and the
mean-field update ``Q <- softmax(-U + w1 K1 Q + w2 K2 Q)``.

The filtering differs from pydensecrf's permutohedral lattice:

* the smoothness kernel is an exact separable Gaussian blur (truncated at 3 sigma);
* the appearance kernel uses a bilateral grid over (position, intensity): multilinear
  splat, separable Gaussian blur, multilinear slice. The blur width is reduced by the
  variance that the two interpolations add, so the effective kernel has the requested
  standard deviation (the lattice is calibrated the same way; both are approximations
  of the exact Gaussian).

Every kernel includes the point itself (as the lattice does).
"""

from __future__ import annotations

import itertools
import math
import warnings

import torch
import torch.nn.functional as F

from featsup.postprocess._crf_inputs import PROB_CLIP, CRFParams

__all__ = ["mean_field_torch", "unary_from_probs"]

#: bilateral-grid cell size in feature units (the kernel has standard deviation 1). One
#: cell per standard deviation is the classic bilateral-grid sampling (Chen, Paris and
#: Durand 2007); finer cells (1/2, 1/3) changed the agreement with pydensecrf by < 0.01 %
#: of voxels on phantom slices but cost more time at small thetas.
_GRID_STEP = 1.0
#: Gaussian blurs are truncated at this many standard deviations.
_TRUNCATE = 3.0


def unary_from_probs(probs: torch.Tensor) -> torch.Tensor:
    """Unary energy ``-log(max(p, PROB_CLIP))`` (same as ``pydensecrf.utils``)."""
    return -torch.log(probs.clamp(min=PROB_CLIP))


def _gaussian_taps(sigma: float, size: int, device: torch.device) -> torch.Tensor:
    """Sampled Gaussian ``exp(-k^2 / (2 sigma^2))`` for ``|k| <= 3 sigma`` (and < size)."""
    radius = max(0, min(math.ceil(_TRUNCATE * sigma), size - 1))
    k = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    if sigma <= 0:
        return (k == 0).float()
    return torch.exp(-0.5 * (k / sigma) ** 2)


def _blur_axis(x: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero-padded convolution of ``x`` along ``dim`` with symmetric ``taps``.

    Written as shifted multiply-adds rather than ``conv1d`` / ``conv2d`` with
    single-channel inputs: it works for any rank.
    """
    radius = taps.numel() // 2
    if radius == 0:
        return x * taps[0]
    n = x.shape[dim]
    pad = [0, 0] * (x.ndim - 1 - dim) + [radius, radius]
    padded = F.pad(x, pad)
    out = padded.narrow(dim, radius, n) * taps[radius]
    for j in range(radius):
        out += (padded.narrow(dim, j, n) + padded.narrow(dim, 2 * radius - j, n)) * taps[j]
    return out


def _gaussian_blur(x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Separable blur of the trailing ``len(sigmas)`` dimensions of ``x``."""
    nd = len(sigmas)
    for axis, sigma in enumerate(sigmas):
        dim = x.ndim - nd + axis
        x = _blur_axis(x, _gaussian_taps(sigma, x.shape[dim], x.device), dim)
    return x


def _csr(
    crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """CSR matrix; int32 indices when they fit (what MKL and cuSPARSE use natively)."""
    if max(size[0], size[1], col.numel()) < 2**31:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(crow, col, val, size, check_invariants=False)


def _axis_view(values: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """A 1D tensor shaped to broadcast along ``axis`` of an ``ndim``-dimensional tensor."""
    shape = [1] * ndim
    shape[axis] = values.numel()
    return values.view(shape)


class BilateralGrid:
    """Splat / blur / slice over (position, intensity) for a batch of fields.

    Grid cells are an integer number ``m`` of voxels along each spatial axis (about
    ``theta_alpha``) and ``theta_beta`` along intensity. Splat and
    slice are sparse matrices of multilinear weights; the splat is kept as one matrix
    per cell corner so that building it needs a sort of the points only.

    Args:
        image: (B, *S) intensities of B fields with spatial shape S.
        points: (P,) flat indices into ``B * prod(S)`` of the voxels in the field, or
            None for all of them.
        rel_spacing: voxel size per spatial axis, in the unit of ``theta_alpha``.
        theta_alpha: spatial standard deviation.
        theta_beta: intensity standard deviation.
    """

    def __init__(
        self,
        image: torch.Tensor,
        points: torch.Tensor | None,
        rel_spacing: tuple[float, ...],
        theta_alpha: float,
        theta_beta: float,
    ) -> None:
        device, ndim = image.device, image.ndim
        self.sizes = [int(image.shape[0])]
        self.sigmas = [0.0]
        cells = [_axis_view(torch.arange(image.shape[0], device=device), 0, ndim)]
        fracs: list[torch.Tensor] = []  # fractional positions, interpolated axes only
        interp: list[int] = []  # grid dimensions that are interpolated
        for axis, length in enumerate(image.shape[1:], start=1):
            per_voxel = rel_spacing[axis - 1] / theta_alpha  # feature units per voxel
            m = max(1, round(_GRID_STEP / per_voxel))  # voxels per grid cell
            idx = torch.arange(length, device=device)
            cells.append(_axis_view(torch.div(idx, m, rounding_mode="floor"), axis, ndim))
            if m > 1:
                fracs.append(_axis_view((idx % m).float() / m, axis, ndim))
                interp.append(axis)
            self.sizes.append((length - 1) // m + (2 if m > 1 else 1))
            interp_var = 2.0 * (m * m - 1) / (6.0 * m * m)  # added by splat + slice, cells^2
            self.sigmas.append(math.sqrt(max((m * per_voxel) ** -2 - interp_var, 0.0)))
        values, span = self._intensity(image / (theta_beta * _GRID_STEP), points)
        cells.append(values.floor().long())
        fracs.append(values - values.floor())
        interp.append(ndim)
        self.sizes.append(span + 2)
        self.sigmas.append(math.sqrt(_GRID_STEP**-2 - 1.0 / 3.0))
        strides = [math.prod(self.sizes[d + 1 :]) for d in range(len(self.sizes))]
        base = cells[0] * strides[0]
        for c, s in zip(cells[1:], strides[1:], strict=True):
            base = base + c * s
        self._build(base, fracs, [strides[d] for d in interp], points)

    @staticmethod
    def _intensity(values: torch.Tensor, points: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """Intensities shifted to start at 0 in each field, and the largest range.

        Each field has its own origin so that its result does not depend on the other
        fields of the batch (slices give the same result in any batch or worker).
        """
        values = values.float()
        flat = values.reshape(values.shape[0], -1)
        if points is None:
            low, high = flat.min(1).values, flat.max(1).values
        else:
            inside = torch.zeros(flat.numel(), dtype=torch.bool, device=values.device)
            inside[points] = True
            inside = inside.view_as(flat)
            low = flat.masked_fill(~inside, math.inf).min(1).values
            high = flat.masked_fill(~inside, -math.inf).max(1).values
            empty = ~inside.any(1)
            low, high = low.masked_fill(empty, 0.0), high.masked_fill(empty, 0.0)
        shifted = (values - low.view(-1, *[1] * (values.ndim - 1))).clamp(min=0.0)
        return shifted, int((high - low).max().floor().item())

    def _build(
        self,
        base: torch.Tensor,
        fracs: list[torch.Tensor],
        interp_strides: list[int],
        points: torch.Tensor | None,
    ) -> None:
        """Sparse slice matrix (P, G) and per-corner splat matrices (G, P)."""
        base = base.reshape(-1) if points is None else base.reshape(-1)[points]
        n_points, n_grid, device = base.numel(), math.prod(self.sizes), base.device
        corners = list(itertools.product((0, 1), repeat=len(fracs)))
        offsets = [
            sum(s for s, c in zip(interp_strides, bits, strict=True) if c) for bits in corners
        ]
        weights = []
        for bits in corners:
            w = torch.ones((), device=device)
            for f, c in zip(fracs, bits, strict=True):
                w = w * (f if c else 1.0 - f)
            w = w.reshape(-1)  # full shape: the intensity axis is always interpolated
            weights.append(w if points is None else w[points])
        weight = torch.stack(weights, 1)  # (P, C)
        col = base.unsqueeze(1) + torch.tensor(offsets, device=device)  # sorted in each row
        crow = torch.arange(0, n_points * len(corners) + 1, len(corners), device=device)
        self.slice_matrix = _csr(crow, col.reshape(-1), weight.reshape(-1), (n_points, n_grid))
        order = torch.argsort(base, stable=True)  # deterministic sums per cell
        start = torch.zeros(n_grid + 1, dtype=torch.int64, device=device)
        start[1:] = torch.cumsum(torch.bincount(base, minlength=n_grid), 0)
        sorted_weight = weight[order]
        self.splat_matrices = []
        for c, offset in enumerate(offsets):  # cell g holds the points with base g - offset
            crow_c = torch.cat([start.new_zeros(offset), start[: n_grid + 1 - offset]])
            mat = _csr(crow_c, order, sorted_weight[:, c].contiguous(), (n_grid, n_points))
            self.splat_matrices.append(mat)

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Apply the (unnormalised) bilateral kernel to ``values`` of shape (C, P).

        One channel goes through sparse matrix-vector products, several through
        products with a row-major (P, C) matrix (layouts that MKL uses without a copy).
        """
        channels = values.shape[0]
        if channels == 1:
            grid = torch.mv(self.splat_matrices[0], values[0])
            for mat in self.splat_matrices[1:]:
                grid += torch.mv(mat, values[0])
        else:
            rows = values.t().contiguous()
            grid = self.splat_matrices[0] @ rows
            for mat in self.splat_matrices[1:]:
                grid += mat @ rows
            grid = grid.t()
        grid = _gaussian_blur(grid.reshape(channels, *self.sizes), self.sigmas[1:])  # not batch
        if channels == 1:
            return torch.mv(self.slice_matrix, grid.reshape(-1))[None]
        return (self.slice_matrix @ grid.reshape(channels, -1).t().contiguous()).t()


class _SmoothKernel:
    """Symmetrically normalised Gaussian kernel over position (dense separable blur)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        points: torch.Tensor | None,
        sigmas: list[float],
        device: torch.device,
    ) -> None:
        self.shape, self.points, self.sigmas = shape, points, sigmas
        ones = torch.ones(
            1, points.numel() if points is not None else math.prod(shape), device=device
        )
        self.norm = self._blur(ones).clamp_min(1e-20).rsqrt()  # (1, P)

    def _blur(self, values: torch.Tensor) -> torch.Tensor:
        """Unnormalised kernel on (C, P) point values, zero outside the points."""
        if self.points is None:
            dense = values.reshape(values.shape[0], *self.shape)
        else:
            dense = values.new_zeros(values.shape[0], math.prod(self.shape))
            dense[:, self.points] = values
            dense = dense.view(values.shape[0], *self.shape)
        out = _gaussian_blur(dense, self.sigmas).reshape(values.shape[0], -1)
        return out if self.points is None else out[:, self.points]

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return self.norm * self._blur(self.norm * values)


class _AppearanceKernel:
    """Symmetrically normalised bilateral kernel (bilateral grid)."""

    def __init__(self, grid: BilateralGrid, n_points: int, device: torch.device) -> None:
        self.grid = grid
        ones = torch.ones(1, n_points, device=device)
        self.norm = grid.filter(ones).clamp_min(1e-20).rsqrt()  # (1, P)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return self.norm * self.grid.filter(self.norm * values)


def _potts_message(kernel: _SmoothKernel | _AppearanceKernel, q: torch.Tensor, total):
    """Kernel applied to all K label maps, filtering only K - 1 of them.

    The label maps sum to one, so ``k(q_K) = k(1) - sum_{l<K} k(q_l)`` (``total = k(1)``).
    """
    head = kernel(q[:-1])
    return torch.cat([head, total - head.sum(0, keepdim=True)])


def mean_field_torch(
    probs: torch.Tensor,
    image: torch.Tensor,
    mask: torch.Tensor | None,
    rel_spacing: tuple[float, ...],
    params: CRFParams,
) -> torch.Tensor:
    """Mean-field inference of the dense CRF on a batch of independent fields.

    Args:
        probs: (B, K, *S) class probabilities (float32), S of length 2 or 3.
        image: (B, *S) intensities (the scale of ``theta_beta``).
        mask: (B, *S) bool voxels that take part, or None for all.
        rel_spacing: voxel size per spatial axis in the unit of the thetas.
        params: kernel parameters and number of iterations.

    Returns:
        (B, K, *S) refined probabilities; outside ``mask`` the input is returned.
    """
    b, k, *spatial = probs.shape
    device = probs.device
    labels_first = probs.transpose(0, 1).reshape(k, -1)  # (K, B * prod(S))
    points = None if mask is None else torch.nonzero(mask.reshape(-1)).squeeze(1)
    n_points = labels_first.shape[1] if points is None else points.numel()
    grid = BilateralGrid(image, points, rel_spacing, params.theta_alpha, params.theta_beta)
    appearance = _AppearanceKernel(grid, n_points, device)
    sigmas = [0.0] + [params.theta_gamma / r for r in rel_spacing]  # batch axis not blurred
    smooth = _SmoothKernel((b, *spatial), points, sigmas, device)
    ones = torch.ones(1, n_points, device=device)
    app_total, smooth_total = appearance(ones), smooth(ones)
    unary = unary_from_probs(labels_first if points is None else labels_first[:, points])
    q = torch.softmax(-unary, dim=0)  # (K, P)
    for _ in range(params.iterations):
        logits = params.w1 * _potts_message(appearance, q, app_total) - unary
        if params.w2 != 0:
            logits += params.w2 * _potts_message(smooth, q, smooth_total)
        q = torch.softmax(logits, dim=0)
    if points is None:
        out = q
    else:
        out = labels_first.clone()
        out[:, points] = q
    return out.view(k, b, *spatial).transpose(0, 1)
