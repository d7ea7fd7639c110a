"""``exact`` semantics (see :mod:`usx_stream.compound.paste_exact`) as numba kernels.

The accumulators are integers, so any pixel order gives the same volume. The kernels release the GIL:
several threads can paste bands of rows at once, each into its own accumulators (merged when a
result is read), so no two threads ever write the same memory and no barrier is needed.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numba as nb
import numpy as np

from .exact_spans import MAX_STEP, rows_linear_mean, rows_nn_mean
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
                    ox, oy, oz = (c >> 2) & 1, (c >> 1) & 1, c & 1
                    wx = fx if ox else 1.0 - fx
                    wy = fy if oy else 1.0 - fy
                    wz = fz if oz else 1.0 - fz
                    wq = np.int64((wx * wy) * wz * LINEAR_UNIT + 0.5)  # >= 0: truncation is floor
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


def paste_exact_rows(image, segments, m, j0, j1, dims, sums, weights, values, keys, mode, linear,
                     frame_number, q) -> int:
    """Paste rows ``j0 <= j < j1`` of ``image`` (H, W); ``q`` = (is_int, reject, threshold).

    ``sums``/``weights``/``values``/``keys`` are flat int64 volumes (unused ones may be size 1).
    The kernels release the GIL. Returns the number of pixels that reached the volume.
    """
    # dispatched here, not in a jitted function: numba's cache of a caller is not invalidated when a
    # kernel it calls from another module changes
    if mode == 0 and np.abs(m[:, 0]).max() < MAX_STEP:
        kernel = rows_linear_mean if linear else rows_nn_mean
        return kernel(image, segments, m, j0, j1, dims, sums, weights, q)
    return _paste_pixelwise(image, segments, m, j0, j1, dims, sums, weights, values, keys, mode, linear, frame_number, q)


PixelOptions = namedtuple("PixelOptions", ["is_int", "reject", "threshold"])


def pixel_options(dtype, threshold: float | None) -> PixelOptions:
    """Kernel pixel options for ``dtype`` images and an optional rejection threshold."""
    return PixelOptions(bool(np.issubdtype(np.dtype(dtype), np.integer)), threshold is not None,
                        float(threshold) if threshold is not None else 0.0)
