"""Mesh a completed vertebra cloud by deforming a level template mesh onto it.

The template (a closed vertebra mesh of the same level, already within the triangle budget) keeps
its connectivity, so the result is watertight whenever the template is. Steps:

1. initial pose: centroids and principal axes matched, the four proper sign choices of the axes
   tried (a few ICP iterations each), the best kept — or the identity when the cloud and the
   template share a canonical frame (``assume_aligned``);
2. similarity ICP (rotation, translation, isotropic scale; Umeyama) on symmetric nearest-neighbour
   pairs;
3. non-rigid refinement: each vertex moves towards the cloud (its nearest point, and the points that
   have it as their nearest vertex), the displacement field smoothed over the mesh graph; the
   smoothing relaxes over the iterations.

Accuracy depends on how much the patient's vertebra differs from the template; the distance-field
method has no such prior (``benchmarks/bench_meshing.py`` compares them).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from ..frames import Surface

ICP_POINTS = 1024
"""Cloud points and template vertices used by the rigid (similarity) stage."""


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(4, 4) similarity transform minimising ``|s R src + t - dst|^2``."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2, 2] = -1
    r = u @ d @ vt
    scale = np.trace(np.diag(sig) @ d) / max((a ** 2).sum() / len(src), 1e-12)
    m = np.eye(4)
    m[:3, :3] = scale * r
    m[:3, 3] = mu_d - scale * r @ mu_s
    return m


def _icp(verts: np.ndarray, pts: np.ndarray, tree: cKDTree, iterations: int) -> tuple[np.ndarray, float]:
    """Similarity ICP on symmetric pairs; returns the moved vertices and the final mean distance."""
    v = verts
    err = np.inf
    for _ in range(iterations):
        d_fwd, i_fwd = tree.query(v)
        d_bwd, i_bwd = cKDTree(v).query(pts)
        src = np.vstack([v, v[i_bwd]])
        dst = np.vstack([pts[i_fwd], pts])
        m = _umeyama(src, dst)
        v = v @ m[:3, :3].T + m[:3, 3]
        err = 0.5 * (d_fwd.mean() + d_bwd.mean())
    return v, err


def _principal_frame(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    c = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - c, full_matrices=False)
    if np.linalg.det(vt) < 0:
        vt[2] = -vt[2]
    return c, vt, float(np.sqrt((s ** 2).sum() / len(x)))


def _initial_poses(verts: np.ndarray, pts: np.ndarray):
    """Template vertices placed on the cloud by centroid, principal axes (4 sign choices) and size."""
    ct, rt, st = _principal_frame(verts)
    cp, rp, sp = _principal_frame(pts)
    for flip in ([1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]):
        r = rp.T @ np.diag(flip) @ rt
        yield (verts - ct) @ r.T * (sp / st) + cp


def _smoothing_operator(triangles: np.ndarray, n: int) -> sparse.csr_matrix:
    """Row-normalised vertex adjacency (plus the vertex itself) of the mesh graph."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    rows = np.concatenate([e[:, 0], e[:, 1], np.arange(n)])
    cols = np.concatenate([e[:, 1], e[:, 0], np.arange(n)])
    a = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    a.data[:] = 1.0                                   # duplicate edges count once
    return sparse.diags(1.0 / np.asarray(a.sum(axis=1)).ravel()) @ a


def _deform(verts, triangles, pts, tree, iterations: int, smooth_steps: int) -> np.ndarray:
    smooth = _smoothing_operator(triangles, len(verts))
    v = verts.copy()
    for it in range(iterations):
        _, i_fwd = tree.query(v)
        disp = pts[i_fwd] - v
        _, i_bwd = cKDTree(v).query(pts)
        pull = np.zeros_like(v)
        np.add.at(pull, i_bwd, pts - v[i_bwd])
        count = np.bincount(i_bwd, minlength=len(v))[:, None]
        has = count[:, 0] > 0
        disp[has] = 0.5 * (disp[has] + pull[has] / count[has])
        # Fewer smoothing passes as the fit converges: first the shape, then the details.
        for _ in range(max(1, smooth_steps * (iterations - it) // iterations)):
            disp = smooth @ disp
        v = v + disp
    return v


def fit_template(points_mm, template: Surface, *, assume_aligned: bool = False, icp_iterations: int = 20,
                 iterations: int = 10, smooth_steps: int = 8) -> Surface:
    """Deform ``template`` onto the cloud.

    Parameters
    ----------
    points_mm : (N, 3) array-like
        Completed vertebra points, mm.
    template : Surface
        Closed template mesh of the same level (any pose, any size), within the triangle budget.
    assume_aligned : bool
        The template is already in the cloud's frame (skip the principal-axes search).
    icp_iterations, iterations, smooth_steps : int
        Similarity-ICP iterations, non-rigid iterations, and smoothing passes of the first
        non-rigid iteration.

    Returns
    -------
    Surface
        The template's triangles with fitted vertices (mm, the cloud's frame).
    """
    pts = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    if len(pts) < 4:
        raise ValueError(f"fit_template: need at least 4 points, got {len(pts)}")
    if icp_iterations < 1 or iterations < 0 or smooth_steps < 1:
        raise ValueError(f"fit_template: iterations must be positive, got icp {icp_iterations}, "
                         f"non-rigid {iterations}, smoothing {smooth_steps}")
    tree = cKDTree(pts)
    verts = np.asarray(template.vertices_mm, dtype=np.float64)
    # The rigid stage needs no detail: pose it on subsets (4x fewer nearest-neighbour queries).
    rng = np.random.default_rng(0)
    sub_p = pts[rng.permutation(len(pts))[:ICP_POINTS]]
    sub_v = rng.permutation(len(verts))[:ICP_POINTS]
    sub_tree = cKDTree(sub_p)
    starts = [verts] if assume_aligned else list(_initial_poses(verts, pts))
    if len(starts) > 1:
        errors = [_icp(v0[sub_v], sub_p, sub_tree, 4)[1] for v0 in starts]
        starts = [starts[int(np.argmin(errors))]]
    posed, _ = _icp(starts[0][sub_v], sub_p, sub_tree, icp_iterations)
    m = _umeyama(starts[0][sub_v], posed)           # the pose found on the subset, for all vertices
    best = starts[0] @ m[:3, :3].T + m[:3, 3]
    tris = np.asarray(template.triangles, dtype=np.int64)
    fitted = _deform(best, tris, pts, tree, iterations, smooth_steps)
    return Surface(fitted, tris.copy(), frame=template.frame, name=template.name)
