"""``exact`` MEAN kernels that walk each row in spans of pixels sharing a voxel (NN) or a cell (LINEAR).

Along a row the coordinate ``floor(b + i * s + h)`` of each axis (``b``, ``s`` and ``h`` fixed, the
expression of :mod:`usx_stream.compound.paste_exact` evaluated exactly as written) is a monotone step
function of the column ``i``: every operation in it is a correctly rounded, hence monotone, function of
its operand. The column where an axis next steps is therefore guessed from the real-valued crossing and
then confirmed by evaluating the same expression on both sides of the guess, so every pixel lands
exactly where the per-pixel kernels put it, while the per-pixel work shrinks to summing values (NN)
or to the trilinear weights of a cell known to be inside the volume (LINEAR).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .paste_exact import FLOAT_UNIT, LINEAR_UNIT


@nb.njit(inline="always")
def _value(image, j, i, is_int):
    # identical to paste_exact.quantize_values
    if is_int:
        return np.int64(image[j, i])
    return np.int64(np.rint(np.float64(image[j, i]) * FLOAT_UNIT))


@nb.njit(inline="always")
def corner_weight(fx, fy, fz, c):
    """Offsets (0/1 per axis) and integer trilinear weight of corner ``c`` (0..7) of a cell, for the
    fractional position ``(fx, fy, fz)`` in it: the rule of :mod:`usx_stream.compound.paste_exact`, shared
    by the per-pixel and the span kernels so that both stay identical to it."""
    ox, oy, oz = (c >> 2) & 1, (c >> 1) & 1, c & 1
    wx = fx if ox else 1.0 - fx
    wy = fy if oy else 1.0 - fy
    wz = fz if oz else 1.0 - fz
    return ox, oy, oz, np.int64((wx * wy) * wz * LINEAR_UNIT + 0.5)  # >= 0: truncation is floor


@nb.njit(inline="always")
def _coord(b, s, i, h):
    """The voxel coordinate of column ``i``: the reference expression, same operations, same order."""
    return np.int64(math.floor(b + i * s + h))


# Relative error allowance (in columns) of a guessed step column: the guess and the coordinate carry
# a few roundings of 2**-53 each; below this distance from an integer the guess is checked instead.
_GUARD = 2.0 ** -40
# Rows whose coordinates move this much per column or more are pasted pixel by pixel.
MAX_STEP = 0.5


@nb.njit(inline="always")
def _reached(b, s, h, i, k, up):
    c = _coord(b, s, i, h)
    return c >= k if up else c <= k


@nb.njit(inline="always")
def axis_steps(b, s, h, i0, stop, cols):
    """Columns where the coordinate ``floor(b + i * s + h)`` of columns ``i0 <= i < stop`` steps.

    ``cols[0] = i0``, ``cols[n]`` (``1 <= n <= steps``) is the first column whose coordinate has moved
    ``n`` voxels from column ``i0``'s (``k0 + n * d``), ``cols[steps + 1] = stop``. ``|s| < 1``
    keeps ``steps < stop - i0``. Each step is found on its own (no step waits for the previous one):
    the real crossing is exact up to a few roundings, so it decides unless it lies within ``tol`` of a
    column, and those few are settled by evaluating the coordinate itself.
    Returns ``(k0, d, steps)``.
    """
    k0 = _coord(b, s, i0, h)
    steps = abs(_coord(b, s, stop - 1, h) - k0)
    cols[0] = i0
    cols[steps + 1] = stop
    d = 1 if s > 0.0 else -1
    if steps == 0:
        return k0, d, 0
    inv = 1.0 / s
    tol = _GUARD * ((abs(b) + abs(h) + stop * abs(s) + 4.0) * abs(inv) + stop + 1.0)
    # increasing: the coordinate reaches k when b + i s + h >= k; decreasing: when it drops below k + 1
    offset = -h - b if s > 0.0 else 1.0 - h - b
    for n in range(1, steps + 1):
        k = k0 + n * d
        t = (k + offset) * inv
        g = math.ceil(t)
        if g - t > tol and g - t < 1.0 - tol:
            cols[n] = np.int64(g)
            continue
        g = min(max(np.int64(g), i0 + 1), stop - 1)
        while g > i0 + 1 and _reached(b, s, h, g - 1, k, d > 0):
            g -= 1
        while g < stop - 1 and not _reached(b, s, h, g, k, d > 0):
            g += 1
        cols[n] = g
    return k0, d, steps


@nb.njit(inline="always")
def _row_prefix(image, j, i0, stop, q, total, kept):
    """Running sums over columns ``i0 <= i < stop`` of row ``j``: ``total[i + 1] - total[k]`` is the sum
    of the quantised kept values of columns ``k <= c <= i`` (``kept`` likewise counts them; filled only
    with a rejection threshold, otherwise a span's count is its length).

    One pass of adds per row, then each span costs two reads whatever its length: a loop over the span's
    pixels ended in a mispredicted branch per span (spans are 5-7 pixels at 0.5 mm), 21-31 % of the
    kernel's time (820x616 frames, same process, alternating)."""
    run = np.int64(0)
    total[i0] = 0
    if not q.reject:
        for i in range(i0, stop):
            run += _value(image, j, i, q.is_int)
            total[i + 1] = run
        return
    count = np.int64(0)
    kept[i0] = 0
    for i in range(i0, stop):
        if not image[j, i] < q.threshold:
            run += _value(image, j, i, q.is_int)
            count += 1
        total[i + 1] = run
        kept[i + 1] = count


@nb.njit(inline="always")
def _nn_segment(image, j, i0, stop, b, sv, dims, acc, q, cols, total, kept):
    """One row segment: spans between consecutive steps of any axis, one store per span."""
    nx, ny, nz = dims
    x, dx, _ = axis_steps(b[0], sv[0], 0.5, i0, stop, cols[0])
    y, dy, _ = axis_steps(b[1], sv[1], 0.5, i0, stop, cols[1])
    z, dz, _ = axis_steps(b[2], sv[2], 0.5, i0, stop, cols[2])
    _row_prefix(image, j, i0, stop, q, total, kept)
    ax = ay = az = 1
    i = i0
    pasted = 0
    while i < stop:
        end = min(cols[0, ax], cols[1, ay], cols[2, az])
        if 0 <= x < nx and 0 <= y < ny and 0 <= z < nz:
            count = kept[end] - kept[i] if q.reject else end - i
            if count > 0:
                idx = 2 * ((z * ny + y) * nx + x)
                acc[idx] += total[end] - total[i]
                acc[idx + 1] += count
                pasted += count
        i = end
        if cols[0, ax] == end:
            x += dx
            ax += 1
        if cols[1, ay] == end:
            y += dy
            ay += 1
        if cols[2, az] == end:
            z += dz
            az += 1
    return pasted


@nb.njit(cache=True, nogil=True)
def rows_nn_mean(image, segments, m, j0, j1, dims, acc, q):
    """NEAREST_NEIGHBOR/MEAN for rows ``j0 <= j < j1`` (row moves below :data:`MAX_STEP` voxel per column).

    ``acc`` holds each voxel's sum and weight side by side (``acc[2v]``, ``acc[2v + 1]``): a span's
    two updates then fall in one cache line."""
    width = image.shape[1]
    cols = np.empty((3, width + 2), np.int64)
    total = np.empty(width + 1, np.int64)
    kept = np.empty(width + 1, np.int64)
    sv = (m[0, 0], m[1, 0], m[2, 0])
    pasted = 0
    for j in range(j0, j1):
        b = (m[0, 3] + j * m[0, 1], m[1, 3] + j * m[1, 1], m[2, 3] + j * m[2, 1])
        for s in range(2):
            i0, stop = segments[j, 2 * s], segments[j, 2 * s + 1] + 1
            if i0 < stop:
                pasted += _nn_segment(image, j, i0, stop, b, sv, dims, acc, q, cols, total, kept)
    return pasted


# Packed corner sums (:func:`_cell_inside`): values below 2**8 times weights up to 2**12 stay below
# 2**32 over spans up to this many pixels.
SMALL_SPAN = 1 << 12
_HALF = np.int64(1) << 32
_LOW = _HALF - 1


@nb.njit(inline="always")
def _corner_weights(b, sv, i, f0):
    """Quantised trilinear weights of column ``i``'s 8 corners, corner ``c`` at offsets
    ``(c >> 2 & 1, c >> 1 & 1, c & 1)``, with the reference's operations (the span fixes
    ``floor(p) = f0``)."""
    fx = (b[0] + i * sv[0]) - f0[0]
    fy = (b[1] + i * sv[1]) - f0[1]
    fz = (b[2] + i * sv[2]) - f0[2]
    rx, ry = 1.0 - fx, 1.0 - fy
    # (wx * wy) * wz * 4096 == (wx * wy) * (wz * 4096) exactly: 4096 is a power of two
    zr, zf = (1.0 - fz) * LINEAR_UNIT, fz * LINEAR_UNIT
    a00, a01, a10, a11 = rx * ry, rx * fy, fx * ry, fx * fy
    return (np.int64(a00 * zr + 0.5), np.int64(a00 * zf + 0.5), np.int64(a01 * zr + 0.5),
            np.int64(a01 * zf + 0.5), np.int64(a10 * zr + 0.5), np.int64(a10 * zf + 0.5),
            np.int64(a11 * zr + 0.5), np.int64(a11 * zf + 0.5))


@nb.njit(inline="always")
def _unpack(s):
    return s & _LOW, s >> 32


@nb.njit(inline="always")
def _cell_inside(image, j, i0, i1, b, sv, k, dims, acc, q):
    """Pixels ``i0 <= i < i1`` of row ``j`` whose cell ``k`` has all 8 corners inside: the corner sums
    stay in registers for the span and are stored once. Returns the pixels pasted."""
    nx, ny, _ = dims
    f0 = (np.float64(k[0]), np.float64(k[1]), np.float64(k[2]))
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.int64(0)
    w0 = w1 = w2 = w3 = w4 = w5 = w6 = w7 = np.int64(0)
    # small values: each corner's weight rides in the high half of its sum (q * (v + 2**32)), one
    # multiply-add per corner instead of a multiply and two adds; split when stored
    packed = q.small and i1 - i0 <= SMALL_SPAN
    count = 0
    for i in range(i0, i1):
        if q.reject and image[j, i] < q.threshold:
            continue
        v = _value(image, j, i, q.is_int)
        q0, q1, q2, q3, q4, q5, q6, q7 = _corner_weights(b, sv, i, f0)
        if packed:
            v += _HALF
        else:
            w0, w1, w2, w3, w4, w5, w6, w7 = w0 + q0, w1 + q1, w2 + q2, w3 + q3, w4 + q4, w5 + q5, w6 + q6, w7 + q7
        s0, s1, s2, s3 = s0 + q0 * v, s1 + q1 * v, s2 + q2 * v, s3 + q3 * v
        s4, s5, s6, s7 = s4 + q4 * v, s5 + q5 * v, s6 + q6 * v, s7 + q7 * v
        count += 1
    if count == 0:
        return 0
    if packed:
        (s0, w0), (s1, w1), (s2, w2), (s3, w3) = _unpack(s0), _unpack(s1), _unpack(s2), _unpack(s3)
        (s4, w4), (s5, w5), (s6, w6), (s7, w7) = _unpack(s4), _unpack(s5), _unpack(s6), _unpack(s7)
    # corner c = (x + c >> 2 & 1, y + c >> 1 & 1, z + c & 1)
    base, dy, dz = (k[2] * ny + k[1]) * nx + k[0], nx, nx * ny
    for idx, s, w in ((base, s0, w0), (base + dz, s1, w1), (base + dy, s2, w2), (base + dy + dz, s3, w3),
                      (base + 1, s4, w4), (base + 1 + dz, s5, w5), (base + 1 + dy, s6, w6),
                      (base + 1 + dy + dz, s7, w7)):
        acc[2 * idx] += s
        acc[2 * idx + 1] += w
    return count


@nb.njit(nogil=True)
def _cell_edge(image, j, i0, i1, b, sv, k, dims, acc, q):
    """Pixels of a cell with only some corners inside: corner by corner, as the reference drops them.
    (Not inlined: rare, and inlined it slowed the common path.)"""
    nx, ny, nz = dims
    fx0, fy0, fz0 = np.float64(k[0]), np.float64(k[1]), np.float64(k[2])
    pasted = 0
    for i in range(i0, i1):
        if q.reject and image[j, i] < q.threshold:
            continue
        v = _value(image, j, i, q.is_int)
        fx = (b[0] + i * sv[0]) - fx0
        fy = (b[1] + i * sv[1]) - fy0
        fz = (b[2] + i * sv[2]) - fz0
        hit = False
        for c in range(8):
            ox, oy, oz, wq = corner_weight(fx, fy, fz, c)
            x, y, z = k[0] + ox, k[1] + oy, k[2] + oz
            if wq <= 0 or x < 0 or y < 0 or z < 0 or x >= nx or y >= ny or z >= nz:
                continue
            hit = True
            idx = (z * ny + y) * nx + x
            acc[2 * idx] += wq * v
            acc[2 * idx + 1] += wq
        pasted += hit
    return pasted


@nb.njit(inline="always")
def _linear_segment(image, j, i0, stop, b, sv, dims, acc, q, cols):
    """One row segment, span by span of pixels in one cell."""
    nx, ny, nz = dims
    x, dx, _ = axis_steps(b[0], sv[0], 0.0, i0, stop, cols[0])
    y, dy, _ = axis_steps(b[1], sv[1], 0.0, i0, stop, cols[1])
    z, dz, _ = axis_steps(b[2], sv[2], 0.0, i0, stop, cols[2])
    ax = ay = az = 1
    i = i0
    pasted = 0
    while i < stop:
        end = min(cols[0, ax], cols[1, ay], cols[2, az])
        if end > i:
            if 0 <= x and x + 1 < nx and 0 <= y and y + 1 < ny and 0 <= z and z + 1 < nz:
                pasted += _cell_inside(image, j, i, end, b, sv, (x, y, z), dims, acc, q)
            elif -1 <= x < nx and -1 <= y < ny and -1 <= z < nz:
                pasted += _cell_edge(image, j, i, end, b, sv, (x, y, z), dims, acc, q)
        i = end
        if cols[0, ax] == end:
            x += dx
            ax += 1
        if cols[1, ay] == end:
            y += dy
            ay += 1
        if cols[2, az] == end:
            z += dz
            az += 1
    return pasted


@nb.njit(cache=True, nogil=True)
def rows_linear_mean(image, segments, m, j0, j1, dims, acc, q):
    """LINEAR/MEAN for rows ``j0 <= j < j1`` (row moves below :data:`MAX_STEP` voxel per column);
    ``acc`` as in :func:`rows_nn_mean`."""
    cols = np.empty((3, image.shape[1] + 2), np.int64)
    sv = (m[0, 0], m[1, 0], m[2, 0])
    pasted = 0
    for j in range(j0, j1):
        b = (m[0, 3] + j * m[0, 1], m[1, 3] + j * m[1, 1], m[2, 3] + j * m[2, 1])
        for s in range(2):
            i0, stop = segments[j, 2 * s], segments[j, 2 * s + 1] + 1
            if i0 < stop:
                pasted += _linear_segment(image, j, i0, stop, b, sv, dims, acc, q, cols)
    return pasted
