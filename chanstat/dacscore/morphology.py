"""Mask smoothing on the device: flat grey-level closing and a separable Gaussian blur.

DAC smooths every binary mask with a morphological closing and a Gaussian blur. For a *flat*
structuring element, closing commutes with thresholding: closing the binary mask ``{a >= t}``
equals thresholding the grey-level closing of ``a`` at ``t`` (dilation is a max over the
element, erosion a min). So chanstat closes each attribution map (or its rank map) once, and
every threshold's closed mask is a comparison away. Only the blur, which is linear but not
monotone in that sense, is applied per mask.

Conventions (the same as ``scipy.ndimage.binary_dilation`` / ``binary_erosion``):

- dilation: ``out(p) = max_{o in B} f(p - o)``; erosion: ``out(p) = min_{o in B} f(p + o)``,
  with offsets ``o`` measured from the element's anchor ``(size // 2, size // 2)``;
- closing = erosion of the dilation (extensive and idempotent for any element);
- borders neither grow nor erode: outside the image counts as ``-inf`` for the dilation and
  ``+inf`` for the erosion (binary: 0 and 1), so a full mask stays full and an empty one empty.

The Gaussian uses mirrored borders (``d c b | a b c d | c b a``; scipy ``mode="mirror"``,
OpenCV ``BORDER_REFLECT_101``), so a full mask stays exactly full.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

#: Gaussian kernels reach ``int(GAUSSIAN_TRUNCATE * sigma + 0.5)`` pixels from the centre; with
#: ``sigma = 2`` that is the 11 x 11 kernel of the published DAC code.
GAUSSIAN_TRUNCATE = 2.5

SHAPES = ("ellipse", "square")


def structuring_element(size: int, shape: str = "ellipse") -> np.ndarray:
    """Flat structuring element as a boolean array.

    Parameters
    ----------
    size : int
        Side of the bounding box in pixels (>= 1). ``size`` 0 or 1 means "no closing"
        (a single pixel, the identity).
    shape : {"ellipse", "square"}
        ``"ellipse"`` follows the usual raster ellipse inscribed in the ``size x size`` box
        (the element of the published DAC code for ``size = 10``): row ``i`` spans the columns
        within ``round(c * sqrt(1 - ((i - r) / r)^2))`` of the centre column ``c``, with
        ``r = c = size // 2``. Even sizes are therefore one pixel longer above and left of
        the anchor than below and right of it.

    Returns
    -------
    numpy.ndarray, shape (size, size), bool
        The element; its anchor is ``(size // 2, size // 2)``.
    """
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
        raise ValueError(f"closing size must be a non-negative integer; got {size!r}")
    if shape not in SHAPES:
        raise ValueError(f"unknown closing_shape {shape!r}; choose one of {SHAPES}")
    size = max(int(size), 1)
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    element = np.zeros((size, size), dtype=bool)
    radius = size // 2
    centre = size // 2
    for row in range(size):
        dy = row - radius
        if abs(dy) > radius:
            continue
        half = int(round(centre * np.sqrt(max(radius * radius - dy * dy, 0)) / radius)) if radius else 0
        element[row, max(centre - half, 0) : min(centre + half + 1, size)] = True
    return element


def _row_runs(element: np.ndarray) -> list[tuple[int, int, int]]:
    """Describe a flat element as horizontal runs ``(dy, dx_first, dx_last)`` from its anchor.

    Every row of an ellipse or square is one contiguous run; rows with gaps are split.
    """
    anchor_y, anchor_x = element.shape[0] // 2, element.shape[1] // 2
    runs = []
    for row in range(element.shape[0]):
        cols = np.flatnonzero(element[row])
        if cols.size == 0:
            continue
        # split into contiguous pieces
        breaks = np.flatnonzero(np.diff(cols) > 1)
        starts = np.r_[cols[0], cols[breaks + 1]]
        ends = np.r_[cols[breaks], cols[-1]]
        for first, last in zip(starts, ends):
            runs.append((row - anchor_y, int(first) - anchor_x, int(last) - anchor_x))
    return runs


def _extreme(dtype: torch.dtype, largest: bool):
    if dtype.is_floating_point:
        return float("inf") if largest else float("-inf")
    info = torch.iinfo(dtype)
    return info.max if largest else info.min


def _flat_filter(image: torch.Tensor, runs: list[tuple[int, int, int]], take_max: bool) -> torch.Tensor:
    """``out(y, x) = reduce over runs of reduce_{t in [lo, hi]} image(y + dy, x + t)``.

    The horizontal sliding extrema of every distinct run length come from one doubling
    pyramid (window 2^k from two windows 2^(k-1)); an arbitrary width ``w`` is the extremum of
    two overlapping power-of-two windows. The vertical step is one elementwise extremum per
    element row. Outside the image counts as the neutral value (``-inf`` for max, ``+inf``
    for min), so borders neither grow nor erode.
    """
    reduce = torch.maximum if take_max else torch.minimum
    *lead, height, width = image.shape
    reach = max(max(abs(dy), abs(lo), abs(hi)) for dy, lo, hi in runs)
    neutral = _extreme(image.dtype, largest=not take_max)
    padded = image.new_full((*lead, height + 2 * reach, width + 2 * reach), neutral)
    padded[..., reach : reach + height, reach : reach + width] = image

    widest = max(hi - lo + 1 for _, lo, hi in runs)
    pyramid = [padded]  # pyramid[k][..., x] = extremum of padded[..., x : x + 2**k]
    while 2 ** len(pyramid) <= widest:
        prev, step = pyramid[-1], 2 ** (len(pyramid) - 1)
        pyramid.append(reduce(prev[..., :-step], prev[..., step:]))

    horizontal: dict[tuple[int, int], torch.Tensor] = {}
    for _, lo, hi in runs:
        if (lo, hi) in horizontal:
            continue
        span = hi - lo + 1
        level = span.bit_length() - 1
        block = pyramid[level]
        start = reach + lo
        left = block[..., start : start + width]
        right_start = start + span - 2**level
        right = block[..., right_start : right_start + width]
        horizontal[(lo, hi)] = left if right_start == start else reduce(left, right)

    out = None
    for dy, lo, hi in runs:
        rows = horizontal[(lo, hi)][..., reach + dy : reach + dy + height, :]
        out = rows.clone() if out is None else reduce(out, rows, out=out)
    assert out is not None  # runs is non-empty: max() over it above would have raised
    return out


def grey_dilation(image: torch.Tensor, element: np.ndarray) -> torch.Tensor:
    """Flat grey-level dilation ``max_{o in B} image(p - o)`` over the last two axes.

    Parameters
    ----------
    image : torch.Tensor, shape (..., H, W), float or integer
    element : numpy.ndarray, shape (h, w), bool
        Flat structuring element with its anchor at ``(h // 2, w // 2)``.
    """
    runs = [(-dy, -hi, -lo) for dy, lo, hi in _row_runs(np.asarray(element, dtype=bool))]
    if not runs:
        raise ValueError("structuring element is empty")
    return _flat_filter(image, runs, take_max=True)


def grey_erosion(image: torch.Tensor, element: np.ndarray) -> torch.Tensor:
    """Flat grey-level erosion ``min_{o in B} image(p + o)`` over the last two axes."""
    runs = _row_runs(np.asarray(element, dtype=bool))
    if not runs:
        raise ValueError("structuring element is empty")
    return _flat_filter(image, runs, take_max=False)


def grey_closing(image: torch.Tensor, element: np.ndarray | None) -> torch.Tensor:
    """Flat grey-level closing (dilation, then erosion) over the last two axes.

    Thresholding the result at ``t`` gives the binary closing of ``{image >= t}`` (and of
    ``{image > t}``) with the same element and border rule, for every ``t`` at once.
    ``element`` None or a single pixel returns ``image`` unchanged.
    """
    if element is None or np.asarray(element).sum() <= 1:
        return image
    return grey_erosion(grey_dilation(image, element), element)


def gaussian_kernel1d(sigma: float, truncate: float = GAUSSIAN_TRUNCATE, max_radius: int | None = None) -> np.ndarray:
    """Normalised 1-D Gaussian taps, length ``2 * r + 1`` with ``r = int(truncate * sigma + 0.5)``.

    ``max_radius`` caps ``r`` (the blur of an axis of ``n`` pixels uses ``2 n``, see
    `axis_kernel`), so a huge ``sigma`` costs no more than a box over the whole axis.
    """
    if sigma < 0 or not np.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0; got {sigma!r}")
    radius = int(min(truncate * float(sigma) + 0.5, 2**31))
    if max_radius is not None:
        radius = min(radius, max(int(max_radius), 0))
    if sigma == 0 or radius == 0:
        return np.ones(1)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / float(sigma)) ** 2)
    return taps / taps.sum()


def axis_kernel(n: int, sigma: float, truncate: float = GAUSSIAN_TRUNCATE) -> np.ndarray:
    """Taps of the blur along an axis of ``n`` pixels: the Gaussian, reaching at most ``2 n`` pixels.

    Below the cap (``sigma`` up to about ``0.8 n``) the blur is scipy's mirrored Gaussian
    exactly; above it, where the blurred mask is nearly flat anyway, the kernel is cut at
    ``2 n`` (four folds of the mirrored axis) instead of growing with ``sigma``.
    """
    return gaussian_kernel1d(sigma, truncate, max_radius=2 * n)


def _mirror_index(index: np.ndarray, n: int) -> np.ndarray:
    """Fold indices into [0, n) by mirroring about the edge pixels (``d c b | a b c d``)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    folded = np.mod(index, period)
    return np.where(folded >= n, period - folded, folded)


@lru_cache(maxsize=64)
def _blur_matrix_cached(n: int, sigma: float, truncate: float) -> np.ndarray:
    taps = axis_kernel(n, sigma, truncate)
    radius = len(taps) // 2
    matrix = np.zeros((n, n), dtype=np.float64)
    rows = np.arange(n)
    for k, weight in enumerate(taps):
        np.add.at(matrix, (rows, _mirror_index(rows + k - radius, n)), weight)
    return matrix


def blur_matrix(n: int, sigma: float, truncate: float = GAUSSIAN_TRUNCATE) -> np.ndarray:
    """The 1-D Gaussian blur with mirrored borders as an ``(n, n)`` matrix (rows sum to 1).

    ``blurred = B_H @ image @ B_W.T`` is the separable 2-D blur; the border rule is folded
    into the matrix, so there is no padding step and the operator is exact for any ``n``.
    """
    return _blur_matrix_cached(int(n), float(sigma), float(truncate)).copy()


def _band_matrix(taps: np.ndarray, tile: int) -> np.ndarray:
    """``(tile + 2r, tile)`` matrix: column j holds the taps at rows j .. j + 2r."""
    radius = len(taps) // 2
    band = np.zeros((tile + 2 * radius, tile))
    for j in range(tile):
        band[j : j + 2 * radius + 1, j] = taps
    return band


class _AxisBlur:
    """1-D Gaussian with mirrored borders along the last axis of a tensor.

    Short axes use the dense ``(n, n)`` operator (one BLAS call); long axes are cut into tiles
    of ``TILE`` samples with ``r`` mirrored samples on each side and multiplied by a small band
    matrix, so the cost per sample stays ``TILE + 2r`` multiply-adds whatever ``n`` is.
    (A 1-channel ``conv2d`` is about 20x slower than either on the CPU.)
    """

    DENSE_MAX = 128
    TILE = 64

    def __init__(self, n: int, taps: np.ndarray, sigma: float, device, dtype):
        self.n = n
        self.dense = n <= self.DENSE_MAX
        if self.dense:
            self.matrix_t = torch.as_tensor(blur_matrix(n, sigma).T.copy(), dtype=dtype, device=device)
            return
        radius = len(taps) // 2
        self.n_tiles = -(-n // self.TILE)
        index = _mirror_index(np.arange(-radius, self.n_tiles * self.TILE + radius), n)
        self.index = torch.as_tensor(index, device=device)
        self.window = self.TILE + 2 * radius
        self.band = torch.as_tensor(_band_matrix(taps, self.TILE), dtype=dtype, device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return torch.matmul(x, self.matrix_t)
        padded = x.index_select(-1, self.index)
        tiles = padded.unfold(-1, self.window, self.TILE)  # (..., n_tiles, window)
        out = torch.matmul(tiles, self.band)  # (..., n_tiles, TILE)
        return out.flatten(-2)[..., : self.n]


class GaussianBlur:
    """Separable Gaussian blur with mirrored borders of ``(..., H, W)`` tensors, on their device.

    Built once for an image size and reused for every batch of masks.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels; 0 turns the blur off. The kernel along each axis
        reaches at most twice the axis length (`axis_kernel`).
    height, width : int
        Image size the operator is built for.
    device, dtype : torch device and floating dtype of the masks to blur.
    """

    def __init__(self, sigma: float, height: int, width: int, device="cpu", dtype=torch.float32):
        self.sigma = float(sigma)
        self.height, self.width = int(height), int(width)
        row_taps, col_taps = axis_kernel(self.width, sigma), axis_kernel(self.height, sigma)
        self.identity = len(row_taps) == 1 and len(col_taps) == 1
        if not self.identity:
            self.along_rows = _AxisBlur(self.width, row_taps, sigma, device, dtype)
            self.along_cols = _AxisBlur(self.height, col_taps, sigma, device, dtype)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Blur ``masks`` of shape (..., H, W); returns a new tensor (or ``masks`` when off)."""
        if self.identity:
            return masks
        if tuple(masks.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"blur was built for {self.height}x{self.width} images; got {tuple(masks.shape[-2:])}")
        # both axes as right-multiplications (one large GEMM each); the transposed view
        # is cheaper than a batch of small left-multiplications
        out = self.along_rows(masks)
        return self.along_cols(out.transpose(-1, -2)).transpose(-1, -2)


def gaussian_blur(masks: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with mirrored borders over the last two axes (see `GaussianBlur`)."""
    return GaussianBlur(sigma, masks.shape[-2], masks.shape[-1], masks.device, masks.dtype)(masks)
