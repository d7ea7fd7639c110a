"""``exact`` semantics (see :mod:`usx_stream.compound.paste_exact`) as numba kernels.

The accumulators are integers, so any pixel order gives the same volume. The kernels release the GIL:
several threads can paste bands of a frame's rows into the same accumulators at once when the bands
lie far enough apart that no voxel is reached from two of them (:func:`row_bands`).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numba as nb
import numpy as np

from .exact_spans import MAX_STEP, corner_weight, rows_linear_mean, rows_nn_mean
from .paste_exact import FLOAT_UNIT, KEY_FRAME_SHIFT, KEY_WEIGHT_SHIFT, LINEAR_UNIT

MODE_CODES = {"MEAN": 0, "MAXIMUM": 1, "LATEST": 2}


@nb.njit(inline="always")
def _quantize(v, is_int):
    # identical to paste_exact.quantize_values
    if is_int:
        return np.int64(v)
    return np.int64(np.rint(np.float64(v) * FLOAT_UNIT))


@nb.njit(nogil=True)
def _rows_nn(image, segments, m, j0, j1, dims, sums, weights, values, keys, mode, frame_key, width, q):
    nx, ny, nz = dims
    pasted = 0
    for j in range(j0, j1):
        bx = m[0, 3] + j * m[0, 1]
        by = m[1, 3] + j * m[1, 1]
        bz = m[2, 3] + j * m[2, 1]
        for s in range(2):
            for i in range(segments[j, 2 * s], segments[j, 2 * s + 1] + 1):
                if q.reject and image[j, i] < q.threshold:
                    continue
                v = _quantize(image[j, i], q.is_int)
                x = np.int64(math.floor(bx + i * m[0, 0] + 0.5))
                y = np.int64(math.floor(by + i * m[1, 0] + 0.5))
                z = np.int64(math.floor(bz + i * m[2, 0] + 0.5))
                if x < 0 or y < 0 or z < 0 or x >= nx or y >= ny or z >= nz:
                    continue
                idx = (z * ny + y) * nx + x
                # the update is spelled out here (a helper function made the loop 5x slower)
                if mode == 0:
                    sums[idx] += v
                elif mode == 1:
                    if v > values[idx]:
                        values[idx] = v
                else:
                    key = frame_key | (np.int64(1) << KEY_WEIGHT_SHIFT) | (j * width + i)
                    if key > keys[idx]:
                        keys[idx] = key
                        values[idx] = v
                weights[idx] += 1
                pasted += 1
    return pasted


@nb.njit(nogil=True)
def _rows_linear(image, segments, m, j0, j1, dims, sums, weights, values, keys, mode, frame_key, width, q):
    nx, ny, nz = dims
    pasted = 0
    min_w = LINEAR_UNIT // 8 if mode == 1 else 1
    for j in range(j0, j1):
        bx = m[0, 3] + j * m[0, 1]
        by = m[1, 3] + j * m[1, 1]
        bz = m[2, 3] + j * m[2, 1]
        for s in range(2):
            for i in range(segments[j, 2 * s], segments[j, 2 * s + 1] + 1):
                if q.reject and image[j, i] < q.threshold:
                    continue
                v = _quantize(image[j, i], q.is_int)
                px, py, pz = bx + i * m[0, 0], by + i * m[1, 0], bz + i * m[2, 0]
                fx0, fy0, fz0 = math.floor(px), math.floor(py), math.floor(pz)
                fx, fy, fz = px - fx0, py - fy0, pz - fz0
                x0, y0, z0 = np.int64(fx0), np.int64(fy0), np.int64(fz0)
                hit = False
                for c in range(8):
                    ox, oy, oz, wq = corner_weight(fx, fy, fz, c)
                    x, y, z = x0 + ox, y0 + oy, z0 + oz
                    if wq <= 0 or x < 0 or y < 0 or z < 0 or x >= nx or y >= ny or z >= nz:
                        continue
                    hit = True
                    if wq < min_w:
                        continue
                    idx = (z * ny + y) * nx + x
                    if mode == 0:
                        sums[idx] += wq * v
                    elif mode == 1:
                        if v > values[idx]:
                            values[idx] = v
                    else:
                        key = frame_key | (wq << KEY_WEIGHT_SHIFT) | (j * width + i)
                        if key > keys[idx]:
                            keys[idx] = key
                            values[idx] = v
                    weights[idx] += wq
                pasted += hit
    return pasted


@nb.njit(cache=True, nogil=True)
def _paste_pixelwise(image, segments, m, j0, j1, dims, sums, weights, values, keys, mode, linear, frame_number, q):
    frame_key = np.int64(frame_number) << KEY_FRAME_SHIFT
    width = image.shape[1]
    if linear:
        return _rows_linear(image, segments, m, j0, j1, dims, sums, weights, values, keys, mode, frame_key, width, q)
    return _rows_nn(image, segments, m, j0, j1, dims, sums, weights, values, keys, mode, frame_key, width, q)


# stands in for the arrays a mode does not keep
_UNUSED = np.zeros(1, np.int64)


def paste_exact_rows(image, segments, m, j0, j1, state, mode, linear, frame_number, q) -> int:
    """Paste rows ``j0 <= j < j1`` of ``image`` (H, W) into ``state``; ``q`` is :func:`pixel_options`.

    ``state`` is :func:`usx_stream.compound.paste_exact.new_state` (MEAN with ``interleaved=True``).
    The kernels release the GIL. Returns the number of pixels that reached the volume.
    """
    dims = state["dims"]
    # dispatched here, not in a jitted function: numba's cache of a caller is not invalidated when a
    # kernel it calls from another module changes
    if mode == 0 and np.abs(m[:, 0]).max() < MAX_STEP:
        kernel = rows_linear_mean if linear else rows_nn_mean
        return kernel(image, segments, m, j0, j1, dims, state["pair"], q)
    return _paste_pixelwise(image, segments, m, j0, j1, dims, state.get("sum", _UNUSED), state["weight"],
                            state.get("value", _UNUSED), state.get("key", _UNUSED), mode, linear, frame_number, q)


def conflict_gap(m, linear: bool) -> int | None:
    """Rows at least this many apart never reach a common voxel (None: no such distance).

    Two pixels reach a common voxel only when every coordinate differs by less than 1 (NEAREST_NEIGHBOR:
    one voxel each) or 2 (LINEAR: the two corners either side), so when they are less than ``sqrt(3)``
    or ``2 sqrt(3)`` voxels apart. Rows ``dj`` apart are at least ``dj`` times the distance of the row
    step ``m[:, 1]`` from the column direction ``m[:, 0]`` apart; one row of margin covers rounding.
    """
    c0, c1 = np.asarray(m[:3, 0], np.float64), np.asarray(m[:3, 1], np.float64)
    n0 = float(c0 @ c0)
    off = c1 - (float(c1 @ c0) / n0) * c0 if n0 > 0 else c1
    perp = math.sqrt(float(off @ off))
    reach = (2.0 if linear else 1.0) * math.sqrt(3.0)
    if not (perp > 0 and math.isfinite(perp)) or reach / perp > 1e9:
        return None
    return int(math.ceil(reach / perp)) + 1


def row_bands(cum_pixels: np.ndarray, gap: int | None, threads: int) -> tuple[list, list]:
    """Split rows ``0 <= j < H`` into ``(bands, gaps)``, lists of ``(j0, j1)`` ranges.

    ``cum_pixels`` (H + 1,) counts the pasted pixels of rows before ``j``. The bands hold about equal
    numbers of pixels and are ``gap`` rows apart, so they can be pasted at once into the same
    accumulators; then the gaps (``gap`` rows each, separated by bands at least that wide) likewise.
    Fewer bands when the rows are too few; one band, no gap, when ``gap`` is None.
    """
    height = cum_pixels.shape[0] - 1
    total = int(cum_pixels[-1])
    for t in range(int(threads), 1, -1):
        if gap is None or total == 0:
            break
        cuts = np.searchsorted(cum_pixels, [total * k / t for k in range(1, t)])
        starts = [int(c) - gap // 2 for c in cuts]
        edges = [0] + [e for g0 in starts for e in (g0, g0 + gap)] + [height]
        bands = [(edges[2 * k], edges[2 * k + 1]) for k in range(t)]
        if all(j1 - j0 >= gap for j0, j1 in bands):
            return bands, [(g0, g0 + gap) for g0 in starts]
    return [(0, height)], []


PixelOptions = namedtuple("PixelOptions", ["is_int", "reject", "threshold", "small"])


def pixel_options(dtype, threshold: float | None) -> PixelOptions:
    """Kernel pixel options for ``dtype`` images and an optional rejection threshold (``small``:
    every quantised value is below 2**8, see :data:`usx_stream.compound.exact_spans.SMALL_SPAN`)."""
    dtype = np.dtype(dtype)
    is_int = bool(np.issubdtype(dtype, np.integer))
    small = is_int and dtype.itemsize == 1 and not np.issubdtype(dtype, np.signedinteger)
    return PixelOptions(is_int, threshold is not None, float(threshold) if threshold is not None else 0.0, small)
