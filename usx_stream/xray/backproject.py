"""Back-projection of the X-ray vertebral-body labelmap into Reference.

A lateral X-ray flattens each vertebral body onto the detector. The completion network receives that
silhouette as a planar point set in 3D: every labelled pixel's ray (source -> pixel centre) is cut with
the vertebra's mid-sagittal plane. That plane passes through the vertebra's centre and is perpendicular
to the X-ray viewing direction at the centre (the lateral axis), so the points are where the silhouette
would sit if the body were flat: they line up with the ultrasound cloud, and project back exactly onto
their pixels.

The centres come from the ultrasound bone points of a level, or, before those are known, from
:func:`level_centres`: the centroid of each level's labelled pixels, back-projected onto the spine's
mid-sagittal plane (by default the plane through the isocentre perpendicular to the principal ray,
where a lateral C-arm is centred on the spine).

Pixels: ``labelmap[v, u]`` is detector pixel ``(u column, v row)``; its centre is at integer ``(u, v)``
(:mod:`usx_stream.xray.geometry`). Labels 1..5 are L1..L5, 0 is background. All positions are mm in
Reference.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from ..frames import LEVELS
from .geometry import CArmGeometry

log = logging.getLogger(__name__)

# A ray this close to parallel to the plane (|cos| of the angle between ray and normal) has no
# usable intersection and is dropped; lateral views meet the mid-sagittal plane at cos ~ 1.
_MIN_COS = 1e-6


def _check_labelmap(labelmap: np.ndarray, geometry: CArmGeometry) -> np.ndarray:
    lm = np.asarray(labelmap)
    if lm.ndim == 3 and lm.shape[0] == 1:
        lm = lm[0]
    if lm.ndim != 2:
        raise ValueError(f"labelmap: expected shape (rows, cols), got {lm.shape}")
    if tuple(lm.shape) != tuple(geometry.detector_shape):
        raise ValueError(f"labelmap: shape {lm.shape} does not match the detector {geometry.detector_shape}")
    return lm


def _unit(vector, name: str) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if v.shape != (3,) or not np.all(np.isfinite(v)) or np.linalg.norm(v) == 0:
        raise ValueError(f"{name}: expected a finite non-zero 3-vector, got {np.asarray(vector).tolist()}")
    return v / np.linalg.norm(v)


def _point(value, name: str) -> np.ndarray:
    p = np.asarray(value, dtype=np.float64).reshape(-1)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise ValueError(f"{name}: expected a finite 3D point (mm), got {np.asarray(value).tolist()}")
    return p


def level_pixels(labelmap: np.ndarray) -> dict[str, np.ndarray]:
    """Labelled pixels per level present.

    Parameters
    ----------
    labelmap : (rows, cols) integer ndarray
        0 background, 1..5 = L1..L5 (other values are ignored).

    Returns
    -------
    dict level -> (N, 2) int64 ndarray
        Pixel ``(u column, v row)`` of every labelled pixel, row-major order, for each level with N > 0.
    """
    lm = np.asarray(labelmap)
    rows, cols = np.nonzero((lm > 0) & (lm <= len(LEVELS)))
    labels = lm[rows, cols].astype(np.int64)
    order = np.argsort(labels, kind="stable")  # stable: keeps row-major order within a level
    counts = np.bincount(labels, minlength=len(LEVELS) + 1)[1:]
    chunks = np.split(np.stack([cols, rows], axis=1)[order], np.cumsum(counts)[:-1])
    return {level: c.astype(np.int64) for level, c, n in zip(LEVELS, chunks, counts) if n > 0}


def viewing_direction(geometry: CArmGeometry, point_ref_mm) -> np.ndarray:
    """Unit X-ray direction (source -> ``point_ref_mm``) in Reference: the lateral axis there, ``(3,)``."""
    return _unit(_point(point_ref_mm, "point_ref_mm") - geometry.source_ref_mm, "point_ref_mm - source")


def backproject_to_plane(geometry: CArmGeometry, pixels_uv, *, plane_point_mm, plane_normal,
                         return_kept: bool = False):
    """Intersect the rays from the source through detector pixels with a plane.

    This is the one back-projection of the project: the node's labelmap points and the simulator's
    training labelmaps both come from it.

    Rule for rays that give no point: a ray parallel to the plane (``|cos|`` of its angle to the normal
    at most ``1e-6``) or one that meets the plane behind the source (or at it) is **dropped**, so the
    result holds only finite points (a NaN must never reach a point cloud). Pass ``return_kept=True``
    to learn which pixels gave the rows.

    Parameters
    ----------
    geometry : CArmGeometry
    pixels_uv : (N, 2) array_like
        Detector positions ``(u column, v row)``, pixels (integers are pixel centres).
    plane_point_mm : (3,) array_like, keyword-only
        A point of the plane, Reference, mm.
    plane_normal : (3,) array_like, keyword-only
        Plane normal, Reference (any length).
    return_kept : bool, keyword-only
        Also return the mask of the pixels whose ray gave a point.

    Returns
    -------
    points : (M, 3) float64 ndarray
        Intersections of the kept rays, Reference, mm, in the order of ``pixels_uv`` (M <= N).
    kept : (N,) bool ndarray
        Only with ``return_kept``: ``points == all intersections[kept]``.
    """
    n = _unit(plane_normal, "plane_normal")
    q = _point(plane_point_mm, "plane_point_mm")
    uv = np.asarray(pixels_uv, dtype=np.float64).reshape(-1, 2)
    if len(uv) == 0:
        points, kept = np.zeros((0, 3)), np.zeros(0, dtype=bool)
    else:
        origins, dirs = geometry.pixel_rays(uv)
        cos = dirs @ n
        kept = np.abs(cos) > _MIN_COS
        t = ((q - origins[0]) @ n) / cos[kept]
        in_front = t > 0
        kept[kept] = in_front
        points = origins[kept] + dirs[kept] * t[in_front, None]
    return (points, kept) if return_kept else points


def subsample_indices(n_available: int, n_points: int) -> np.ndarray:
    """Deterministic ``(n_points,)`` indices into ``n_available`` items.

    Evenly strided when ``n_points <= n_available`` (row-major pixel order, so the strides spread over
    the whole silhouette); every item then cycled again when more points are asked for than there are.
    """
    if n_points < 0:
        raise ValueError(f"n_points: must be >= 0, got {n_points}")
    if n_available == 0 or n_points == 0:
        return np.zeros(0, dtype=np.int64)
    if n_points <= n_available:
        return np.floor(np.arange(n_points) * (n_available / n_points)).astype(np.int64)
    return np.arange(n_points, dtype=np.int64) % n_available


def _centres_by_level(centres_mm) -> dict[str, np.ndarray]:
    if isinstance(centres_mm, Mapping):
        unknown = [k for k in centres_mm if k not in LEVELS]
        if unknown:
            raise ValueError(f"centres_mm: unknown level {unknown[0]!r} (expected one of {LEVELS})")
        items = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in centres_mm.items()}
    else:
        arr = np.asarray(centres_mm, dtype=np.float64)
        if arr.shape != (len(LEVELS), 3):
            raise ValueError(f"centres_mm: expected (5, 3) rows for L1..L5 or a mapping, got shape {arr.shape}")
        items = dict(zip(LEVELS, arr))
    for k, v in items.items():
        if v.shape != (3,):
            raise ValueError(f"centres_mm[{k!r}]: expected a 3D point, got shape {v.shape}")
    return {k: v for k, v in items.items() if np.all(np.isfinite(v))}


def backproject_levels(labelmap, geometry: CArmGeometry, *, centres_mm=None, n_points: int | None = None
                       ) -> dict[str, np.ndarray]:
    """Each level's labelled pixels on that vertebra's mid-sagittal plane.

    Parameters
    ----------
    labelmap : (rows, cols) integer ndarray
        0 background, 1..5 = L1..L5; shape must be the detector's.
    geometry : CArmGeometry
    centres_mm : mapping level -> (3,) or (5, 3) array_like, optional, keyword-only
        Vertebra centres in Reference, mm (rows in L1..L5 order; NaN rows or missing keys = unknown).
        Each level's plane passes through its centre with the viewing direction there as normal.
        Default: :func:`level_centres` with its default spine plane.
    n_points : int, optional, keyword-only
        Points per level (deterministic, :func:`subsample_indices`); all labelled pixels when None.

    Returns
    -------
    dict level -> (M, 3) float64 ndarray
        Reference, mm, for every level both labelled and with a known centre; finite points only
        (rays that give none are dropped, :func:`backproject_to_plane`).
    """
    lm = _check_labelmap(labelmap, geometry)
    centres = _centres_by_level(level_centres(lm, geometry) if centres_mm is None else centres_mm)
    out = {}
    for level, pix in level_pixels(lm).items():
        centre = centres.get(level)
        if centre is None:
            log.debug("backproject_levels: %s is labelled but has no centre; skipped", level)
            continue
        if n_points is not None:
            pix = pix[subsample_indices(len(pix), n_points)]
        out[level] = backproject_to_plane(geometry, pix, plane_point_mm=centre,
                                          plane_normal=viewing_direction(geometry, centre))
    return out


def level_centroids_px(labelmap) -> np.ndarray:
    """``(5, 2)`` mean pixel ``(u, v)`` of each level L1..L5 (NaN rows for absent levels)."""
    lm = np.asarray(labelmap)
    if lm.ndim == 3 and lm.shape[0] == 1:
        lm = lm[0]
    if lm.ndim != 2:
        raise ValueError(f"labelmap: expected shape (rows, cols), got {lm.shape}")
    v, u = np.nonzero((lm > 0) & (lm <= len(LEVELS)))
    labels = lm[v, u].astype(np.int64)
    n = np.bincount(labels, minlength=len(LEVELS) + 1)[1:].astype(np.float64)
    su = np.bincount(labels, weights=u, minlength=len(LEVELS) + 1)[1:]
    sv = np.bincount(labels, weights=v, minlength=len(LEVELS) + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([su / n, sv / n], axis=1)


def level_centres(labelmap, geometry: CArmGeometry, *, plane_point_mm=None, plane_normal=None) -> np.ndarray:
    """Level centres along the spine from the labelmap, ``(5, 3)`` mm in Reference.

    Each level's pixel centroid is back-projected onto the spine's mid-sagittal plane.

    Parameters
    ----------
    labelmap : (rows, cols) integer ndarray
        Shape must be the detector's.
    geometry : CArmGeometry
    plane_point_mm : (3,) array_like, optional, keyword-only
        A point of the spine's mid-sagittal plane (default: the isocentre).
    plane_normal : (3,) array_like, optional, keyword-only
        Its normal (default: the principal ray direction).

    Returns
    -------
    (5, 3) float64 ndarray
        Rows L1..L5; NaN rows for levels absent from the labelmap or whose centroid ray gives no point
        (:func:`backproject_to_plane`).
    """
    lm = _check_labelmap(labelmap, geometry)
    point = geometry.isocenter_ref_mm if plane_point_mm is None else plane_point_mm
    normal = geometry.xray_to_reference[:3, 2] if plane_normal is None else plane_normal
    centroids = level_centroids_px(lm)
    out = np.full((len(LEVELS), 3), np.nan)
    present = np.flatnonzero(np.all(np.isfinite(centroids), axis=1))
    points, kept = backproject_to_plane(geometry, centroids[present], plane_point_mm=point, plane_normal=normal,
                                        return_kept=True)
    out[present[kept]] = points
    return out
