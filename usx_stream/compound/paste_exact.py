"""``exact`` semantics: an order-independent compounding with float64 coordinates (numpy reference).

Definition (shared bit for bit by the numpy, numba and torch backends):

* pixel ``(i, j)`` sits at voxel coordinates ``p = (m[:, 3] + j * m[:, 1]) + i * m[:, 0]`` (float64, this
  order of operations) where ``m`` maps pixels to voxel indices;
* NEAREST_NEIGHBOR: the pixel goes to voxel ``floor(p + 0.5)`` with weight 1;
* LINEAR: to the 8 voxels around ``p`` with trilinear weights ``(wx * wy) * wz`` quantised to integers
  ``floor(w * 4096 + 0.5)`` (:data:`LINEAR_UNIT`); corners outside the volume are dropped;
* values enter as integers: integer pixels as they are, float pixels as ``rint(v * 65536)``
  (:data:`FLOAT_UNIT`);
* MEAN keeps integer sums ``S += w * v`` and ``W += w`` (int64), so the result does not depend on the
  order of pixels or frames; the value is ``S / W`` (rounded half up for integer volumes);
* MAXIMUM keeps the largest value (LINEAR: of pixels with weight >= 1/8, as PLUS);
* LATEST keeps, per voxel, the pixel with the largest key ``(frame number, weight, pixel index)``.
"""

from __future__ import annotations

import numpy as np

LINEAR_UNIT = 4096
FLOAT_UNIT = 65536
# LATEST keys: frame << 33 | weight << 20 | pixel index (pixel index < 2**20, weight <= 4096 < 2**13).
KEY_WEIGHT_SHIFT = 20
KEY_FRAME_SHIFT = 33
MAX_PIXELS = 1 << KEY_WEIGHT_SHIFT


def value_scale(dtype) -> int:
    """Integer units per value: 1 for integer pixel types, :data:`FLOAT_UNIT` for floats."""
    return 1 if np.issubdtype(np.dtype(dtype), np.integer) else FLOAT_UNIT


def quantize_values(values: np.ndarray) -> np.ndarray:
    """Pixel values as int64 in :func:`value_scale` units."""
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    return np.rint(values.astype(np.float64) * FLOAT_UNIT).astype(np.int64)


def mask_segments(mask: np.ndarray) -> np.ndarray:
    """``(H, 4) int64`` column runs ``[a0, b0, a1, b1]`` of a row mask with at most two runs per row."""
    height, width = mask.shape
    segs = np.zeros((height, 4), dtype=np.int64)
    segs[:, 1] = segs[:, 3] = -1
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    for j in range(height):
        starts = np.flatnonzero(edges[j] == 1)
        ends = np.flatnonzero(edges[j] == -1) - 1
        if len(starts) > 2:
            raise ValueError(f"mask_segments: row {j} has {len(starts)} runs (at most 2 supported)")
        for k, (a, b) in enumerate(zip(starts, ends)):
            segs[j, 2 * k:2 * k + 2] = (a, b)
    return segs


def positions(m: np.ndarray, jj: np.ndarray, ii: np.ndarray) -> np.ndarray:
    """``(3, N) float64`` voxel coordinates of pixels ``(ii, jj)`` under ``m`` (3 or 4 x 4)."""
    m = np.asarray(m, dtype=np.float64)
    base = m[:3, 3:4] + jj[None, :] * m[:3, 1:2]
    return base + ii[None, :] * m[:3, 0:1]


def nn_targets(p: np.ndarray, dims_xyz) -> tuple[np.ndarray, np.ndarray]:
    """Nearest voxel of each position: ``(flat index (N,), inside (N,) bool)``."""
    k = np.floor(p + 0.5).astype(np.int64)
    nx, ny, nz = dims_xyz
    inside = ((k[0] >= 0) & (k[0] < nx) & (k[1] >= 0) & (k[1] < ny) & (k[2] >= 0) & (k[2] < nz))
    return (k[2] * ny + k[1]) * nx + k[0], inside


def linear_targets(p: np.ndarray, dims_xyz) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trilinear corners: ``(flat index (8, N), weight (8, N) int64, valid (8, N) bool)``.

    Corner ``c`` has offsets ``(c >> 2 & 1, c >> 1 & 1, c & 1)`` along x, y, z.
    """
    base = np.floor(p)
    f = p - base
    k0 = base.astype(np.int64)
    nx, ny, nz = dims_xyz
    idx = np.empty((8, p.shape[1]), dtype=np.int64)
    wq = np.empty((8, p.shape[1]), dtype=np.int64)
    valid = np.empty((8, p.shape[1]), dtype=bool)
    for c in range(8):
        ox, oy, oz = (c >> 2) & 1, (c >> 1) & 1, c & 1
        wx = f[0] if ox else 1.0 - f[0]
        wy = f[1] if oy else 1.0 - f[1]
        wz = f[2] if oz else 1.0 - f[2]
        wq[c] = np.floor((wx * wy) * wz * LINEAR_UNIT + 0.5).astype(np.int64)
        x, y, z = k0[0] + ox, k0[1] + oy, k0[2] + oz
        valid[c] = (wq[c] > 0) & (x >= 0) & (x < nx) & (y >= 0) & (y < ny) & (z >= 0) & (z < nz)
        idx[c] = (z * ny + y) * nx + x
    return idx, wq, valid


def paste_exact_numpy(values_q: np.ndarray, jj: np.ndarray, ii: np.ndarray, m: np.ndarray, state: dict, *,
                      interpolation: str, mode: str, frame_number: int, pixel_index: np.ndarray) -> int:
    """Paste one frame (``exact`` semantics) with vectorised numpy; returns pixels inside the volume.

    Parameters
    ----------
    values_q : (N,) int64
        Quantised pixel values (:func:`quantize_values`) of the pasted pixels.
    jj, ii : (N,) ndarray
        Row and column of each pixel.
    m : (4, 4) ndarray
        Pixel -> voxel index transform.
    state : dict
        ``"dims"`` (nx, ny, nz) and flat arrays: MEAN ``"sum"``, ``"weight"`` (int64);
        MAXIMUM/LATEST ``"value"`` (int64, initially the int64 minimum), ``"weight"`` (int64),
        LATEST also ``"key"`` (int64, initially -1).
    frame_number : int
        Counts pasted frames (LATEST).
    pixel_index : (N,) int64
        ``j * W + i`` (LATEST tie-break).
    """
    p = positions(m, jj.astype(np.float64), ii.astype(np.float64))
    if interpolation == "NEAREST_NEIGHBOR":
        idx, inside = nn_targets(p, state["dims"])
        idx, w, v, pix = idx[inside], np.ones(int(inside.sum()), np.int64), values_q[inside], pixel_index[inside]
        pasted = int(inside.sum())
    else:
        idx8, w8, valid = linear_targets(p, state["dims"])
        pasted = int(valid.any(axis=0).sum())
        if mode == "MAXIMUM":
            valid &= w8 >= LINEAR_UNIT // 8
        idx, w = idx8[valid], w8[valid]
        v = np.broadcast_to(values_q, idx8.shape)[valid]
        pix = np.broadcast_to(pixel_index, idx8.shape)[valid]
    if mode == "MEAN":
        np.add.at(state["sum"], idx, w * v)
        np.add.at(state["weight"], idx, w)
    elif mode == "MAXIMUM":
        np.maximum.at(state["value"], idx, v)
        np.add.at(state["weight"], idx, w)
    else:
        key = (np.int64(frame_number) << KEY_FRAME_SHIFT) | (w << KEY_WEIGHT_SHIFT) | pix
        np.maximum.at(state["key"], idx, key)
        won = state["key"][idx] == key
        state["value"][idx[won]] = v[won]
        np.add.at(state["weight"], idx, w)
    return pasted


def new_state(n_voxels: int, dims_xyz, mode: str, *, interleaved: bool = False) -> dict:
    """Zeroed exact-semantics accumulators for a volume of ``n_voxels`` (flat arrays).

    ``interleaved`` (MEAN): ``"sum"`` and ``"weight"`` are views of one array ``"pair"`` holding each
    voxel's sum and weight side by side, the layout of the numba span kernels.
    """
    state = {"dims": tuple(int(d) for d in dims_xyz)}
    if mode == "MEAN" and interleaved:
        state["pair"] = np.zeros(2 * n_voxels, np.int64)
        state["sum"], state["weight"] = state["pair"][0::2], state["pair"][1::2]
        return state
    state["weight"] = np.zeros(n_voxels, np.int64)
    if mode == "MEAN":
        state["sum"] = np.zeros(n_voxels, np.int64)
    else:
        state["value"] = np.full(n_voxels, np.iinfo(np.int64).min, np.int64)
    if mode == "LATEST":
        state["key"] = np.full(n_voxels, -1, np.int64)
    return state


def finalize_values(state: dict, mode: str, dtype) -> np.ndarray:
    """Flat compounded values in ``dtype`` from an exact-semantics state."""
    scale = value_scale(dtype)
    if mode == "MEAN":
        s, w = state["sum"], state["weight"]
        out = np.zeros(s.shape, dtype=np.float64 if scale != 1 else np.int64)
        hit = w > 0
        # ufuncs with where= instead of fancy indexing: no gathered copies (half the time on a live volume)
        if scale == 1:
            # round half up in integers: floor((2S + W) / 2W)
            np.floor_divide(2 * s + w, 2 * w, out=out, where=hit)
        else:
            np.divide(s, w, out=out, where=hit)   # int64 / int64 -> float64, as s / float64(w)
            out /= scale
    else:
        # never-hit voxels hold the initial minimum: report them as 0
        raw = np.where(state["weight"] > 0, state["value"], 0)
        out = raw.astype(np.float64) / scale if scale != 1 else raw
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        out = np.clip(out, info.min, info.max)
    return out.astype(dtype)
