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


@nb.njit(inline="always")
def _close_gap(vol, idx, gap, stride, prev_val, limit, weights, ranks, blend, is_int, best, count, sum_vw):
    """A hit at flat ``idx`` whose previous hit on its line lies ``gap`` steps back: the holes between
    get this direction's stick if it beats (or ties) what they have."""
    if gap < 2 or gap > limit - 1:
        return
    val = np.float64(vol[idx])
    weight = weights[gap]
    rank = ranks[gap]
    h = idx - gap * stride
    for u in range(1, gap):
        # hole u steps after the previous hit: rvs = u, fwd = gap - u
        h += stride
        if rank < best[h]:
            continue  # most sticks lose: their value is not needed
        w_fwd = blend[gap, u]
        value = cast_value((1.0 - w_fwd) * prev_val + w_fwd * val, is_int)
        if rank > best[h]:
            best[h] = rank
            count[h] = 1
            sum_vw[h] = value * weight
        else:
            count[h] += 1
            sum_vw[h] += value * weight


@nb.njit(cache=True, nogil=True)
def _walk_direction(hit, vol, d, shape, limit, weights, ranks, blend, is_int, best, count, sum_vw, lo, hi):
    """Every line along ``d``, visited in memory order (z, y, x) rather than line by line: a strided
    walk along each line touched a new cache line at every step. Each line keeps, in a slot named by
    where it enters the volume, the step and value of its last hit; the leading axis of ``d`` (z, else
    y, else x) is walked in the sign of ``d`` so each line is still seen in its own order.

    Only the lines of one share are walked, so that threads can walk shares at once: z-slices
    ``lo <= z < hi`` for a ``d`` without z (its lines stay in their slice), else the lines entering at
    columns ``lo <= x - dx * t < hi`` (``t`` the step along z: constant along a line)."""
    nz, ny, nx = shape
    dx, dy, dz = d[0], d[1], d[2]
    lead = 2 if dz != 0 else (1 if dy != 0 else 0)
    pad = nz if lead == 2 else (ny if lead == 1 else 0)
    slot_w = nx + 2 * pad
    last_t = np.empty((ny + 2 * pad) * slot_w, np.int64)
    last_val = np.empty(last_t.shape[0], np.float64)
    stride = (dz * ny + dy) * nx + dx
    last_t[:] = -(1 << 40)
    z0, z1 = (0, nz) if lead == 2 else (lo, hi)
    for zz in range(z0, z1):
        z = zz if dz >= 0 else nz - 1 - zz
        x0, x1 = (max(lo + dx * zz, 0), min(hi + dx * zz, nx)) if lead == 2 else (0, nx)
        if lead < 2:
            last_t[:] = -(1 << 40)  # lines stay in their z-slice
        for yy in range(ny):
            y = yy if (lead != 1 or dy > 0) else ny - 1 - yy
            if lead == 0:
                last_t[0] = -(1 << 40)  # the row is the line
            row = (z * ny + y) * nx
            for x in range(x0, x1):
                if not hit[row + x]:
                    continue
                if lead == 2:
                    t = zz
                    slot = (y - dy * t + pad) * slot_w + x - dx * t + pad
                elif lead == 1:
                    t = yy
                    slot = x - dx * t + pad
                else:
                    t = x
                    slot = 0
                _close_gap(vol, row + x, t - last_t[slot], stride, last_val[slot], limit, weights, ranks, blend,
                           is_int, best, count, sum_vw)
                last_t[slot] = t
                last_val[slot] = np.float64(vol[row + x])


def shares(d, shape, parts: int) -> list[tuple[int, int]]:
    """``parts`` ranges ``(lo, hi)`` for :func:`_walk_direction` covering every line of ``d`` once,
    each with about the same number of voxels."""
    nz, ny, nx = shape
    if d[2] == 0:
        return [(nz * k // parts, nz * (k + 1) // parts) for k in range(parts)]
    # entry columns x - dx * t of every (t, x): a y-row of each share has the same number of them
    entry = np.sort((np.arange(nx)[None, :] - int(d[0]) * np.arange(nz)[:, None]).ravel())
    cuts = [int(entry[0])] + [int(entry[len(entry) * k // parts]) for k in range(1, parts)] + [int(entry[-1]) + 1]
    return list(zip(cuts[:-1], cuts[1:]))


@nb.njit(inline="always")
def _stick_value(k, best, count, sum_vw, rank_weight, is_int):
    w = rank_weight[best[k]]
    sum_w = 0.0
    for _ in range(count[k]):  # PLUS adds the tied weights one by one
        sum_w += w
    return cast_value(sum_vw[k] / sum_w, is_int)


@nb.njit(cache=True, nogil=True)
def _finish(best, count, sum_vw, rank_weight, is_int):
    ok = count > 0
    value = np.zeros(count.shape[0], np.float64)
    for k in range(ok.shape[0]):
        if ok[k]:
            value[k] = _stick_value(k, best, count, sum_vw, rank_weight, is_int)
    return ok, value


@nb.njit(cache=True, nogil=True)
def _finish_into(best, count, sum_vw, rank_weight, is_int, out, pending, last):
    """Holes still ``pending`` that have a stick get its value in ``out`` (cast to ``out``'s type as
    ``astype`` does) and leave ``pending``; with ``last``, the others get 0 (PLUS: no element
    succeeded). Written in place: assembling the volume with ``np.where`` took ~10 ms a volume."""
    for k in range(out.shape[0]):
        if not pending[k]:
            continue
        if count[k] > 0:
            out[k] = _stick_value(k, best, count, sum_vw, rank_weight, is_int)
            pending[k] = 0
        elif last:
            out[k] = 0


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


def blend_table(limit: int) -> np.ndarray:
    """``blend[gap, u] = (u + 1) / (gap + 1)``: PLUS's weight of the forward end for the hole ``u`` steps
    past the previous hit (the same double division, done once per limit instead of once per stick)."""
    gap = np.arange(limit, dtype=np.float64)[:, None]
    u = np.arange(limit, dtype=np.float64)[None, :]
    return (u + 1.0) / (gap + 1.0)


def _walk_all(hit: np.ndarray, vol: np.ndarray, limit: int, is_int: bool, threads: int):
    """Every direction's sticks: per voxel the best rank, the number of sticks with it and their
    weighted value sum (flat arrays), plus the table mapping ranks to weights."""
    shape = hit.shape
    flat_hit, flat_vol = hit.reshape(-1), np.ascontiguousarray(vol).reshape(-1)
    n = flat_hit.shape[0]
    best, count, sum_vw = np.zeros(n, np.uint16), np.zeros(n, np.uint8), np.zeros(n, np.float64)
    weights, ranks, rank_weight = stick_tables(int(limit))
    blend = blend_table(int(limit))

    def walk(s: int, lo: int, hi: int) -> None:
        _walk_direction(flat_hit, flat_vol, STICKS[s], shape, int(limit), weights[s], ranks[s], blend,
                        bool(is_int), best, count, sum_vw, lo, hi)

    with ThreadPoolExecutor(max_workers=max(threads - 1, 1)) as pool:
        # directions one after another: ties are summed in PLUS's stick order
        for s in range(STICKS.shape[0]):
            mine, *rest = shares(STICKS[s], shape, threads)
            others = [pool.submit(walk, s, lo, hi) for lo, hi in rest]
            walk(s, *mine)
            for f in others:
                f.result()
    return best, count, sum_vw, rank_weight


def stick_fill_single(hit: np.ndarray, vol: np.ndarray, limit: int, is_int: bool, *, threads: int = 2):
    """STICK with one stick per hole: ``(ok (Z, Y, X) bool, value (Z, Y, X) float64)``.

    ``hit`` (uint8) is non-zero where the paste reached; ``value`` is already cast as PLUS casts
    (truncation for integer volumes). ``threads`` share the lines of each direction.
    """
    best, count, sum_vw, rank_weight = _walk_all(hit, vol, limit, is_int, threads)
    ok, value = _finish(best, count, sum_vw, rank_weight, bool(is_int))
    return ok.reshape(hit.shape), value.reshape(hit.shape)


def stick_fill_into(hit: np.ndarray, vol: np.ndarray, limit: int, is_int: bool, out: np.ndarray,
                    pending: np.ndarray, *, last: bool, threads: int = 2) -> None:
    """:func:`stick_fill_single` written into ``out`` (flat, ``vol``'s type) at the holes still
    ``pending`` (flat uint8, cleared where filled); ``last`` zeroes the holes left."""
    best, count, sum_vw, rank_weight = _walk_all(hit, vol, limit, is_int, threads)
    _finish_into(best, count, sum_vw, rank_weight, bool(is_int), out, pending, bool(last))
