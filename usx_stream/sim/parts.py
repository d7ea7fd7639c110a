"""Implicit-field building blocks for the procedural vertebrae.

Every primitive returns a signed distance (or a close, sign-exact approximation) in mm for ``(N, 3)``
points: negative inside, positive outside. Parts are joined with a polynomial smooth minimum so that the
processes blend into the arch the way bone does, instead of meeting at sharp creases.
:class:`SampledField` keeps a field on a regular grid and interpolates it, which is what the mesher, the
ultrasound ray caster and the X-ray projector share, so all three see exactly the same bone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Value used outside a sampled grid: "far outside every bone".
FAR_MM = 1.0e3


def smooth_union(a: np.ndarray, b: np.ndarray, k_mm: float) -> np.ndarray:
    """Polynomial smooth minimum of two fields; ``k_mm`` is the blend radius (0 = plain union)."""
    if k_mm <= 0:
        return np.minimum(a, b)
    h = np.clip(k_mm - np.abs(a - b), 0.0, None) / k_mm
    return np.minimum(a, b) - h * h * k_mm * 0.25


def frame_from_axis(axis, up) -> np.ndarray:
    """``(3, 3)`` rotation whose columns are ``u = axis``, ``v`` = ``up`` made orthogonal, ``w = u x v``."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    v = np.asarray(up, dtype=np.float64)
    v = v - (v @ u) * u
    n = np.linalg.norm(v)
    if n < 1e-9:
        raise ValueError(f"up: {up} is parallel to axis {axis}")
    v = v / n
    return np.column_stack([u, v, np.cross(u, v)])


def sd_round_box(p: np.ndarray, center, rot: np.ndarray, half_mm, radius_mm: float) -> np.ndarray:
    """Signed distance to an oriented box with rounded edges.

    Parameters
    ----------
    p : (N, 3) ndarray, mm
    center : (3,) box centre, mm
    rot : (3, 3) ndarray
        Columns are the box axes in the frame of ``p``.
    half_mm : (3,) half extents along the box axes (rounding included), mm
    radius_mm : float
        Edge rounding, mm (at most the smallest half extent).
    """
    half = np.asarray(half_mm, dtype=np.float64)
    r = min(float(radius_mm), float(half.min()))
    q = np.abs((p - np.asarray(center)) @ rot) - (half - r)
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
    inside = np.minimum(q.max(axis=1), 0.0)
    return outside + inside - r


def sd_segment_box(p: np.ndarray, a, b, up, half_v_mm: float, half_w_mm: float, radius_mm: float) -> np.ndarray:
    """Rounded box spanning segment ``a -> b`` (ends included), ``2*half_v`` across along ``up``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    rot = frame_from_axis(b - a, up)
    half_len = 0.5 * np.linalg.norm(b - a) + radius_mm
    return sd_round_box(p, 0.5 * (a + b), rot, (half_len, half_v_mm, half_w_mm), radius_mm)


def sd_ellipsoid(p: np.ndarray, center, radii_mm) -> np.ndarray:
    """Axis-aligned ellipsoid; sign-exact, distance approximate (the usual |p/r| bound)."""
    r = np.asarray(radii_mm, dtype=np.float64)
    q = p - np.asarray(center)
    k0 = np.linalg.norm(q / r, axis=1)
    k1 = np.linalg.norm(q / (r * r), axis=1)
    return np.where(k1 > 1e-12, k0 * (k0 - 1.0) / np.maximum(k1, 1e-12), -r.min())


def sd_vertebral_body(p: np.ndarray, *, width_mm: float, depth_mm: float, height_ant_mm: float,
                      height_post_mm: float, waist: float = 0.06, edge_mm: float = 2.0) -> np.ndarray:
    """Vertebral body centred at the origin: x left-right, y posterior, z cranial.

    The cross-section is a superellipse (exponent 2.4 anteriorly, 4 posteriorly, which flattens the
    posterior wall that faces the spinal canal); the sides are waisted by ``waist`` (fraction of the
    radius at mid-height); the height changes linearly from anterior to posterior (wedging); edges are
    rounded by ``edge_mm``. Sign-exact, distance approximate within the slope of the wedge.
    """
    a, b = 0.5 * width_mm - edge_mm, 0.5 * depth_mm - edge_mm
    h_mid = 0.25 * (height_ant_mm + height_post_mm)
    slope = 0.5 * (height_post_mm - height_ant_mm) / depth_mm
    half_h = h_mid + slope * p[:, 1] - edge_mm
    zn = np.clip(p[:, 2] / np.maximum(half_h, 1e-6), -1.0, 1.0)
    s = 1.0 - waist * (1.0 - zn * zn)
    n = np.where(p[:, 1] > 0, 4.0, 2.4)
    x = np.abs(p[:, 0]) / (a * s)
    y = np.abs(p[:, 1]) / (b * s)
    rho = (x ** n + y ** n) ** (1.0 / n)
    r_xy = np.hypot(p[:, 0], p[:, 1])
    d_xy = r_xy * (1.0 - 1.0 / np.maximum(rho, 1e-9))
    d_z = np.abs(p[:, 2]) - half_h
    q = np.stack([d_xy, d_z], axis=1)
    return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0) - edge_mm


@dataclass
class SampledField:
    """A scalar field on a regular, axis-aligned grid with trilinear interpolation.

    Attributes
    ----------
    values : (X, Y, Z) float32 ndarray
        Field at ``origin_mm + (i, j, k) * spacing_mm``; negative inside.
    origin_mm : (3,) float ndarray
    spacing_mm : float
    """

    values: np.ndarray
    origin_mm: np.ndarray
    spacing_mm: float

    def sample(self, points_mm: np.ndarray) -> np.ndarray:
        """Field at ``(N, 3)`` points of the grid's frame; :data:`FAR_MM` outside the grid. ``(N,)``."""
        pts = np.asarray(points_mm, dtype=np.float64)
        if len(pts) == 0:
            return np.zeros(0, dtype=np.float32)
        idx = ((pts - self.origin_mm) / self.spacing_mm).T
        return ndimage.map_coordinates(self.values, idx, order=1, mode="constant", cval=FAR_MM,
                                       prefilter=False)

    def gradient(self, points_mm: np.ndarray, *, step_mm: float | None = None) -> np.ndarray:
        """Central-difference gradient at ``(N, 3)`` points; ``(N, 3)`` (unnormalised)."""
        h = step_mm or self.spacing_mm
        pts = np.asarray(points_mm, dtype=np.float64)
        g = np.empty_like(pts)
        for axis in range(3):
            d = np.zeros(3)
            d[axis] = h
            g[:, axis] = (self.sample(pts + d) - self.sample(pts - d)) / (2 * h)
        return g

    @property
    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) corners of the grid, mm."""
        upper = self.origin_mm + (np.array(self.values.shape) - 1) * self.spacing_mm
        return self.origin_mm.copy(), upper
