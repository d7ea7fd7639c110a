"""Exact mesh queries used by the shape model: point-to-surface distance, winding number, self-intersection.

All inputs are in one frame, mm; meshes are ``(V, 3)`` vertices and ``(T, 3)`` triangles counter-clockwise
seen from outside. Numpy and scipy only, vectorised, sized for meshes of a few thousand triangles.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-24)
    closest = a + np.clip(t, 0.0, 1.0)[:, None] * ab
    return np.linalg.norm(p - closest, axis=1)


def point_triangle_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Distance from each point ``p[i]`` to triangle ``(a[i], b[i], c[i])``; all ``(N, 3)``, mm -> ``(N,)``."""
    n = np.cross(b - a, c - a)
    nn = np.maximum(np.einsum("ij,ij->i", n, n), 1e-24)
    dist_plane = np.einsum("ij,ij->i", p - a, n) / nn
    q = p - dist_plane[:, None] * n  # projection onto the plane
    # barycentric signs: q inside when it is on the inner side of all three edges
    s1 = np.einsum("ij,ij->i", np.cross(b - a, q - a), n)
    s2 = np.einsum("ij,ij->i", np.cross(c - b, q - b), n)
    s3 = np.einsum("ij,ij->i", np.cross(a - c, q - c), n)
    inside = (s1 >= 0) & (s2 >= 0) & (s3 >= 0)
    edge = np.minimum(np.minimum(_segment_distance(p, a, b), _segment_distance(p, b, c)),
                      _segment_distance(p, c, a))
    return np.where(inside, np.abs(dist_plane) * np.sqrt(nn), edge)


def point_to_mesh_distance(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, *,
                           candidates: int = 12) -> np.ndarray:
    """Distance (mm) from each point to the nearest of the ``candidates`` triangles closest by centroid.

    Exact whenever the nearest triangle is among those candidates, which holds for points near a
    mesh of evenly sized triangles (the use here: surfaces a millimetre or two apart).

    Parameters
    ----------
    points : (N, 3) ndarray
    vertices : (V, 3) ndarray
    triangles : (T, 3) int ndarray

    Returns
    -------
    (N,) ndarray
    """
    p = np.asarray(points, dtype=np.float64)
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(triangles, dtype=np.int64)
    if len(p) == 0:
        return np.zeros(0)
    k = min(candidates, len(t))
    _, idx = cKDTree(v[t].mean(1)).query(p, k=k)
    idx = idx.reshape(len(p), k)
    tri = t[idx.ravel()]
    rep = np.repeat(p, k, axis=0)
    d = point_triangle_distance(rep, v[tri[:, 0]], v[tri[:, 1]], v[tri[:, 2]])
    return d.reshape(len(p), k).min(1)


def surface_distance_mm(vertices_a: np.ndarray, triangles_a: np.ndarray, vertices_b: np.ndarray,
                        triangles_b: np.ndarray, *, n: int = 3000, seed: int = 0) -> float:
    """Mean symmetric point-to-surface distance between two meshes in one frame, mm.

    ``n`` points are drawn uniformly by area on each mesh (fixed ``seed``) and their exact distances to
    the other mesh averaged; the two means are averaged.
    """
    from ..frames import Surface
    from ..surface.mesh import sample_surface

    pa = sample_surface(Surface(vertices_a, triangles_a), n, seed=seed)
    pb = sample_surface(Surface(vertices_b, triangles_b), n, seed=seed + 1)
    d1 = point_to_mesh_distance(pa, vertices_b, triangles_b)
    d2 = point_to_mesh_distance(pb, vertices_a, triangles_a)
    return float((d1.mean() + d2.mean()) / 2)


def winding_number(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, *,
                   chunk: int = 256) -> np.ndarray:
    """Generalised winding number of a closed mesh at each point (about 1 inside, 0 outside).

    Sum over triangles of the signed solid angle (Van Oosterom & Strackee, IEEE TBME 1983) over 4 pi.

    Parameters
    ----------
    points : (N, 3) ndarray
    vertices : (V, 3) ndarray
    triangles : (T, 3) int ndarray
        Counter-clockwise seen from outside.

    Returns
    -------
    (N,) ndarray
    """
    p = np.asarray(points, dtype=np.float64)
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(triangles, dtype=np.int64)]  # (T, 3, 3)
    out = np.zeros(len(p))
    for s in range(0, len(p), chunk):
        r = tri[None] - p[s:s + chunk, None, None, :]  # (C, T, 3, 3)
        ln = np.linalg.norm(r, axis=-1)
        a, b, c = r[..., 0, :], r[..., 1, :], r[..., 2, :]
        det = np.einsum("ctk,ctk->ct", a, np.cross(b, c))
        den = (ln[..., 0] * ln[..., 1] * ln[..., 2] + np.einsum("ctk,ctk->ct", a, b) * ln[..., 2]
               + np.einsum("ctk,ctk->ct", b, c) * ln[..., 0] + np.einsum("ctk,ctk->ct", c, a) * ln[..., 1])
        out[s:s + chunk] = 2 * np.arctan2(det, den).sum(1) / (4 * np.pi)
    return out


def self_intersections(vertices: np.ndarray, triangles: np.ndarray) -> int:
    """Number of (edge, triangle) crossings between parts of one mesh that share no vertex.

    Two triangles in general position intersect exactly when an edge of one crosses the other, so every
    intersecting pair of non-adjacent triangles is found (coplanar touching is not counted). Candidate
    triangles of each edge are those whose centroid lies within reach (KD-tree); each candidate is
    tested exactly (Moeller-Trumbore, segment parameter in [0, 1]). Zero for a valid closed surface.

    Parameters
    ----------
    vertices : (V, 3) ndarray
    triangles : (T, 3) int ndarray

    Returns
    -------
    int
    """
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(triangles, dtype=np.int64)
    edges = np.unique(np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]), axis=1), axis=0)
    centroids = v[t].mean(1)
    tri_radius = np.linalg.norm(v[t] - centroids[:, None], axis=2).max()
    mid = v[edges].mean(1)
    half = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1).max() / 2
    pairs = cKDTree(mid).query_ball_tree(cKDTree(centroids), r=half + tri_radius)
    e_idx = np.repeat(np.arange(len(edges)), [len(x) for x in pairs])
    t_idx = np.fromiter((j for x in pairs for j in x), dtype=np.int64, count=len(e_idx))
    e, tr = edges[e_idx], t[t_idx]
    shares = (tr == e[:, :1]).any(1) | (tr == e[:, 1:]).any(1)
    e, tr = e[~shares], tr[~shares]
    if len(e) == 0:
        return 0
    o, d = v[e[:, 0]], v[e[:, 1]] - v[e[:, 0]]
    a, b, c = v[tr[:, 0]], v[tr[:, 1]], v[tr[:, 2]]
    e1, e2 = b - a, c - a
    h = np.cross(d, e2)
    det = np.einsum("ij,ij->i", e1, h)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = o - a
    u = inv * np.einsum("ij,ij->i", s, h)
    q = np.cross(s, e1)
    w = inv * np.einsum("ij,ij->i", d, q)
    lam = inv * np.einsum("ij,ij->i", e2, q)
    hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (lam >= 0) & (lam <= 1)
    return int(hit.sum())
