"""Hole filling with PLUS's elements (IGSIO ``vtkIGSIOFillHolesInVolume``), as numba kernels.

Every voxel the paste never reached (zero accumulation) is filled from the *unfilled* volume (so a
filled voxel never feeds another) by the first element, in configuration order, that succeeds:

* ``STICK``: along 13 directions, the nearest hit voxel forward and backward (total length below
  ``stick_length_limit``); each stick's value is the distance-weighted blend of its two ends (cast
  to the voxel type), its score 1 / length in voxels; the best sticks (all ties) are averaged.
* ``GAUSSIAN`` / ``GAUSSIAN_ACCUMULATION`` / ``DISTANCE_WEIGHT_INVERSE``: weighted mean of the hit
  voxels in a ``size``-cube (weights from the kernel, times the accumulation for the second);
  succeeds when the fraction of hit voxels exceeds ``min_ratio``.
* ``NEAREST_NEIGHBOR``: mean of the hit voxels in the smallest cube (radius 1, 2, ...) holding any.

Results are cast to the volume's type as C does (truncation for integer types). STICK elements with
one stick (PLUS's usual setting) are computed line by line for the whole volume first
(:mod:`usx_stream.compound.sticks`); the other elements run per hole (one thread: numba's default
threading layer must not be entered from two threads at once, and snapshots may come from any thread).
"""

from __future__ import annotations

import math
from typing import Sequence

import numba as nb
import numpy as np

from .config import HoleFillingElement
from .holes_common import STICKS, cast_value
from .sticks import stick_fill_into, stick_fill_single

TYPE_CODES = {"STICK": 0, "GAUSSIAN": 1, "GAUSSIAN_ACCUMULATION": 2, "NEAREST_NEIGHBOR": 3,
              "DISTANCE_WEIGHT_INVERSE": 4}
def _gaussian_kernel(size: int, stdev: float) -> np.ndarray:
    """PLUS's Gaussian kernel, float32 arithmetic where PLUS uses floats. Indexed [z, y, x]."""
    rng = np.float32((size - 1) / 2.0)
    stdev32 = np.float32(stdev)
    divisor = np.float32(float(stdev32 * stdev32) * 2.0)
    term = np.float32(math.pow(2 * math.pi, 1.5) * math.pow(float(stdev32), 3))
    inv_term = np.float32(np.float32(1.0) / term)
    d = (np.arange(size, dtype=np.float64) - float(rng)) ** 2 / float(divisor)
    e = -(d[None, None, :] + d[None, :, None] + d[:, None, None])
    return (float(inv_term) * np.exp(e)).astype(np.float32)


def _inverse_distance_kernel(size: int) -> np.ndarray:
    """PLUS's inverse-distance kernel (float32, centre 0). Indexed [z, y, x]."""
    rng = np.float32((size - 1) / 2.0)
    d = np.arange(size, dtype=np.float32) - rng
    dist = np.sqrt(d[None, None, :] ** 2 + d[None, :, None] ** 2 + d[:, None, None] ** 2).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(dist > 0, np.float32(1.0) / dist, np.float32(0.0))
    return np.abs(inv).astype(np.float32)


def pack_elements(elements: Sequence[HoleFillingElement]):
    """Elements as arrays for the kernel: ``(params (n, 5) int64, ratios (n,) float64, kernels)``.

    ``params`` rows: type code, size, stick length limit, number of sticks, unused.
    ``kernels`` is ``(n, S, S, S) float32`` (S the largest size, zero-padded).
    """
    n = len(elements)
    smax = max([e.size for e in elements if e.type != "STICK"] + [1])
    params = np.zeros((n, 5), dtype=np.int64)
    ratios = np.zeros(n, dtype=np.float64)
    kernels = np.zeros((n, smax, smax, smax), dtype=np.float32)
    for k, e in enumerate(elements):
        params[k] = (TYPE_CODES[e.type], e.size, e.stick_length_limit, e.number_of_sticks_to_use, 0)
        # PLUS stores the ratio as float and compares it to a double.
        ratios[k] = float(np.float32(e.min_ratio))
        if e.type in ("GAUSSIAN", "GAUSSIAN_ACCUMULATION"):
            kernels[k, :e.size, :e.size, :e.size] = _gaussian_kernel(e.size, e.stdev)
        elif e.type == "DISTANCE_WEIGHT_INVERSE":
            kernels[k, :e.size, :e.size, :e.size] = _inverse_distance_kernel(e.size)
    return params, ratios, kernels


@nb.njit(nogil=True)
def _stick(vol, acc, x, y, z, limit, n_use, is_int, values, weights):
    nz, ny, nx = vol.shape
    weights[:] = 0.0
    for s in range(13):
        dx, dy, dz = STICKS[s, 0], STICKS[s, 1], STICKS[s, 2]
        fwd = -1
        fwd_val = 0.0
        for k in range(1, limit):
            xt, yt, zt = x + k * dx, y + k * dy, z + k * dz
            if xt < 0 or yt < 0 or zt < 0 or xt >= nx or yt >= ny or zt >= nz:
                break
            if acc[zt, yt, xt] != 0:
                fwd, fwd_val = k, np.float64(vol[zt, yt, xt])
                break
        if fwd < 0:
            continue
        rvs = -1
        rvs_val = 0.0
        for k in range(1, limit - fwd):
            xt, yt, zt = x - k * dx, y - k * dy, z - k * dz
            if xt < 0 or yt < 0 or zt < 0 or xt >= nx or yt >= ny or zt >= nz:
                break
            if acc[zt, yt, xt] != 0:
                rvs, rvs_val = k, np.float64(vol[zt, yt, xt])
                break
        if rvs < 0:
            continue
        total = np.float64(fwd + rvs + 1)
        w_fwd = (rvs + 1) / total
        w_rvs = 1.0 - w_fwd
        weights[s] = 1.0 / (total * math.sqrt(np.float64(dx * dx + dy * dy + dz * dz)))
        values[s] = cast_value(w_rvs * rvs_val + w_fwd * fwd_val, is_int)
    used = 0
    total_value = 0.0
    total_weight = 0.0
    while used < n_use:
        best = weights.max()
        if best == 0:
            break
        for s in range(13):
            if weights[s] == best:
                total_value += values[s] * weights[s]
                total_weight += weights[s]
                used += 1
                weights[s] = 0.0
    if total_weight != 0:
        return True, cast_value(total_value / total_weight, is_int)
    return False, 0.0


@nb.njit(nogil=True)
def _kernel_mean(vol, acc, x, y, z, size, kernel, by_acc, min_ratio, is_int):
    nz, ny, nx = vol.shape
    r = (size - 1) // 2
    total = 0.0
    weight_sum = 0.0
    known = 0
    # PLUS's loop order (x outer, z inner) fixes the summation order.
    for xt in range(x - r, x + r + 1):
        for yt in range(y - r, y + r + 1):
            for zt in range(z - r, z + r + 1):
                if xt < 0 or yt < 0 or zt < 0 or xt >= nx or yt >= ny or zt >= nz:
                    continue
                a = acc[zt, yt, xt]
                if a != 0:
                    kv = kernel[zt - z + r, yt - y + r, xt - x + r]
                    # PLUS multiplies the uint16 accumulation by the float weight in float.
                    w = np.float64(np.float32(a) * kv) if by_acc else np.float64(kv)
                    total += np.float64(vol[zt, yt, xt]) * w
                    weight_sum += w
                    known += 1
    if weight_sum == 0:
        return False, 0.0
    if known / np.float64(size * size * size) > min_ratio:
        return True, cast_value(total / weight_sum, is_int)
    return False, 0.0


@nb.njit(nogil=True)
def _nearest(vol, acc, x, y, z, size, min_ratio, is_int):
    nz, ny, nx = vol.shape
    total = 0.0
    count = 0
    for r in range(1, (size - 1) // 2 + 1):
        for xt in range(x - r, x + r + 1):
            for yt in range(y - r, y + r + 1):
                for zt in range(z - r, z + r + 1):
                    if xt < 0 or yt < 0 or zt < 0 or xt >= nx or yt >= ny or zt >= nz:
                        continue
                    if acc[zt, yt, xt] != 0:
                        total += np.float64(vol[zt, yt, xt])
                        count += 1
        if count > 0:
            break
    if count == 0:
        return False, 0.0
    if count / np.float64(size * size * size) > min_ratio:
        return True, cast_value(total / count, is_int)
    return False, 0.0


@nb.njit(nogil=True)
def _fill_voxel(vol, acc, x, y, z, params, ratios, kernels, is_int, scratch, stick_ok, stick_value):
    value = 0.0
    for k in range(params.shape[0]):
        kind = params[k, 0]
        if kind == 0 and params[k, 4] > 0:
            # precomputed line by line (sticks.py)
            slot = params[k, 4] - 1
            ok, value = stick_ok[slot, z, y, x], stick_value[slot, z, y, x]
        elif kind == 0:
            ok, value = _stick(vol, acc, x, y, z, params[k, 2], params[k, 3], is_int, scratch[0], scratch[1])
        elif kind == 3:
            ok, value = _nearest(vol, acc, x, y, z, params[k, 1], ratios[k], is_int)
        else:
            ok, value = _kernel_mean(vol, acc, x, y, z, params[k, 1], kernels[k], kind == 2, ratios[k], is_int)
        if ok:
            return value
    return value


@nb.njit(cache=True, nogil=True)
def _fill_kernel(vol, acc, out, params, ratios, kernels, is_int, stick_ok, stick_value):
    nz, ny, nx = vol.shape
    scratch = np.zeros((2, 13), np.float64)  # reused: no allocation per voxel
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if acc[z, y, x] != 0:
                    out[z, y, x] = vol[z, y, x]
                else:
                    out[z, y, x] = _fill_voxel(vol, acc, x, y, z, params, ratios, kernels, is_int, scratch,
                                               stick_ok, stick_value)


def _precompute_sticks(vol, acc, elements, params, is_int):
    """Line-by-line STICK results for the elements that use one stick (``params[k, 4]`` = slot + 1)."""
    single = [k for k, e in enumerate(elements) if e.type == "STICK" and e.number_of_sticks_to_use == 1]
    if not single:
        return np.zeros((1, 1, 1, 1), bool), np.zeros((1, 1, 1, 1), np.float64)
    hit = (acc != 0).view(np.uint8)
    oks, values = [], []
    for slot, k in enumerate(single):
        ok, value = stick_fill_single(hit, vol, elements[k].stick_length_limit, is_int)
        oks.append(ok)
        values.append(value)
        params[k, 4] = slot + 1
    return np.stack(oks), np.stack(values)


def fill_holes(volume: np.ndarray, accumulation: np.ndarray, elements: Sequence[HoleFillingElement]) -> np.ndarray:
    """Fill the voxels with zero ``accumulation`` (PLUS semantics); returns a new array.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        Compounded values (any numeric dtype); not modified.
    accumulation : (Z, Y, X) ndarray
        Zero where no pixel was pasted (PLUS accumulation buffer, or any weight).
    elements : sequence of HoleFillingElement
        Tried in order for each hole; an empty sequence copies ``volume``.

    Returns
    -------
    (Z, Y, X) ndarray, dtype of ``volume``
    """
    if volume.shape != accumulation.shape or volume.ndim != 3:
        raise ValueError(f"fill_holes: volume {volume.shape} and accumulation {accumulation.shape} "
                         "must be the same 3-D shape")
    if not elements:
        return volume.copy()
    is_int = bool(np.issubdtype(volume.dtype, np.integer))
    acc = np.ascontiguousarray(accumulation)
    vol = np.ascontiguousarray(volume)
    if all(e.type == "STICK" and e.number_of_sticks_to_use == 1 for e in elements):
        return _fill_single_sticks(vol, acc, elements, is_int)
    params, ratios, kernels = pack_elements(elements)
    out = np.empty_like(volume)
    stick_ok, stick_value = _precompute_sticks(vol, acc, elements, params, is_int)
    _fill_kernel(vol, acc, out, params, ratios, kernels, is_int, stick_ok, stick_value)
    return out


def _fill_single_sticks(vol, acc, elements, is_int: bool) -> np.ndarray:
    """Only one-stick STICK elements: each fills the holes the earlier ones left, in place in a copy of
    ``vol``; holes no element fills get 0 (as PLUS)."""
    hit = (acc != 0).view(np.uint8)
    out = vol.copy()
    pending = (hit ^ 1).reshape(-1)
    for k, e in enumerate(elements):
        stick_fill_into(hit, vol, e.stick_length_limit, is_int, out.reshape(-1), pending,
                        last=k == len(elements) - 1)
    return out
