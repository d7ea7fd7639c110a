"""Watertight mesh of a point cloud by a distance field and marching cubes (numpy/scipy/scikit-image).

The points sample a closed surface (a completed vertebra). On a regular grid around them:

1. ``udf`` = unsigned distance to the nearest point (exact k-d tree distances in a narrow band,
   Euclidean distance transform of the occupied voxels elsewhere);
2. the shell ``udf < offset`` is a thickened copy of the surface; filling its cavities gives a solid
   whose boundary is the surface pushed outwards by ``offset``;
3. the field ``udf - offset`` (negative throughout the filled cavities) is triangulated at 0 by
   marching cubes (Lewiner: topologically consistent, so the surface of a bounded solid is closed);
4. every vertex moves back inwards by ``offset`` along the field gradient, undoing the thickening,
   and is then projected onto the least-squares plane of its nearest points, which removes most
   of the remaining grid and offset error — so a coarse grid (few triangles) stays accurate.

``offset`` must exceed the largest hole between the points (the radius of the largest empty disc on
the surface), or the shell has holes and the solid does not fill. For a cloud sampled at random
that radius is close to the 99th percentile of the distance to the 3rd-nearest neighbour (measured
on 4096-point samples of the real vertebra meshes: 3.1 vs 3.4 mm and 2.8 vs 3.2 mm), so the default
is 1.15 x that, and at least one grid cell. Thin plates survive (steps 2-4 are a morphological
closing); concave details narrower than ``offset`` come out filled.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

MAX_CELLS = 4_000_000
"""Largest distance-field grid, cells (~16 MB of float32)."""

OUTLIER_SPACING_FACTOR = 8.0
"""A point whose 3rd-nearest neighbour is farther than this times the median such distance is dropped."""


def _spacing(points_mm: np.ndarray) -> np.ndarray:
    """(N,) distance of each point to its 3rd-nearest neighbour, mm."""
    d, _ = cKDTree(points_mm).query(points_mm, k=min(4, len(points_mm)))
    return d[:, -1]


def auto_offset_mm(points_mm: np.ndarray, grid_mm: float, spacing: np.ndarray | None = None) -> float:
    """Shell half-thickness that closes the surface of this cloud (see the module notes), mm."""
    d = _spacing(points_mm) if spacing is None else spacing
    return float(max(1.15 * np.percentile(d, 99), grid_mm))


def _grid(points_mm: np.ndarray, grid_mm: float, pad_mm: float,
          max_cells: int) -> tuple[np.ndarray, tuple[int, int, int], float]:
    """Origin, shape and spacing of the grid around the points; the spacing grows past ``grid_mm``
    when the grid would exceed ``max_cells`` (a stray far point must not cost seconds)."""
    lo = points_mm.min(axis=0) - pad_mm
    size = points_mm.max(axis=0) + pad_mm - lo
    cells = float(np.prod(size / grid_mm + 1))
    if cells > max_cells:
        grid_mm *= (cells / max_cells) ** (1 / 3)
        log.warning("surface: cloud spans %s mm; distance-field grid coarsened to %.2f mm",
                    np.round(size, 1).tolist(), grid_mm)
    shape = tuple(int(n) for n in np.ceil(size / grid_mm) + 1)
    return lo, shape, grid_mm


def _keep_large_parts(solid: np.ndarray, min_fraction: float) -> np.ndarray:
    """``solid`` without connected parts smaller than ``min_fraction`` of the largest (isolated
    outlier points make small balls that would otherwise become specks of mesh)."""
    labels, n = ndimage.label(solid)
    if n <= 1:
        return solid
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= min_fraction * sizes.max()
    return keep[labels]


def _offset_field(points_mm, tree, origin, shape, grid_mm, offset_mm) -> np.ndarray:
    """(X, Y, Z) float32 ``distance to the nearest point - offset`` (mm), exact near the zero level.

    The Euclidean distance transform of the occupied voxels measures to voxel centres (error up to
    ~0.9 cell); where the iso-level lies (within two cells of it) the k-d tree gives exact values.
    """
    occ = np.zeros(shape, bool)
    idx = np.round((points_mm - origin) / grid_mm).astype(int)
    occ[tuple(idx.T)] = True
    field = ndimage.distance_transform_edt(~occ, sampling=grid_mm).astype(np.float32)
    field -= offset_mm
    # flat indices (flatnonzero) rather than argwhere rows: several times faster on the whole grid
    near = np.flatnonzero(np.abs(field) < 2.0 * grid_mm)
    ijk = np.stack(np.unravel_index(near, field.shape), axis=1)
    exact, _ = tree.query(origin + ijk * grid_mm, k=1)
    field.reshape(-1)[near] = exact - offset_mm
    return field


def distance_field_mesh(points_mm: np.ndarray, *, grid_mm: float = 1.0, offset_mm: float | None = None,
                        project_k: int = 6, min_part_fraction: float = 0.05,
                        max_cells: int = MAX_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """Closed triangle mesh of the surface the points sample.

    Parameters
    ----------
    points_mm : (N, 3) ndarray
        Points on a closed surface, mm (N >= 4).
    grid_mm : float
        Grid spacing, mm.
    offset_mm : float, optional
        Shell half-thickness, mm (None: :func:`auto_offset_mm`).
    project_k : int
        Neighbours of the local plane fit each vertex is finally projected onto (0: no projection).
    min_part_fraction : float
        Solid parts smaller than this fraction of the largest one are dropped (outliers).
    max_cells : int
        Largest grid; the spacing grows beyond ``grid_mm`` to stay within it.

    Returns
    -------
    vertices_mm : (V, 3) float64 ndarray
    triangles : (T, 3) int64 ndarray
        Counter-clockwise seen from outside. A cloud that encloses nothing (an open sheet) gives the
        closed surface of the thickened sheet, pulled back onto it.
    """
    from skimage.measure import marching_cubes   # heavy import, only where meshing runs

    pts = np.asarray(points_mm, dtype=np.float64)
    spacing = _spacing(pts)
    # Isolated points (far from any neighbour compared with the cloud's spacing) are outliers.
    inlier = spacing <= OUTLIER_SPACING_FACTOR * np.median(spacing)
    if not inlier.all():
        log.debug("surface: dropped %d isolated points", int((~inlier).sum()))
        pts, spacing = pts[inlier], spacing[inlier]
    tree = cKDTree(pts)
    offset = auto_offset_mm(pts, grid_mm, spacing) if offset_mm is None else float(offset_mm)
    origin, shape, grid_mm = _grid(pts, grid_mm, offset + 3 * grid_mm, max_cells)
    field = _offset_field(pts, tree, origin, shape, grid_mm, offset)
    # Cavities enclosed by the shell are inside; their depth does not matter, only the sign.
    solid = _keep_large_parts(ndimage.binary_fill_holes(field < 0), min_part_fraction)
    field[solid & (field >= 0)] = -grid_mm
    field[~solid & (field < 0)] = grid_mm
    if field.min() >= 0:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    # "descent": skimage winds the faces counter-clockwise seen from where the field is larger
    # (outside); the winding is consistent over the whole surface.
    verts, faces, _, _ = marching_cubes(field, level=0.0, spacing=(grid_mm,) * 3, allow_degenerate=False,
                                        gradient_direction="descent")
    normals = _gradient_at(field, verts / grid_mm)
    verts = verts + origin - offset * normals
    if project_k > 0:
        verts = _project_to_local_planes(verts, normals, pts, tree, min(project_k, len(pts)))
    return verts, faces.astype(np.int64)


def _project_to_local_planes(verts: np.ndarray, normals: np.ndarray, pts: np.ndarray, tree: cKDTree,
                             k: int) -> np.ndarray:
    """Move each vertex onto the least-squares plane of its ``k`` nearest points (along that plane's
    normal), removing most of the grid's and the offset's approximation error. With ``k < 3`` the
    plane is the one through the nearest point(s) normal to the vertex normal."""
    _, nn = tree.query(verts, k=k)
    nb = pts[nn].reshape(len(verts), k, 3)
    c = nb.mean(axis=1)
    if k >= 3:
        d = nb - c[:, None, :]
        normals = _smallest_eigenvector(np.einsum("vki,vkj->vij", d, d), normals)
    return verts - np.einsum("vi,vi->v", verts - c, normals)[:, None] * normals


def _smallest_eigenvector(cov: np.ndarray, guess: np.ndarray, iterations: int = 6) -> np.ndarray:
    """(V, 3) eigenvector of the smallest eigenvalue of each symmetric (3, 3) ``cov``, by power
    iteration on ``trace(cov) I - cov`` from ``guess`` (the vertex normal, already close).

    Batched LAPACK ``eigh`` on thousands of 3x3 matrices is several times slower than this
    (per-matrix call overhead); a plane fit needs no more than a few iterations from a good start.
    """
    m = np.trace(cov, axis1=1, axis2=2)[:, None, None] * np.eye(3) - cov
    v = guess
    for _ in range(iterations):
        v = np.einsum("vij,vj->vi", m, v)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v


def _gradient_at(field: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """(V, 3) unit gradient of ``field`` at fractional grid positions ``ijk`` (central differences
    of trilinear samples half a cell away; only at the vertices, not over the whole grid)."""
    g = np.empty_like(ijk, dtype=np.float64)
    for a in range(3):
        step = np.zeros(3)
        step[a] = 0.5
        hi = ndimage.map_coordinates(field, (ijk + step).T, order=1, mode="nearest")
        lo = ndimage.map_coordinates(field, (ijk - step).T, order=1, mode="nearest")
        g[:, a] = hi - lo
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
