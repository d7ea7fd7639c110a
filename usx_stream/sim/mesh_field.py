"""Signed-distance fields of real vertebra meshes, and the vertebral-body rule for real vertebrae.

The simulators (B-mode ray casting, X-ray projection) read bone from a :class:`~usx_stream.sim.parts.SampledField`.
A procedural vertebra is born as a field; a real one (a closed CT surface) gets one here:

- distance: the mesh is sampled evenly by area (about one point per ``sample_mm``² of surface) and each
  grid point takes the distance to its nearest sample (a :class:`scipy.spatial.cKDTree`), within
  ``band_mm`` of the surface; farther away the distance comes from a Euclidean distance transform of the
  inside mask (exact enough where only the sign matters);
- sign: the grid points nearest to the samples, dilated by one voxel (26-neighbourhood), form a shell
  without gaps; a grid point off the shell is outside when its connected region (6-connectivity) of such
  points touches the grid border, inside otherwise; a point on the shell takes the side of the nearest
  sample's outward normal. A hole in the mesh narrower than about two voxels is sealed by the shell.

Vertebral body rule (:func:`body_mask`), per level, in the level's anatomical axes (``posterior`` is
perpendicular to the spine's cranio-caudal axis there, in the sagittal plane):

1. the body anchor is the deepest inside point of the whole vertebra (maximum of the inside distance
   transform): the body is by far the thickest part of a lumbar vertebra (inscribed radius about 12 mm,
   against about 5 mm for pedicles and processes);
2. the posterior wall of the body is found on a mid-sagittal column through the anchor (6 x 6 mm
   across): walking posteriorly from the anchor, the first 1 mm slab less than half of which is bone
   (the spinal canal begins there);
3. the body's lateral and cranio-caudal bounds are those of the bone in the slab from 12 mm anterior
   of the anchor to the anchor (plus one voxel laterally, two cranio-caudally): only the body is there,
   while the transverse processes (at L5 they reach anterior of the posterior wall) lie farther out and
   the pedicles and superior articular processes rise above the endplate behind it;
4. the body is the bone anterior of the plane ``wall_margin_mm`` (1 mm) in front of that wall, normal to
   ``posterior``, and within those bounds, reduced to its largest 6-connected component (the pedicle
   roots and any other fragment the plane cuts loose are dropped).

If no wall is found within 4..40 mm posterior of the anchor (not a vertebra seen in these axes), the
plane is put 12 mm posterior of the anchor and the fallback is logged. Checked on every real spine of
``shared/data/vertebrae`` (body depth 25-45 mm): ``tests/sim/test_real_spine.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .parts import SampledField

log = logging.getLogger(__name__)

_WALL_SEARCH_MM = (4.0, 40.0)
_WALL_FALLBACK_MM = 12.0
_COLUMN_HALF_MM = 3.0
_FRONT_BAND_MM = 12.0


def surface_samples(vertices: np.ndarray, triangles: np.ndarray, *, sample_mm: float = 0.4,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points spread evenly by area on a triangle mesh, with outward unit normals.

    Parameters
    ----------
    vertices : (V, 3) float ndarray, mm
    triangles : (T, 3) int ndarray
        Closed mesh; outward when its signed volume is positive (flipped otherwise).
    sample_mm : float, keyword-only
        About one point per ``sample_mm``² of surface.
    seed : int, keyword-only

    Returns
    -------
    points : (N, 3) float64 ndarray, mm (the mesh's frame)
    normals : (N, 3) float64 ndarray, unit, outward
    """
    v = np.asarray(vertices, dtype=np.float64)
    t = v[np.asarray(triangles, dtype=np.int64)]
    cross = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    area2 = np.linalg.norm(cross, axis=1)
    if np.einsum("ij,ij->", t[:, 0], cross) < 0:
        cross = -cross
    unit = cross / np.maximum(area2, 1e-12)[:, None]
    n = max(int(0.5 * area2.sum() / sample_mm ** 2), len(t))
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(t), size=n, p=area2 / area2.sum())
    s, r = np.sqrt(rng.random(n)), rng.random(n)
    pts = (1 - s)[:, None] * t[idx, 0] + (s * (1 - r))[:, None] * t[idx, 1] + (s * r)[:, None] * t[idx, 2]
    return np.concatenate([pts, v]), np.concatenate([unit[idx], _vertex_normals(v, triangles, cross)])


def _vertex_normals(v: np.ndarray, triangles: np.ndarray, cross: np.ndarray) -> np.ndarray:
    acc = np.zeros_like(v)
    for k in range(3):
        np.add.at(acc, triangles[:, k], cross)
    return acc / np.maximum(np.linalg.norm(acc, axis=1), 1e-12)[:, None]


def mesh_signed_distance(vertices: np.ndarray, triangles: np.ndarray, *, spacing_mm: float = 1.0,
                         margin_mm: float = 6.0, band_mm: float = 2.0, sample_mm: float = 0.5,
                         to_grid: np.ndarray | None = None, workers: int = 2) -> SampledField:
    """Signed distance (negative inside) of a closed mesh on a regular grid (see the module docstring).

    Parameters
    ----------
    vertices : (V, 3) float ndarray
        Mesh vertices, mm, in the mesh frame.
    triangles : (T, 3) int ndarray
    spacing_mm, margin_mm : float, keyword-only
        Grid spacing, and margin around the mesh's bounding box, mm.
    band_mm : float, keyword-only
        Nearest-sample distances are exact to about ``sample_mm / 2`` within this band (at least three
        voxels); farther the distance transform of the inside mask is used.
    sample_mm : float, keyword-only
        Surface sampling density (see :func:`surface_samples`).
    to_grid : (4, 4) ndarray, keyword-only
        Rigid transform from the mesh frame to the grid's frame (default identity): the returned field
        lives in the grid's frame.
    workers : int, keyword-only
        Threads of the nearest-neighbour query.

    Returns
    -------
    SampledField
        ``values`` (X, Y, Z) float32, mm, in the grid's frame.
    """
    from scipy.spatial import cKDTree

    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm: must be positive, got {spacing_mm}")
    m = np.eye(4) if to_grid is None else np.asarray(to_grid, dtype=np.float64)
    pts, normals = surface_samples(vertices, triangles, sample_mm=sample_mm)
    pts = pts @ m[:3, :3].T + m[:3, 3]
    normals = normals @ m[:3, :3].T
    lo = pts.min(axis=0) - margin_mm
    shape = tuple(int(np.ceil(s)) + 1 for s in (pts.max(axis=0) + margin_mm - lo) / spacing_mm)
    axes = [lo[k] + spacing_mm * np.arange(shape[k]) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    band = max(band_mm, 3.0 * spacing_mm)  # the whole shell (below) lies within 2.6 voxels of a sample
    dist, idx = cKDTree(pts).query(grid, distance_upper_bound=band, workers=workers)
    shell = np.zeros(shape, dtype=bool)
    k = np.clip(np.rint((pts - lo) / spacing_mm).astype(np.int64), 0, np.array(shape) - 1)
    shell[k[:, 0], k[:, 1], k[:, 2]] = True
    shell = ndimage.binary_dilation(shell, structure=np.ones((3, 3, 3), dtype=bool))
    labels, _ = ndimage.label(~shell)
    border = np.unique(np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(),
                                       labels[:, :, [0, -1]].ravel()]))
    inside = (~np.isin(labels, border[border > 0]) & (labels > 0)).ravel()
    hit = np.flatnonzero(shell.ravel())
    hit = hit[np.isfinite(dist[hit])]
    inside[hit] = np.einsum("ij,ij->i", grid[hit] - pts[idx[hit]], normals[idx[hit]]) < 0
    inside = inside.reshape(shape)
    far = ~np.isfinite(dist).reshape(shape)
    dist = np.where(np.isfinite(dist), dist, 0.0).reshape(shape)
    if far.any():
        edt = np.where(inside, ndimage.distance_transform_edt(inside, sampling=spacing_mm),
                       ndimage.distance_transform_edt(~inside, sampling=spacing_mm))
        dist[far] = np.maximum(edt[far], band)
    values = np.where(inside, -dist, dist).astype(np.float32)
    return SampledField(values=values, origin_mm=lo, spacing_mm=float(spacing_mm))


@dataclass(frozen=True)
class BodyRegion:
    """The vertebral body found by :func:`body_mask`.

    Attributes
    ----------
    mask : (X, Y, Z) bool ndarray
        Body voxels of the field's grid.
    field : SampledField
        The body alone: ``max(whole, distance past the cut plane)``, and at least half a voxel outside on
        bone dropped with the smaller components; its zero level set meshes closed.
    anchor_mm : (3,) float ndarray
        Deepest inside point of the vertebra, field frame, mm.
    wall_mm : float
        Posterior wall of the body, mm posterior of the anchor along ``posterior``.
    found_wall : bool
        False when the fallback plane was used.
    """

    mask: np.ndarray
    field: SampledField
    anchor_mm: np.ndarray
    wall_mm: float
    found_wall: bool


def deepest_point(fld: SampledField) -> np.ndarray:
    """``(3,)`` grid point (field frame, mm) where the field is most negative: the body anchor."""
    k = np.unravel_index(int(np.argmin(fld.values)), fld.values.shape)
    return fld.origin_mm + np.array(k) * fld.spacing_mm


def body_mask(fld: SampledField, *, posterior: np.ndarray, cranial: np.ndarray,
              wall_margin_mm: float = 1.0) -> BodyRegion:
    """The vertebral body of a whole-vertebra field (rule in the module docstring).

    Parameters
    ----------
    fld : SampledField
        Whole vertebra, negative inside.
    posterior, cranial : (3,) array_like
        The level's posterior and cranial unit directions in the field's frame (orthogonal).
    wall_margin_mm : float, keyword-only
        The cut lies this far anterior of the posterior wall found, mm.
    """
    post = np.asarray(posterior, dtype=np.float64)
    post = post / np.linalg.norm(post)
    up = np.asarray(cranial, dtype=np.float64)
    up = up - (up @ post) * post
    up = up / np.linalg.norm(up)
    side = np.cross(post, up)
    h = fld.spacing_mm
    anchor = deepest_point(fld)
    shape = fld.values.shape
    axes = [fld.origin_mm[k] + h * np.arange(shape[k]) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1) - anchor
    t = grid @ post
    bone = fld.values < 0
    column = (np.abs(grid @ side) <= _COLUMN_HALF_MM) & (np.abs(grid @ up) <= _COLUMN_HALF_MM)
    bins = np.floor(t[column]).astype(int)
    wall, found = _wall(bins, bone[column])
    if not found:
        log.warning("body rule: no posterior wall %g..%g mm behind the deepest point; cut %g mm behind it",
                    *_WALL_SEARCH_MM, _WALL_FALLBACK_MM)
    lateral, height = grid @ side, grid @ up
    front = bone & (t >= -_FRONT_BAND_MM) & (t <= 0)
    lat_lo, lat_hi = lateral[front].min() - h, lateral[front].max() + h
    z_lo, z_hi = height[front].min() - 2 * h, height[front].max() + 2 * h
    values = np.maximum.reduce([fld.values, t - (wall - wall_margin_mm), lat_lo - lateral, lateral - lat_hi,
                                z_lo - height, height - z_hi])
    body = values < 0
    labels, n = ndimage.label(body)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        body = labels == int(np.argmax(sizes))
        values = np.where(~body & (values < 0), 0.5 * h, values)
    values[[0, -1]] = np.maximum(values[[0, -1]], 0.5 * h)
    values[:, [0, -1]] = np.maximum(values[:, [0, -1]], 0.5 * h)
    values[:, :, [0, -1]] = np.maximum(values[:, :, [0, -1]], 0.5 * h)
    out = SampledField(values=values.astype(np.float32), origin_mm=fld.origin_mm.copy(), spacing_mm=h)
    return BodyRegion(mask=body, field=out, anchor_mm=anchor, wall_mm=float(wall), found_wall=found)


def _wall(bins: np.ndarray, bone: np.ndarray) -> tuple[float, bool]:
    """First 1 mm slab ``lo..hi`` mm posterior of the anchor less than half bone, mm; (fallback, False)."""
    lo, hi = _WALL_SEARCH_MM
    for b in range(int(lo), int(hi) + 1):
        sel = bins == b
        if sel.any() and bone[sel].mean() < 0.5:
            return float(b), True
    return _WALL_FALLBACK_MM, False
