"""Lateral X-ray labelmap of a vertebral body, and its back-projection onto the mid-sagittal plane.

The X-ray is a point source and a flat detector (a pinhole camera). :class:`LateralView` describes one
such view in the patient frame (mm). :func:`render_body_labelmap` makes the labelmap of one vertebral
body cropped around it: a detector pixel is labelled when the ray from the source to its centre crosses
the body mesh (exact silhouette, by ray casting). :func:`backproject_to_plane` turns labelled pixels into
3D points where their rays meet the vertebra's mid-sagittal plane, which is how the completion network
receives the X-ray: a planar point set aligned with the ultrasound cloud.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..frames import Surface


@dataclass(frozen=True)
class LateralView:
    """A pinhole X-ray view: source point and detector plane, patient frame, mm.

    Attributes
    ----------
    source_mm : (3,) ndarray
        X-ray focal spot.
    detector_origin_mm : (3,) ndarray
        Centre of pixel (0, 0).
    u_axis, v_axis : (3,) ndarray
        Unit directions of increasing column ``i`` and row ``j`` on the detector.
    pixel_spacing_mm : float
        Detector pixel size (square pixels).
    shape : (int, int)
        Detector rows, columns.
    """

    source_mm: np.ndarray
    detector_origin_mm: np.ndarray
    u_axis: np.ndarray
    v_axis: np.ndarray
    pixel_spacing_mm: float
    shape: tuple[int, int]

    @classmethod
    def lateral(cls, target_mm, *, lateral, cranial, source_to_target_mm: float = 700.0,
                source_to_detector_mm: float = 1000.0, pixel_spacing_mm: float = 0.3,
                shape: tuple[int, int] = (1024, 1024)) -> "LateralView":
        """A lateral view whose central ray passes through ``target_mm`` along ``lateral``.

        The source sits ``source_to_target_mm`` from the target on the ``-lateral`` side; the detector
        is perpendicular to the central ray at ``source_to_detector_mm`` from the source, its rows
        running caudally (``v = -cranial``).
        """
        if not 0 < source_to_target_mm < source_to_detector_mm:
            raise ValueError(
                f"source_to_target_mm: must be in (0, source_to_detector_mm={source_to_detector_mm}), "
                f"got {source_to_target_mm!r}")
        if pixel_spacing_mm <= 0:
            raise ValueError(f"pixel_spacing_mm: must be > 0, got {pixel_spacing_mm!r}")
        w = np.asarray(lateral, dtype=np.float64)
        w = w / np.linalg.norm(w)
        v = -np.asarray(cranial, dtype=np.float64)
        v = v - (v @ w) * w
        v = v / np.linalg.norm(v)
        u = np.cross(v, w)
        source = np.asarray(target_mm, dtype=np.float64) - w * source_to_target_mm
        centre = source + w * source_to_detector_mm
        rows, cols = shape
        origin = centre - u * pixel_spacing_mm * (cols - 1) / 2 - v * pixel_spacing_mm * (rows - 1) / 2
        return cls(source, origin, u, v, float(pixel_spacing_mm), (int(rows), int(cols)))

    def pixel_centres_mm(self, ij: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixel indices (column i, row j) -> ``(N, 3)`` detector positions, mm."""
        ij = np.asarray(ij, dtype=np.float64).reshape(-1, 2)
        return (self.detector_origin_mm + np.outer(ij[:, 0], self.u_axis) * self.pixel_spacing_mm
                + np.outer(ij[:, 1], self.v_axis) * self.pixel_spacing_mm)

    def project(self, points_mm: np.ndarray) -> np.ndarray:
        """``(N, 3)`` points -> ``(N, 2)`` continuous pixel coordinates (column i, row j)."""
        p = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
        w = np.cross(self.u_axis, self.v_axis)
        d = p - self.source_mm
        depth_det = (self.detector_origin_mm - self.source_mm) @ w
        on_det = self.source_mm + d * (depth_det / (d @ w))[:, None]
        rel = on_det - self.detector_origin_mm
        return np.stack([rel @ self.u_axis, rel @ self.v_axis], axis=1) / self.pixel_spacing_mm


@dataclass
class CroppedLabelmap:
    """A labelmap crop: ``mask[j, i]`` is detector pixel ``(i0 + i, j0 + j)``.

    Attributes
    ----------
    mask : (h, w) bool ndarray
    offset_ij : (2,) int ndarray
        Detector pixel (column, row) of ``mask[0, 0]``.
    """

    mask: np.ndarray
    offset_ij: np.ndarray

    def labelled_pixels(self) -> np.ndarray:
        """``(N, 2)`` detector pixel indices (column i, row j) of the labelled pixels."""
        j, i = np.nonzero(self.mask)
        return np.stack([i, j], axis=1) + self.offset_ij


def render_body_labelmap(body: Surface, view: LateralView, *, margin_px: int = 4) -> CroppedLabelmap:
    """Labelmap of one vertebral body in ``view``, cropped to its bounding box plus ``margin_px``.

    Parameters
    ----------
    body : Surface
        Closed vertebral-body mesh, patient frame, mm.
    view : LateralView
    margin_px : int, keyword-only

    Returns
    -------
    CroppedLabelmap
        Pixels whose source ray crosses the body; empty when the body projects off the detector.
    """
    from .._deps import import_open3d

    o3d = import_open3d()
    uv = view.project(body.vertices_mm)
    rows, cols = view.shape
    lo = np.maximum(np.floor(uv.min(axis=0)).astype(int) - margin_px, 0)
    hi = np.minimum(np.ceil(uv.max(axis=0)).astype(int) + margin_px, [cols - 1, rows - 1])
    if np.any(hi < lo):
        return CroppedLabelmap(np.zeros((0, 0), dtype=bool), lo)
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
    ij = np.stack([ii.ravel(), jj.ravel()], axis=1)
    targets = view.pixel_centres_mm(ij)
    dirs = targets - view.source_mm
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(body.vertices_mm, dtype=np.float32)),
                        o3d.core.Tensor(np.ascontiguousarray(body.triangles, dtype=np.uint32)))
    rays = np.hstack([np.tile(view.source_mm, (len(dirs), 1)), dirs]).astype(np.float32)
    t_hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    mask = np.isfinite(t_hit).reshape(ii.shape)
    return CroppedLabelmap(mask, lo)


def backproject_to_plane(pixels_ij: np.ndarray, view: LateralView, *, plane_point_mm, plane_normal) -> np.ndarray:
    """Intersect the source rays through ``pixels_ij`` with a plane.

    Parameters
    ----------
    pixels_ij : (N, 2) ndarray
        Detector pixel indices (column i, row j).
    view : LateralView
    plane_point_mm : (3,) array_like, keyword-only
        A point of the plane (the vertebra's centre), patient frame, mm.
    plane_normal : (3,) array_like, keyword-only
        Plane normal (the vertebra's left-right axis).

    Returns
    -------
    (N, 3) float64 ndarray
        Points on the plane, mm. Rays parallel to the plane are dropped.
    """
    n = np.asarray(plane_normal, dtype=np.float64).reshape(3)
    n = n / np.linalg.norm(n)
    q = np.asarray(plane_point_mm, dtype=np.float64).reshape(3)
    d = view.pixel_centres_mm(pixels_ij) - view.source_mm
    denom = d @ n
    ok = np.abs(denom) > 1e-9
    t = ((q - view.source_mm) @ n) / denom[ok]
    return view.source_mm + d[ok] * t[:, None]
