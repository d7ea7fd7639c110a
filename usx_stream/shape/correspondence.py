"""Dense correspondence between real vertebrae of one level: one template mesh deformed onto each.

Steps per level:

1. the template (one real surface of the level) is decimated to a few thousand triangles and brought
   into the canonical vertebra frame (x = patient left, y = posterior, z = cranial, mm; see
   :mod:`usx_stream.datasets.mesh_alignment`, whose rigid alignment is reused);
2. each instance is aligned rigidly onto the template (a patient-frame mesh from its LPS axes, a mesh
   of unknown axes by the 24-orientation search);
3. the template's vertices are registered non-rigidly onto points sampled on the aligned instance with
   Coherent Point Drift (Myronenko & Song, IEEE TPAMI 2010, 32(12):2262, the deformable variant: a
   Gaussian-kernel displacement field with a smoothness weight), so every instance gets the template's
   vertex count and triangles.

The residual of each registration is the mean symmetric surface distance (mm) between the deformed
template and the instance surface.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh
from scipy.spatial import cKDTree

from ..frames import Surface
from ..transforms import apply
from .geometry import surface_distance_mm

log = logging.getLogger(__name__)


@dataclass
class Correspondence:
    """An instance expressed with the template's vertices.

    Attributes
    ----------
    vertices_mm : (V, 3) ndarray
        Deformed template vertices on the instance, canonical frame of the template, mm.
    instance_to_canonical : (4, 4) ndarray
        Rigid transform from the instance's source frame (mm) to the canonical frame.
    residual_mm : float
        Mean symmetric surface distance between the deformed template and the instance, mm.
    """

    vertices_mm: np.ndarray
    instance_to_canonical: np.ndarray
    residual_mm: float


def decimate(mesh: Surface, n_triangles: int) -> Surface:
    """Quadric-decimated copy of ``mesh`` with about ``n_triangles`` triangles (same frame, mm)."""
    import open3d as o3d

    if n_triangles < 100:
        raise ValueError(f"n_triangles: expected >= 100, got {n_triangles}")
    om = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(mesh.vertices_mm, np.float64)),
                                   o3d.utility.Vector3iVector(np.asarray(mesh.triangles, np.int32)))
    om = om.simplify_quadric_decimation(int(n_triangles))
    om.remove_unreferenced_vertices()
    om.remove_degenerate_triangles()
    return Surface(np.asarray(om.vertices, dtype=np.float64), np.asarray(om.triangles, dtype=np.int64),
                   frame=mesh.frame, name=mesh.name)


def canonical_template(mesh: Surface, level: str, *, frame: str | None, n_triangles: int = 2400,
                       seed: int = 0) -> Surface:
    """The level template: ``mesh`` decimated and moved into the canonical vertebra frame (mm).

    Parameters
    ----------
    mesh : Surface
        A real vertebra of ``level``, mm, in its source frame.
    level : str
    frame : {"LPS"} or None, keyword-only
        Patient-axis convention of ``mesh`` if known.
    n_triangles : int, keyword-only
        Triangle count of the template (vertices are about half of it).
    """
    from ..datasets.mesh_alignment import align_vertebra

    small = decimate(mesh, n_triangles)
    vert = align_vertebra(mesh, level, frame=frame, seed=seed)
    to_canonical = np.linalg.inv(vert.vertebra_to_patient)
    return Surface(apply(to_canonical, small.vertices_mm), small.triangles, frame=f"{level}_canonical",
                   name=f"template_{level}")


def kernel_basis(points: np.ndarray, *, beta: float, rank: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Leading eigenpairs of the CPD Gaussian kernel of ``points`` (mm), computed once per template.

    Coordinates are normalised as in :func:`cpd_deformable` (centroid, RMS radius) before the kernel
    ``exp(-|yi - yj|^2 / (2 beta^2))`` is formed.

    Returns
    -------
    vectors : (M, rank) ndarray
    values : (rank,) ndarray
    """
    y = np.asarray(points, dtype=np.float64)
    y = (y - y.mean(0)) / np.sqrt(((y - y.mean(0)) ** 2).sum(1).mean())
    g = np.exp(-_sqdist(y, y) / (2 * beta ** 2))
    m = len(y)
    k = min(rank, m)
    values, vectors = eigh(g, subset_by_index=(m - k, m - 1))
    return vectors[:, ::-1], values[::-1]


def cpd_deformable(moving: np.ndarray, target: np.ndarray, *, beta: float = 1.0, lam: float = 1.0,
                   w: float = 0.05, iterations: int = 60, tol: float = 1e-5,
                   basis: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Coherent Point Drift, deformable: move ``moving`` smoothly onto ``target``.

    Coordinates are normalised by the moving points' centroid and RMS radius before fitting, so ``beta``
    (kernel width) and ``lam`` (smoothness weight) are in units of that radius (about 25 mm for a
    lumbar vertebra).

    Parameters
    ----------
    moving : (M, 3) ndarray
        Points to deform (the template's vertices), mm.
    target : (N, 3) ndarray
        Points sampled on the instance, same frame, mm.
    beta, lam : float, keyword-only
        Gaussian kernel width of the displacement field and its regularisation weight.
    w : float, keyword-only
        Weight of the uniform outlier component (0 <= w < 1).
    iterations : int, keyword-only
        Maximum EM iterations.
    tol : float, keyword-only
        Stop when the relative change of the variance falls below it.
    basis : (vectors (M, R), values (R,)) or None, keyword-only
        Low-rank kernel from :func:`kernel_basis` of ``moving`` with the same ``beta`` (its
        normalisation must match: pass the basis of the template's own vertices). None computes it
        (rank 80). The low-rank solve (Woodbury identity) costs O(M R^2) per iteration instead of O(M^3).

    Returns
    -------
    (M, 3) ndarray
        Deformed points, mm, same order as ``moving``.
    """
    y = np.asarray(moving, dtype=np.float64)
    x = np.asarray(target, dtype=np.float64)
    if y.ndim != 2 or x.ndim != 2 or y.shape[1] != 3 or x.shape[1] != 3:
        raise ValueError(f"cpd_deformable: expected (M, 3) and (N, 3) points, got {y.shape} and {x.shape}")
    if not 0 <= w < 1:
        raise ValueError(f"w: expected 0 <= w < 1, got {w}")
    centre = y.mean(0)
    scale = float(np.sqrt(((y - centre) ** 2).sum(1).mean()))
    x = (x - centre) / scale
    y = (y - centre) / scale
    m, n, d = len(y), len(x), 3
    q, lv = basis if basis is not None else kernel_basis(moving, beta=beta)
    t = y.copy()
    sigma2 = float(_sqdist(t, x).sum() / (d * m * n))
    xx = (x ** 2).sum(1)
    for _ in range(iterations):
        p = np.exp(-_sqdist(t, x) / (2 * sigma2))
        c = (2 * np.pi * sigma2) ** (d / 2) * w / (1 - w) * m / n
        p /= p.sum(0, keepdims=True) + c
        p1, pt1, px = p.sum(1), p.sum(0), p @ x
        # (diag(P1) G + s I) W = PX - diag(P1) Y with G = Q diag(lv) Q^T, solved by Woodbury.
        s = lam * sigma2
        f = px - p1[:, None] * y
        dq = p1[:, None] * q
        inner = np.diag(s / lv) + q.T @ dq
        wm = (f - dq @ np.linalg.solve(inner, q.T @ f)) / s
        t = y + q @ (lv[:, None] * (q.T @ wm))
        np_ = p1.sum()
        new = float((pt1 @ xx - 2 * np.sum(px * t) + p1 @ (t ** 2).sum(1)) / (np_ * d))
        new = max(new, 1e-8)
        done = abs(sigma2 - new) / sigma2 < tol
        sigma2 = new
        if done:
            break
    return t * scale + centre


def refine(vertices: np.ndarray, triangles: np.ndarray, target: np.ndarray, target_normals: np.ndarray, *,
           iterations: int = 8, smoothing: int = 6, max_step_mm: float = 4.0, k: int = 8) -> np.ndarray:
    """Non-rigid ICP polish after CPD: pull the mesh onto ``target`` with a smoothed displacement field.

    CPD leaves the template slightly inside convex parts and squeezes thin plates (each vertex sits at a
    Gaussian-weighted mean of target points, which on a lamina mixes both sides). Each iteration here
    moves every vertex by the average of (a) the offset to its nearest target point facing the same way
    (normals within 60 degrees, among the ``k`` nearest) and (b) the offsets of the target points whose
    nearest same-facing vertex it is; pairs longer than ``max_step_mm`` are ignored. The offsets are then
    averaged ``smoothing`` times over the mesh neighbours (a membrane smoothness term).

    Parameters
    ----------
    vertices : (V, 3) ndarray
        Mesh vertices after CPD, mm.
    triangles : (T, 3) int ndarray
    target : (N, 3) ndarray
        Dense points on the instance surface, same frame, mm.
    target_normals : (N, 3) ndarray
        Outward unit normals at ``target``.

    Returns
    -------
    (V, 3) ndarray
        Refined vertices, mm.
    """
    from scipy.sparse import coo_matrix, diags

    from ..surface.mesh import vertex_normals

    v = np.asarray(vertices, dtype=np.float64).copy()
    t = np.asarray(triangles, dtype=np.int64)
    i = np.concatenate([t[:, 0], t[:, 1], t[:, 2], t[:, 1], t[:, 2], t[:, 0]])
    j = np.concatenate([t[:, 1], t[:, 2], t[:, 0], t[:, 0], t[:, 1], t[:, 2]])
    adj = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(v), len(v))).tocsr()
    adj.data[:] = 1.0
    mean_of_neighbours = diags(1.0 / np.maximum(np.asarray(adj.sum(1)).ravel(), 1)) @ adj
    tree = cKDTree(target)
    for _ in range(iterations):
        normals = vertex_normals(v, t)
        d_fwd, idx = _facing_nearest(tree, v, normals, target_normals, k)
        ok = d_fwd <= max_step_mm
        push = np.where(ok[:, None], target[np.where(ok, idx, 0)] - v, 0.0)
        count = ok.astype(np.float64)
        d_back, near = _facing_nearest(cKDTree(v), target, target_normals, normals, k)
        ok = d_back <= max_step_mm
        np.add.at(push, near[ok], target[ok] - v[near[ok]])
        np.add.at(count, near[ok], 1.0)
        step = push / np.maximum(count, 1.0)[:, None]
        for _ in range(smoothing):
            step = 0.5 * step + 0.5 * (mean_of_neighbours @ step)
        v += step
    return v


def _facing_nearest(tree: cKDTree, query: np.ndarray, query_normals: np.ndarray, tree_normals: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest of the ``k`` nearest tree points whose normal is within 60 degrees (inf when none)."""
    d, idx = tree.query(query, k=k)
    facing = np.einsum("nkj,nj->nk", tree_normals[idx], query_normals) > 0.5
    d = np.where(facing, d, np.inf)
    best = d.argmin(1)
    rows = np.arange(len(query))
    return d[rows, best], idx[rows, best]


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T, 0.0)


def correspond(template: Surface, mesh: Surface, *, frame: str | None, n_points: int = 2000, seed: int = 0,
               beta: float = 1.0, lam: float = 1.0, iterations: int = 60,
               basis: tuple[np.ndarray, np.ndarray] | None = None) -> Correspondence:
    """Align ``mesh`` rigidly to the template, then deform the template's vertices onto it.

    Parameters
    ----------
    template : Surface
        Level template in the canonical frame (:func:`canonical_template`), mm.
    mesh : Surface
        A real vertebra of the same level, mm, in its source frame.
    frame : {"LPS"} or None, keyword-only
        Patient-axis convention of ``mesh`` if known (otherwise 24 orientations are searched).
    n_points : int, keyword-only
        Points sampled on ``mesh`` as the CPD target.
    seed : int, keyword-only
        Sampling seed: the result is deterministic for a seed.
    beta, lam, iterations, basis : keyword-only
        CPD parameters (:func:`cpd_deformable`); ``basis`` is the template's :func:`kernel_basis`.

    Raises
    ------
    usx_stream.datasets.mesh_alignment.AlignmentError
        When the rigid alignment fails its acceptance test (the message names the mesh).
    """
    from ..datasets.mesh_alignment import align_to_template
    from ..surface.mesh import sample_surface

    rng = np.random.default_rng(seed)
    tpl_points = sample_surface(template, 4000, seed=rng)
    fit = align_to_template(mesh, tpl_points, frame=frame, rng=rng, max_mean_distance_mm=6.0,
                            min_inlier_fraction=0.6)
    aligned = Surface(apply(fit.mesh_to_canonical, mesh.vertices_mm), mesh.triangles, name=mesh.name)
    target = sample_surface(aligned, n_points, seed=rng)
    moved = cpd_deformable(template.vertices_mm, target, beta=beta, lam=lam,
                           iterations=iterations, basis=basis)
    dense, dense_normals = _sample_with_normals(aligned, 4 * n_points, rng)
    moved = refine(moved, template.triangles, dense, dense_normals)
    residual = surface_distance_mm(moved, template.triangles, aligned.vertices_mm, aligned.triangles, seed=seed)
    log.info("%s: rigid %.2f mm, after deformation %.2f mm", mesh.name, fit.mean_distance_mm, residual)
    return Correspondence(moved, fit.mesh_to_canonical, residual)


def _sample_with_normals(mesh: Surface, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-uniform points on ``mesh`` and the unit normals of their triangles, ``(n, 3)`` each."""
    v = np.asarray(mesh.vertices_mm, dtype=np.float64)
    tri = v[np.asarray(mesh.triangles, dtype=np.int64)]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    pick = rng.choice(len(tri), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    pts = ((1 - s)[:, None] * tri[pick, 0] + (s * (1 - r2))[:, None] * tri[pick, 1]
           + (s * r2)[:, None] * tri[pick, 2])
    return pts, cross[pick] / np.maximum(area[pick], 1e-24)[:, None]


def mirrored(mesh: Surface, to_canonical: np.ndarray) -> Surface:
    """The left-right mirror image of ``mesh`` in the canonical frame (x -> -x), triangles re-wound.

    A mirrored vertebra is a plausible vertebra (the lumbar spine is bilaterally symmetric up to the
    asymmetry that differs between people), so mirroring doubles the shapes a level is learnt from.
    """
    v = apply(to_canonical, mesh.vertices_mm) * np.array([-1.0, 1.0, 1.0])
    return Surface(v, np.asarray(mesh.triangles)[:, ::-1].copy(), frame="LPS", name=f"{mesh.name}_mirror")
