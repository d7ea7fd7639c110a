"""Bring a vertebra mesh given in any pose into the canonical vertebra frame.

Canonical frame (DESIGN §3): x = left-right (+x = patient left, as in LPS), y = posterior (towards the
probe), z = cranial; millimetres. Meshes come from scanners (LPS), Slicer (RAS) or anywhere, so:

- with a known patient-frame convention (``frame="LPS"`` or ``"RAS"``) the axes of that convention start a
  rigid ICP (centroid on the template's centroid), which removes the vertebra's own tilt in the patient;
- otherwise (``frame=None``) the mesh is registered rigidly to a template of its level: principal axes
  give 24 candidate orientations (every signed axis permutation that is a rotation), each refined by a
  short trimmed ICP; the best is refined further. A mesh whose final fit is poor is reported as not
  alignable (:class:`AlignmentError` names the file) rather than silently dropped or kept.

Also here: area-uniform surface sampling, used for ICP and for the ground-truth clouds.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..frames import LEVELS, Surface
from ..transforms import apply

log = logging.getLogger(__name__)

FRAME_TO_CANONICAL = {
    # canonical = LPS axes: +x left, +y posterior, +z cranial.
    "LPS": np.diag([1.0, 1.0, 1.0]),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
}


@dataclass
class CanonicalVertebra:
    """A vertebra in a common patient frame, with its frame.

    Attributes
    ----------
    level : str
    mesh, body_mesh : Surface
        Whole vertebra and vertebral body, patient frame, mm.
    vertebra_to_patient : (4, 4) ndarray
        Canonical vertebra frame (x = left-right, y = posterior, z = cranial) to patient, mm.
    """

    level: str
    mesh: Surface
    body_mesh: Surface
    vertebra_to_patient: np.ndarray


class AlignmentError(ValueError):
    """A mesh could not be aligned to the canonical frame; the message names it and the fit."""


@dataclass
class Alignment:
    """Result of aligning one mesh.

    Attributes
    ----------
    mesh_to_canonical : (4, 4) ndarray
        Rigid transform from the mesh's coordinates (mm, after scaling) to the canonical frame.
    mean_distance_mm : float
        Mean symmetric nearest-point distance to the template after alignment.
    inlier_fraction : float
        Fraction of mesh samples within ``inlier_mm`` of the template.
    """

    mesh_to_canonical: np.ndarray
    mean_distance_mm: float
    inlier_fraction: float


def sample_surface(surface: Surface, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3)`` points drawn uniformly by area on ``surface`` (its frame, mm)."""
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    v = np.asarray(surface.vertices_mm, dtype=np.float64)
    t = np.asarray(surface.triangles, dtype=np.int64)
    if len(t) == 0:
        raise ValueError(f"surface {surface.name!r}: has no triangles")
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    tri = rng.choice(len(t), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    return (1 - s)[:, None] * a[tri] + (s * (1 - r2))[:, None] * b[tri] + (s * r2)[:, None] * c[tri]


def _kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(4, 4) rigid transform minimising ``|R src + t - dst|²`` over corresponding rows."""
    cs, cd = src.mean(0), dst.mean(0)
    h = (src - cs).T @ (dst - cd)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = cd - r @ cs
    return m


def _apply(m: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ m[:3, :3].T + m[:3, 3]


def icp(src: np.ndarray, tree: cKDTree, init: np.ndarray, *, iterations: int = 30, trim: float = 0.9
        ) -> tuple[np.ndarray, float]:
    """Trimmed point-to-point ICP of ``src`` (N, 3) onto the points of ``tree``.

    Each iteration pairs every source point with its nearest target point and keeps the ``trim``
    closest pairs (robust to parts the template lacks).

    Returns
    -------
    transform : (4, 4) ndarray
        Source to target.
    mean_distance : float
        Mean nearest distance of the kept pairs at the end.
    """
    m = init.copy()
    target = tree.data
    dist = np.array([np.inf])
    for _ in range(iterations):
        moved = _apply(m, src)
        dist, idx = tree.query(moved)
        keep = dist <= np.quantile(dist, trim)
        step = _kabsch(moved[keep], target[idx[keep]])
        m = step @ m
        if np.abs(step[:3, 3]).max() < 1e-3 and np.abs(step[:3, :3] - np.eye(3)).max() < 1e-6:
            break
    dist, _ = tree.query(_apply(m, src))
    return m, float(np.mean(dist[dist <= np.quantile(dist, trim)]))


def _candidate_rotations() -> list[np.ndarray]:
    """The 24 signed permutation matrices with determinant +1."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            r = np.zeros((3, 3))
            r[np.arange(3), perm] = signs
            if np.linalg.det(r) > 0:
                out.append(r)
    return out


def _principal_axes(p: np.ndarray) -> np.ndarray:
    """(3, 3) principal axes of ``p`` as columns, largest variance first."""
    w, v = np.linalg.eigh(np.cov((p - p.mean(0)).T))
    return v[:, np.argsort(w)[::-1]]


def _fit_quality(moved: np.ndarray, template: np.ndarray, tree: cKDTree, inlier_mm: float) -> tuple[float, float]:
    d1, _ = tree.query(moved)
    d2, _ = cKDTree(moved).query(template)
    return float((d1.mean() + d2.mean()) / 2), float(np.mean(d1 < inlier_mm))


def align_to_template(mesh: Surface, template_points: np.ndarray, *, frame: str | None = None,
                      rng: np.random.Generator | int | None = 0, n_samples: int = 3000,
                      max_mean_distance_mm: float = 4.0, inlier_mm: float = 5.0,
                      min_inlier_fraction: float = 0.7) -> Alignment:
    """Rigidly align ``mesh`` to a level template given as points in the canonical frame.

    Parameters
    ----------
    mesh : Surface
        Vertebra mesh, mm, any pose (``mesh.name`` is used in error messages).
    template_points : (M, 3) ndarray
        Points on the template vertebra of the same level, canonical frame, mm.
    frame : {"LPS", "RAS"} or None, keyword-only
        Known patient-frame convention of the mesh (start of the ICP); None: search 24 orientations.
    rng : Generator or int, keyword-only
        Surface sampling source (alignment is deterministic for a seed).
    n_samples : int, keyword-only
        Points sampled on the mesh for the fit.
    max_mean_distance_mm, inlier_mm, min_inlier_fraction : float, keyword-only
        Acceptance: mean symmetric distance at most ``max_mean_distance_mm`` and at least
        ``min_inlier_fraction`` of the mesh within ``inlier_mm`` of the template.

    Raises
    ------
    AlignmentError
        When the best fit fails the acceptance test.
    """
    if frame is not None and frame not in FRAME_TO_CANONICAL:
        raise ValueError(f"frame: expected one of {sorted(FRAME_TO_CANONICAL)} or None, got {frame!r}")
    rng = np.random.default_rng(rng)
    src = sample_surface(mesh, n_samples, rng)
    template = np.asarray(template_points, dtype=np.float64)
    tree = cKDTree(template)
    if frame is not None:
        init = np.eye(4)
        init[:3, :3] = FRAME_TO_CANONICAL[frame]
        init[:3, 3] = template.mean(0) - FRAME_TO_CANONICAL[frame] @ src.mean(0)
        # The convention fixes the axes up to the vertebra's own tilt in the patient (lordosis, scoliosis,
        # table position), which the rigid ICP from that start then removes.
        best, _ = icp(src, tree, init, iterations=60)
    else:
        best = _register(src, template, tree)
    mean_d, inliers = _fit_quality(_apply(best, src), template, tree, inlier_mm)
    if mean_d > max_mean_distance_mm or inliers < min_inlier_fraction:
        extent = np.ptp(src, axis=0).max()
        hint = " (extent %.3g: is --scale missing?)" % extent if extent < 20 or extent > 500 else ""
        raise AlignmentError(
            f"mesh {mesh.name!r}: cannot be aligned to the canonical frame: mean distance {mean_d:.2f} mm "
            f"(limit {max_mean_distance_mm}), inliers {inliers:.0%} (limit {min_inlier_fraction:.0%}){hint}")
    return Alignment(best, mean_d, inliers)


def _register(src: np.ndarray, template: np.ndarray, tree: cKDTree) -> np.ndarray:
    """Best rigid transform over the 24 principal-axis orientations, then a long ICP."""
    e_src, e_tpl = _principal_axes(src), _principal_axes(template)
    coarse = src[:: max(1, len(src) // 600)]
    scored = []
    for r in _candidate_rotations():
        init = np.eye(4)
        init[:3, :3] = e_tpl @ r @ e_src.T
        if np.linalg.det(init[:3, :3]) < 0:
            # eigh may return a left-handed basis: flip one template axis to stay a rotation.
            init[:3, :3] = e_tpl @ np.diag([1, 1, -1]) @ r @ e_src.T
        init[:3, 3] = template.mean(0) - init[:3, :3] @ src.mean(0)
        m, d = icp(coarse, tree, init, iterations=15)
        scored.append((d, m))
    scored.sort(key=lambda x: x[0])
    refined = [icp(src, tree, m, iterations=60) for _, m in scored[:3]]
    return min(refined, key=lambda x: x[1])[0]


# ------------------------------------------------------------------------------------ user meshes

_LEVEL_PATTERNS = (
    re.compile(r"(?<![A-Za-z0-9])L([1-5])(?![0-9])", re.IGNORECASE),  # L1..L5 as a token: "L3.ply", "mean_L2"
    re.compile(r"segment_(2[0-4])(?![0-9])"),  # VerSe label numbers 20..24 = L1..L5
)


def level_from_filename(path: str | Path) -> str:
    """Level ``"L1"``..``"L5"`` carried by a mesh file name (``L3_x.ply``, ``mean_L2.ply``, VerSe ``segment_20``)."""
    stem = Path(path).name
    for k, pattern in enumerate(_LEVEL_PATTERNS):
        m = pattern.search(stem)
        if m:
            return f"L{int(m.group(1)) - (19 if k == 1 else 0)}"
    raise ValueError(f"mesh file {stem!r}: no level in the name (expected L1..L5 or VerSe segment_20..24)")


@functools.lru_cache(maxsize=None)
def _mean_spine(spacing_mm: float):
    from ..sim.anatomy import make_spine

    return make_spine(0, variation=0.0, spacing_mm=spacing_mm)


def align_vertebra(mesh: Surface, level: str, *, frame: str | None = None, spacing_mm: float = 1.5,
                   seed: int = 0) -> CanonicalVertebra:
    """Align a vertebra mesh to the canonical frame of its level and split off its vertebral body.

    The mean procedural vertebra of the level is the registration template; the body is the part of the
    mesh anterior to the template body's posterior wall. The mesh stays in its own (patient) frame;
    ``vertebra_to_patient`` is the inverse of the alignment.

    Raises
    ------
    AlignmentError
        When the mesh cannot be aligned (the message names it).
    """
    ref = _mean_spine(spacing_mm).vertebrae[level]
    to_local = np.linalg.inv(ref.frame)
    tpl = Surface(apply(to_local, ref.mesh.vertices_mm), ref.mesh.triangles)
    fit = align_to_template(mesh, sample_surface(tpl, 4000, np.random.default_rng(0)), frame=frame, rng=seed)
    canonical = apply(fit.mesh_to_canonical, mesh.vertices_mm)
    wall_y = apply(to_local, ref.body_mesh.vertices_mm)[:, 1].max()
    anterior = canonical[mesh.triangles].mean(axis=1)[:, 1] < wall_y
    body = Surface(mesh.vertices_mm, mesh.triangles[anterior], name=f"{mesh.name}_body")
    log.info("%s: aligned as %s (mean distance %.2f mm, %.0f%% inliers)", mesh.name, level,
             fit.mean_distance_mm, 100 * fit.inlier_fraction)
    return CanonicalVertebra(level, mesh, body, np.linalg.inv(fit.mesh_to_canonical))


def canonical_user_vertebra(path: str | Path, *, scale: float = 1.0, frame: str | None = None,
                            spacing_mm: float = 1.5, seed: int = 0) -> tuple[CanonicalVertebra, list[Surface]]:
    """Read a user mesh and bring it (and its body) into the canonical frame of its level (mm).

    The mean vertebrae of the neighbouring levels, placed where a mean spine has them, are returned as
    occluders for the ultrasound sweep (a lone vertebra would otherwise be seen from every side).

    Raises
    ------
    AlignmentError
        When the mesh cannot be aligned (the message names the file).
    """
    from ..io.meshes import read_mesh

    path = Path(path)
    level = level_from_filename(path)
    raw = read_mesh(path, scale=scale)
    mesh = Surface(np.asarray(raw.vertices_mm, dtype=np.float64), np.asarray(raw.triangles), name=path.name)
    vert = align_vertebra(mesh, level, frame=frame, spacing_mm=spacing_mm, seed=seed)
    to_canonical = np.linalg.inv(vert.vertebra_to_patient)
    aligned = Surface(apply(to_canonical, mesh.vertices_mm), mesh.triangles, name=path.name)
    body = Surface(aligned.vertices_mm, vert.body_mesh.triangles, name=vert.body_mesh.name)
    spine = _mean_spine(spacing_mm)
    to_local = np.linalg.inv(spine.vertebrae[level].frame)
    occluders = [Surface(apply(to_local, v.mesh.vertices_mm), v.mesh.triangles)
                 for lv, v in spine.vertebrae.items() if abs(LEVELS.index(lv) - LEVELS.index(level)) == 1]
    return CanonicalVertebra(level, aligned, body, np.eye(4)), occluders
