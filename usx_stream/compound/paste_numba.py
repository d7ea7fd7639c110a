"""PLUS-semantics paste kernels (numba): one frame into the volume, sequentially, pixel by pixel.

PLUS's MEAN is a running mean updated at every pixel with integer arithmetic, so the order of the
pixels decides the result; these kernels visit pixels in PLUS's order (rows top to bottom, columns
left to right, the eight trilinear corners from the last to the first) and reproduce its arithmetic:

* accumulation buffer: uint16, 256 per whole pixel, saturating at 65535 (a voxel past 65279 is updated
  with weights 1/256 and 255/256 instead);
* NEAREST_NEIGHBOR/MEAN: ``out = (in * 256 + out * acc) // (acc + 256)`` (integer division);
* LINEAR/MEAN: ``out = round((w * in + acc/256 * out) / (w + acc/256))``, ``acc = round(256 * (w + acc/256))``;
* Optimization FULL computes coordinates and trilinear weights in 14-bit fixed point
  (products rounded, quotients rounded half-even), PARTIAL/NONE in doubles with PLUS's fast
  floor/round (which round to 2**-16 first).

Compounding modes are coded 0 = MEAN, 1 = MAXIMUM, 2 = LATEST.
"""

from __future__ import annotations

import numba as nb
import numpy as np

MODE_CODES = {"MEAN": 0, "MAXIMUM": 1, "LATEST": 2}
_MAGIC = 103079215104.0
_MAGIC_HALF = 103079215104.5
_MAGIC_INT = 103079215104
_ACC_THRESHOLD = 65279
_ACC_MAX = 65535


@nb.njit(inline="always")
def _fround(x):
    """PLUS fast round of a double (round to 2**-16, then half up)."""
    return np.int64(x + _MAGIC_HALF) - _MAGIC_INT


@nb.njit(inline="always")
def _ffloor(x):
    return np.int64(x + _MAGIC) - _MAGIC_INT


@nb.njit(inline="always")
def _fixmul(a, b):
    return (a * b + 8192) >> 14


@nb.njit(cache=True, nogil=True)
def paste_nn_plus(image, segments, m_fixed, m_double, use_fixed, is_int, out, acc, mode, reject, threshold):
    """Paste ``image`` (H, W) with nearest-neighbour interpolation into ``out``/``acc`` (Z, Y, X).

    ``m_fixed`` (3, 4) int64 (2**-14 units) and ``m_double`` (3, 4) float64 map pixel (i, j, 0, 1) to
    voxel indices; ``use_fixed`` picks the first. Pixels whose rounded index falls outside the volume
    are skipped. Returns the number of pixels pasted.
    """
    nz, ny, nx = out.shape
    flat_out = out.reshape(-1)
    flat_acc = acc.reshape(-1)
    count = 0
    for j in range(image.shape[0]):
        for s in range(2):
            for i in range(segments[j, 2 * s], segments[j, 2 * s + 1] + 1):
                v = image[j, i]
                if reject and v < threshold:
                    continue
                if use_fixed:
                    x = (m_fixed[0, 3] + j * m_fixed[0, 1] + i * m_fixed[0, 0] + 8192) >> 14
                    y = (m_fixed[1, 3] + j * m_fixed[1, 1] + i * m_fixed[1, 0] + 8192) >> 14
                    z = (m_fixed[2, 3] + j * m_fixed[2, 1] + i * m_fixed[2, 0] + 8192) >> 14
                else:
                    x = _fround(m_double[0, 3] + j * m_double[0, 1] + i * m_double[0, 0])
                    y = _fround(m_double[1, 3] + j * m_double[1, 1] + i * m_double[1, 0])
                    z = _fround(m_double[2, 3] + j * m_double[2, 1] + i * m_double[2, 0])
                if x < 0 or y < 0 or z < 0 or x >= nx or y >= ny or z >= nz:
                    continue
                idx = (z * ny + y) * nx + x
                # the update is spelled out here: through a helper function the loop ran several times slower
                a = np.int64(flat_acc[idx])
                if mode != 0:
                    if mode == 2 or flat_out[idx] < v:
                        flat_out[idx] = v
                    flat_acc[idx] = 256
                elif a <= _ACC_THRESHOLD:
                    if is_int:
                        flat_out[idx] = (np.int64(v) * 256 + np.int64(flat_out[idx]) * a) // (a + 256)
                    else:
                        flat_out[idx] = (np.float64(v) * 256.0 + np.float64(flat_out[idx]) * a) / (a + 256)
                    flat_acc[idx] = a + 256
                else:
                    # saturated: weights 1/256 and 255/256; C casts the double to T (truncation)
                    flat_out[idx] = np.float64(v) * (1.0 / 256) + np.float64(flat_out[idx]) * (255.0 / 256)
                count += 1
    return count


@nb.njit(inline="always")
def _acc_from_fixed(a_fixed):
    """uint16 accumulation value from a fixed-point weight already multiplied by 256."""
    if a_fixed < (_ACC_MAX << 14):
        return (a_fixed + 8192) >> 14
    return _ACC_MAX


@nb.njit(cache=True, nogil=True)
def paste_linear_fixed(image, segments, m_fixed, is_int, out, acc, mode, reject, threshold):
    """Trilinear paste with PLUS's fixed-point (Optimization FULL) arithmetic. Returns pixels pasted."""
    nz, ny, nx = out.shape
    flat_out = out.reshape(-1)
    flat_acc = acc.reshape(-1)
    idx = np.empty(8, np.int64)
    w = np.empty(8, np.int64)
    count = 0
    for j in range(image.shape[0]):
        for s in range(2):
            for i in range(segments[j, 2 * s], segments[j, 2 * s + 1] + 1):
                v = image[j, i]
                if reject and v < threshold:
                    continue
                px = m_fixed[0, 3] + j * m_fixed[0, 1] + i * m_fixed[0, 0]
                py = m_fixed[1, 3] + j * m_fixed[1, 1] + i * m_fixed[1, 0]
                pz = m_fixed[2, 3] + j * m_fixed[2, 1] + i * m_fixed[2, 0]
                x0, y0, z0 = px >> 14, py >> 14, pz >> 14
                fx, fy, fz = px - (x0 << 14), py - (y0 << 14), pz - (z0 << 14)
                x1, y1, z1 = x0 + (fx != 0), y0 + (fy != 0), z0 + (fz != 0)
                if x0 < 0 or y0 < 0 or z0 < 0 or x1 >= nx or y1 >= ny or z1 >= nz:
                    continue
                rx, ry, rz = 16384 - fx, 16384 - fy, 16384 - fz
                ryrz, ryfz, fyrz, fyfz = _fixmul(ry, rz), _fixmul(ry, fz), _fixmul(fy, rz), _fixmul(fy, fz)
                w[0], w[1], w[2], w[3] = _fixmul(rx, ryrz), _fixmul(rx, ryfz), _fixmul(rx, fyrz), _fixmul(rx, fyfz)
                w[4], w[5], w[6], w[7] = _fixmul(fx, ryrz), _fixmul(fx, ryfz), _fixmul(fx, fyrz), _fixmul(fx, fyfz)
                _corner_indices(idx, x0, x1, y0, y1, z0, z1, ny, nx)
                for c in range(7, -1, -1):
                    f = w[c]
                    if f == 0:
                        continue
                    k = idx[c]
                    # corner update spelled out (a helper function made the loop several times slower)
                    if mode == 0:
                        r = np.int64(flat_acc[k]) * 64  # fixed(acc / 256.0) is exact
                        a = f + r
                        if is_int:
                            num = f * np.int64(v) + r * np.int64(flat_out[k])
                            # fixed division: double quotient rounded half-even to 2**-14, then half up
                            q = np.int64(np.rint((np.float64(num) / np.float64(a)) * 16384.0))
                            flat_out[k] = (q + 8192) >> 14
                        else:
                            flat_out[k] = (f * np.float64(v) + r * np.float64(flat_out[k])) / a
                        flat_acc[k] = _acc_from_fixed(a * 256)
                    elif f >= 2048 and (mode == 2 or v > flat_out[k]):
                        flat_out[k] = v
                        flat_acc[k] = _acc_from_fixed(f * 256)
                count += 1
    return count


@nb.njit(cache=True, nogil=True)
def paste_linear_double(image, segments, m_double, is_int, out, acc, mode, reject, threshold):
    """Trilinear paste with PLUS's double (Optimization PARTIAL/NONE) arithmetic. Returns pixels pasted."""
    nz, ny, nx = out.shape
    flat_out = out.reshape(-1)
    flat_acc = acc.reshape(-1)
    idx = np.empty(8, np.int64)
    w = np.empty(8, np.float64)
    count = 0
    for j in range(image.shape[0]):
        for s in range(2):
            for i in range(segments[j, 2 * s], segments[j, 2 * s + 1] + 1):
                v = image[j, i]
                if reject and v < threshold:
                    continue
                px = m_double[0, 3] + j * m_double[0, 1] + i * m_double[0, 0]
                py = m_double[1, 3] + j * m_double[1, 1] + i * m_double[1, 0]
                pz = m_double[2, 3] + j * m_double[2, 1] + i * m_double[2, 0]
                x0, y0, z0 = _ffloor(px), _ffloor(py), _ffloor(pz)
                fx, fy, fz = px - x0, py - y0, pz - z0
                x1, y1, z1 = x0 + (fx != 0), y0 + (fy != 0), z0 + (fz != 0)
                if x0 < 0 or y0 < 0 or z0 < 0 or x1 >= nx or y1 >= ny or z1 >= nz:
                    continue
                rx, ry, rz = 1.0 - fx, 1.0 - fy, 1.0 - fz
                ryrz, ryfz, fyrz, fyfz = ry * rz, ry * fz, fy * rz, fy * fz
                w[0], w[1], w[2], w[3] = rx * ryrz, rx * ryfz, rx * fyrz, rx * fyfz
                w[4], w[5], w[6], w[7] = fx * ryrz, fx * ryfz, fx * fyrz, fx * fyfz
                _corner_indices(idx, x0, x1, y0, y1, z0, z1, ny, nx)
                for c in range(7, -1, -1):
                    f = w[c]
                    if f == 0:
                        continue
                    k = idx[c]
                    a = np.float64(flat_acc[k])
                    if mode == 0:
                        r = a / 256.0
                        a = f + r
                        value = (f * np.float64(v) + r * np.float64(flat_out[k])) / a
                        flat_out[k] = _fround(value) if is_int else value
                        a *= 256.0
                    elif f >= 0.125 and (mode == 2 or v > flat_out[k]):
                        flat_out[k] = v
                        a = f * 256.0
                    flat_acc[k] = _fround(a) if a < _ACC_MAX else _ACC_MAX
                count += 1
    return count


@nb.njit(inline="always")
def _corner_indices(idx, x0, x1, y0, y1, z0, z1, ny, nx):
    """Flat indices of the eight corners in PLUS's order (x slowest, then y, then z)."""
    idx[0] = (z0 * ny + y0) * nx + x0
    idx[1] = (z1 * ny + y0) * nx + x0
    idx[2] = (z0 * ny + y1) * nx + x0
    idx[3] = (z1 * ny + y1) * nx + x0
    idx[4] = (z0 * ny + y0) * nx + x1
    idx[5] = (z1 * ny + y0) * nx + x1
    idx[6] = (z0 * ny + y1) * nx + x1
    idx[7] = (z1 * ny + y1) * nx + x1


def paste_plus(image: np.ndarray, segments: np.ndarray, image_to_index: np.ndarray, out: np.ndarray,
               acc: np.ndarray, *, interpolation: str, mode: str, optimization: str,
               pixel_rejection_threshold: float | None = None) -> int:
    """Paste one frame with PLUS semantics, in place.

    Parameters
    ----------
    image : (H, W) ndarray
        Pixels (same dtype as ``out``), PLUS MF orientation.
    segments : (H, 4) int64 ndarray
        Pasted column ranges per row (:func:`usx_stream.compound.geometry.row_segments`).
    image_to_index : (4, 4) ndarray
        Pixel (i, j, 0, 1) -> voxel index (x, y, z, 1).
    out : (Z, Y, X) ndarray
        Compounded values, updated in place.
    acc : (Z, Y, X) uint16 ndarray
        PLUS accumulation buffer (256 per whole pixel), updated in place.
    interpolation, mode, optimization : str
        ``NEAREST_NEIGHBOR``/``LINEAR``; ``MEAN``/``MAXIMUM``/``LATEST``; ``FULL``/``PARTIAL``/``NONE``.
    pixel_rejection_threshold : float or None
        Skip pixels below this value.

    Returns
    -------
    int
        Number of pixels that landed inside the volume.
    """
    from .geometry import to_fixed

    m = np.ascontiguousarray(np.asarray(image_to_index, dtype=np.float64)[:3])
    is_int = bool(np.issubdtype(image.dtype, np.integer))
    code = MODE_CODES[mode]
    reject = pixel_rejection_threshold is not None
    thr = float(pixel_rejection_threshold) if reject else 0.0
    use_fixed = optimization == "FULL"
    if interpolation == "NEAREST_NEIGHBOR":
        return int(paste_nn_plus(image, segments, to_fixed(m), m, use_fixed, is_int, out, acc, code, reject, thr))
    if use_fixed:
        return int(paste_linear_fixed(image, segments, to_fixed(m), is_int, out, acc, code, reject, thr))
    return int(paste_linear_double(image, segments, m, is_int, out, acc, code, reject, thr))
