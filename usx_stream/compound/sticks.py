"""PLUS's STICK hole filling computed line by line (the common ``NumberOfSticksToUse = 1`` case).

PLUS searches, from every hole and for each of 13 directions, the nearest hit voxel forward (up to
``limit - 1`` steps) and then backward (up to ``limit - 1 - forward``): a stick exists exactly when the
two hits bounding the hole's gap along that direction are at most ``limit - 1`` apart. Walking every
line of the volume once per direction finds all gaps, so each voxel is visited 13 times instead of
being searched 13 x 2 x (limit - 1) times; the values, weights, tie rules and the order in which ties
are summed are PLUS's, so the result is the same.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np

from .holes_common import STICKS, cast_value


@nb.njit(nogil=True)
def _walk_line(hit, vol, start, stride, n_steps, limit, weights, ranks, is_int, best, count, sum_vw):
    """One line of ``n_steps`` voxels from flat index ``start``, ``stride`` apart (all flat arrays).

    ``weights[gap]`` is PLUS's stick weight for hits ``gap`` apart, ``ranks[gap]`` its rank among all
    stick weights (equal doubles, equal ranks): a voxel keeps the best rank, how many sticks reached it
    and the sum of their weighted values in stick order.
    """
    prev_t = -1
    prev_val = 0.0
    idx = start
    for t in range(n_steps):
        if hit[idx]:
            val = np.float64(vol[idx])
            gap = t - prev_t
            if prev_t >= 0 and 2 <= gap <= limit - 1:
                total = np.float64(gap + 1)
                weight = weights[gap]
                rank = ranks[gap]
                h = idx - gap * stride
                for u in range(1, gap):
                    # hole u steps after the previous hit: rvs = u, fwd = gap - u
                    h += stride
                    w_fwd = (u + 1) / total
                    value = cast_value((1.0 - w_fwd) * prev_val + w_fwd * val, is_int)
                    if rank > best[h]:
                        best[h] = rank
                        count[h] = 1
                        sum_vw[h] = value * weight
                    elif rank == best[h]:
                        count[h] += 1
                        sum_vw[h] += value * weight
            prev_t = t
            prev_val = val
        idx += stride


@nb.njit(inline="always")
def _steps(c, d, n):
    if d > 0:
        return n - c
    if d < 0:
        return c + 1
    return 1 << 40


@nb.njit(nogil=True)
def _start(hit, vol, x, y, z, d, shape, limit, weights, ranks, is_int, best, count, sum_vw):
    nz, ny, nx = shape
    n = min(_steps(x, d[0], nx), _steps(y, d[1], ny), _steps(z, d[2], nz))
    _walk_line(hit, vol, (z * ny + y) * nx + x, (d[2] * ny + d[1]) * nx + d[0], n, limit, weights, ranks, is_int,
               best, count, sum_vw)


@nb.njit(inline="always")
def _chunk(n, part, parts):
    return n * part // parts, n * (part + 1) // parts


@nb.njit(cache=True, nogil=True)
def _walk_direction(hit, vol, d, shape, limit, weights, ranks, is_int, best, count, sum_vw, part, parts):
    """Every line along ``d`` once (lines of chunk ``part`` of ``parts``): each starts on the face its
    backward neighbour leaves. Lines are disjoint, so chunks can run at the same time."""
    nz, ny, nx = shape
    fz = 0 if d[2] > 0 else nz - 1
    fy = 0 if d[1] > 0 else ny - 1
    fx = 0 if d[0] > 0 else nx - 1
    if d[2] != 0:
        y0, y1 = _chunk(ny, part, parts)
        for y in range(y0, y1):
            for x in range(nx):
                _start(hit, vol, x, y, fz, d, shape, limit, weights, ranks, is_int, best, count, sum_vw)
    z0, z1 = _chunk(nz, part, parts)
    if d[1] != 0:
        for z in range(z0, z1):
            if d[2] != 0 and z == fz:
                continue
            for x in range(nx):
                _start(hit, vol, x, fy, z, d, shape, limit, weights, ranks, is_int, best, count, sum_vw)
    if d[0] != 0:
        for z in range(z0, z1):
            if d[2] != 0 and z == fz:
                continue
            for y in range(ny):
                if d[1] != 0 and y == fy:
                    continue
                _start(hit, vol, fx, y, z, d, shape, limit, weights, ranks, is_int, best, count, sum_vw)


@nb.njit(cache=True, nogil=True)
def _finish(best, count, sum_vw, rank_weight, is_int):
    ok = count > 0
    value = np.zeros(count.shape[0], np.float64)
    for k in range(ok.shape[0]):
        if ok[k]:
            w = rank_weight[best[k]]
            sum_w = 0.0
            for _ in range(count[k]):  # PLUS adds the tied weights one by one
                sum_w += w
            value[k] = cast_value(sum_vw[k] / sum_w, is_int)
    return ok, value


def stick_tables(limit: int):
    """PLUS's stick weights ``1 / ((gap + 1) * |d|)``: ``(weights (13, limit), ranks (13, limit) uint16,
    rank_weight)`` indexed by stick and gap between the two hits; rank 0 means no stick."""
    lengths = np.sqrt((STICKS ** 2).sum(axis=1).astype(np.float64))
    gaps = np.arange(limit)
    weights = np.zeros((len(STICKS), limit))
    valid = (gaps >= 2) & (gaps <= limit - 1)
    weights[:, valid] = 1.0 / ((gaps[valid] + 1.0)[None, :] * lengths[:, None])
    unique = np.unique(weights[:, valid])
    ranks = np.zeros(weights.shape, np.uint16)
    ranks[:, valid] = np.searchsorted(unique, weights[:, valid]) + 1
    return weights, ranks, np.concatenate([[0.0], unique])


def stick_fill_single(hit: np.ndarray, vol: np.ndarray, limit: int, is_int: bool, *, threads: int = 2):
    """STICK with one stick per hole: ``(ok (Z, Y, X) bool, value (Z, Y, X) float64)``.

    ``hit`` (uint8) is non-zero where the paste reached; ``value`` is already cast as PLUS casts
    (truncation for integer volumes). ``threads`` share the lines of each direction.
    """
    shape = hit.shape
    flat_hit, flat_vol = hit.reshape(-1), np.ascontiguousarray(vol).reshape(-1)
    n = flat_hit.shape[0]
    best, count, sum_vw = np.zeros(n, np.uint16), np.zeros(n, np.uint8), np.zeros(n, np.float64)
    weights, ranks, rank_weight = stick_tables(int(limit))

    def walk(s: int, part: int) -> None:
        _walk_direction(flat_hit, flat_vol, STICKS[s], shape, int(limit), weights[s], ranks[s], bool(is_int),
                        best, count, sum_vw, part, threads)

    with ThreadPoolExecutor(max_workers=max(threads - 1, 1)) as pool:
        # directions one after another: ties are summed in PLUS's stick order
        for s in range(STICKS.shape[0]):
            others = [pool.submit(walk, s, part) for part in range(1, threads)]
            walk(s, 0)
            for f in others:
                f.result()
    ok, value = _finish(best, count, sum_vw, rank_weight, bool(is_int))
    return ok.reshape(shape), value.reshape(shape)
