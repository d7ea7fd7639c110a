"""Time interpolation of rigid 4x4 transforms (linear translation, quaternion slerp rotation)."""

from __future__ import annotations

import numpy as np


def _quat_from_rotation(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of the rotation closest to ``r`` (3, 3)."""
    u, _, vt = np.linalg.svd(r)
    r = u @ vt  # nearest orthonormal matrix: tracker noise may leave R slightly non-orthogonal
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    if tr > 0:  # Shepperd's method: divide by the largest of the four candidates for stability
        s = np.sqrt(tr + 1.0) * 2
        w, x, y, z = 0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        w, x, y, z = (r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s
    elif r[1, 1] > r[2, 2]:
        s = np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        w, x, y, z = (r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s
    else:
        s = np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        w, x, y, z = (r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)


def _rotation_from_quat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical linear interpolation between unit quaternions, shortest path."""
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:  # nearly parallel: lerp is exact to float precision and avoids 0/0
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(d)
    return (np.sin((1 - t) * theta) * q0 + np.sin(t * theta) * q1) / np.sin(theta)


def interpolate_rigid(m0: np.ndarray, m1: np.ndarray, t: float) -> np.ndarray:
    """Transform at fraction ``t`` (0 -> ``m0``, 1 -> ``m1``) between two rigid (4, 4) transforms."""
    if t <= 0.0:
        return np.array(m0, dtype=np.float64)
    if t >= 1.0:
        return np.array(m1, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = _rotation_from_quat(slerp(_quat_from_rotation(m0[:3, :3]), _quat_from_rotation(m1[:3, :3]), t))
    out[:3, 3] = (1 - t) * m0[:3, 3] + t * m1[:3, 3]
    return out
