"""Registration of the truth frame (a CT's) to Reference: none, paired fiducials, or automatic from ultrasound.

``auto`` never looks at the completed surfaces being scored (that would hide their error). It takes what
ultrasound saw, in Reference: the bone points of the recording's frames recompounded with the node's own
ingest stage (:func:`usx_stream.scoring.recompound.bone_points_from_frames`). Those points are registered
onto the truth's *visible posterior surface*:

1. The truth meshes are sampled evenly (:data:`TRUTH_POINTS_PER_LEVEL` per level) with outward normals.
2. Candidate rotations: the truth's principal axes mapped onto the bone points' frame (posterior = the
   opposite of the frames' mean beam direction; cranio-caudal = the bone points' principal axis across
   it) with every permutation and sign that keeps a rotation (24 candidates), so a CT in any orientation
   is found. Under each candidate the posterior direction in the truth frame is known; the visible
   surface is the truth points whose normal faces it and that lie within :data:`VISIBLE_DEPTH_MM` of the
   most posterior point of their :data:`VISIBLE_CELL_MM` column (what a probe on the back can reach).
   The translation starts by matching the centroids of the bone points and of the visible surface.
3. Each candidate is refined by trimmed point-to-point ICP (scipy cKDTree) on a subset of the bone
   points (the :data:`TRIM` closest pairs per step); the best by inlier fraction (pairs within
   :data:`INLIER_MM`) go on to trimmed point-to-plane ICP on all bone points, the visible surface
   recomputed as the pose settles.

Refusals (:class:`~usx_stream.errors.InputError`, one line): fewer than :data:`MIN_BONE_POINTS` bone
points; a final inlier fraction below :data:`MIN_INLIER_FRACTION`; an RMS over inliers above
:data:`MAX_RMS_MM`. A truth of another spine, or one far from what was swept, fails the inlier test.

Where the thresholds come from (simulator, development figures, 90-frame sessions, 2026-12): the right
spine gave 91-95 % inliers at an RMS of 1.02-1.04 mm (seeds 5 and 11, the CT turned by up to 170 degrees
and moved by up to 43 cm; pose recovered to 0.05-0.10 degrees and 0.24-0.26 mm mean displacement);
other spines (procedural seed 12, VerSe 581 and 631, TotalSegmentator s0004) gave 52-64 % at
1.6-1.9 mm. Real ultrasound is noisier: check them on real recordings (``--min-inliers``,
``--max-rms-mm`` of ``usx-stream score``) before trusting a refusal or an acceptance.
"""

from __future__ import annotations

import csv
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..errors import InputError
from ..frames import Surface
from .truth import sample_with_normals

log = logging.getLogger(__name__)

__all__ = ["Registration", "identity_registration", "register_fiducials", "register_auto", "MIN_BONE_POINTS",
           "INLIER_MM", "MIN_INLIER_FRACTION", "MAX_RMS_MM", "MAX_FIDUCIAL_RMS_MM"]

MIN_BONE_POINTS = 200
"""Fewest bone points (after the launch file's ``bone.point_voxel_mm`` downsampling) auto registration accepts."""
INLIER_MM = 3.0
"""A bone point within this distance of the truth's visible surface is an inlier, mm."""
MIN_INLIER_FRACTION = 0.75
"""Fewest inliers, as a fraction of the bone points, of an accepted auto registration."""
MAX_RMS_MM = 1.5
"""Largest RMS distance of the inliers to the truth surface of an accepted auto registration, mm."""
MAX_FIDUCIAL_RMS_MM = 4.0
"""Largest fiducial registration error (RMS) accepted: pointer-touched fiducials fit to 1-2 mm; more means
pairs in the wrong order or a fiducial mistaken for another, and scores that would measure that, mm."""
TRIM = 0.8
"""Fraction of the closest pairs each ICP step fits."""
TRUTH_POINTS_PER_LEVEL = 6000
VISIBLE_CELL_MM = 2.0
VISIBLE_DEPTH_MM = 5.0
_COARSE_POINTS, _FINE_POINTS, _FINALISTS = 500, 4000, 3


@dataclass
class Registration:
    """A truth-to-Reference rigid transform and how well it is supported.

    Attributes
    ----------
    method : str
        ``"none"``, ``"fiducials"`` or ``"auto"``.
    truth_to_reference : (4, 4) float64 ndarray
        Maps truth-frame points (mm) to Reference (mm).
    rms_mm : float or None
        Fiducials: RMS of the paired residuals; auto: RMS distance of the inlier bone points to the
        truth surface. None for ``none``.
    inlier_fraction : float or None
        Auto: fraction of bone points within :data:`INLIER_MM` of the truth surface.
    details : dict
        JSON-ready extras (point counts, thresholds, per-fiducial residuals, ...).
    """

    method: str
    truth_to_reference: np.ndarray
    rms_mm: float | None = None
    inlier_fraction: float | None = None
    details: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"method": self.method, "transform": np.round(self.truth_to_reference, 9).tolist(),
                "rms_mm": self.rms_mm, "inliers": self.inlier_fraction, **self.details}


def identity_registration() -> Registration:
    """``--register none``: the truth is already in Reference."""
    return Registration("none", np.eye(4))


# ------------------------------------------------------------------------------------------ fiducials
def _rigid(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(4, 4) least-squares rigid ``dst ≈ R src + t`` (Kabsch, reflection guarded)."""
    from ..xray.pose_fit import rigid_fit

    return rigid_fit(src, dst)[0]


def _require_spread(points: np.ndarray, what: str, path: Path) -> None:
    centred = points - points.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    if s[0] < 1e-6 or s[1] / s[0] < 1e-3:
        raise InputError(f"{path}: the {what} fiducials are (nearly) collinear (singular values "
                         f"{np.round(s, 3).tolist()}); a rigid pose needs 3 points off one line")


def register_fiducials(path: str | Path, *, max_rms_mm: float = MAX_FIDUCIAL_RMS_MM) -> Registration:
    """Rigid truth-to-Reference fit of paired fiducials (Kabsch).

    Parameters
    ----------
    path : str or Path
        CSV with columns ``name,ct_x,ct_y,ct_z,ref_x,ref_y,ref_z`` (truth frame and Reference, mm); lines
        starting with ``#`` are comments.

    Raises
    ------
    InputError
        Missing columns, a non-numeric value (the fiducial named), fewer than 3 pairs, collinear points, or
        an RMS residual above ``max_rms_mm`` (the worst fiducial named).
    """
    path = Path(path)
    cols = ("ct_x", "ct_y", "ct_z", "ref_x", "ref_y", "ref_z")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(line for line in f if line.strip() and not line.lstrip().startswith("#")))
    if rows and (missing := [c for c in ("name", *cols) if c not in rows[0]]):
        raise InputError(f"{path}: missing column(s) {missing}; expected name,{','.join(cols)}")
    names, values = [], []
    for n, row in enumerate(rows, 1):
        try:
            vals = [float(row[c]) for c in cols]
        except (TypeError, ValueError):
            raise InputError(f"{path}: fiducial {n} ({row.get('name')!r}): non-numeric coordinate in "
                             f"{[row.get(c) for c in cols]}") from None
        if not np.all(np.isfinite(vals)):
            raise InputError(f"{path}: fiducial {n} ({row.get('name')!r}): non-finite coordinate {vals}")
        names.append(row["name"])
        values.append(vals)
    if len(values) < 3:
        raise InputError(f"{path}: {len(values)} fiducial pair(s); a rigid registration needs at least 3")
    arr = np.asarray(values)
    ct, ref = arr[:, :3], arr[:, 3:]
    _require_spread(ct, "CT", path)
    _require_spread(ref, "Reference", path)
    m = _rigid(ct, ref)
    residual = np.linalg.norm(ct @ m[:3, :3].T + m[:3, 3] - ref, axis=1)
    residuals = {k: round(float(r), 4) for k, r in zip(names, residual)}
    rms, worst = float(np.sqrt(np.mean(residual ** 2))), int(np.argmax(residual))
    if rms > max_rms_mm:
        raise InputError(f"{path}: fiducial registration RMS {rms:.2f} mm (at most {max_rms_mm:g}), worst "
                         f"{names[worst]!r} {residual[worst]:.1f} mm: pairs in the wrong order, or a fiducial "
                         f"mistaken for another? (--max-fiducial-rms-mm)")
    return Registration("fiducials", m, rms, None,
                        {"pairs": len(values), "residuals_mm": residuals})


# ------------------------------------------------------------------------------------------- auto
def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:3, :3].T + m[:3, 3]


def _visible(points: np.ndarray, normals: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """Mask of the truth points a probe on the back can reach: facing ``posterior`` and within
    :data:`VISIBLE_DEPTH_MM` of their column's most posterior point (columns of :data:`VISIBLE_CELL_MM`)."""
    p = posterior / np.linalg.norm(posterior)
    facing = normals @ p > 0.0
    u = np.cross(p, [1.0, 0.0, 0.0] if abs(p[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(p, u)
    cu, cv = (np.floor(points @ axis / VISIBLE_CELL_MM).astype(np.int64) for axis in (u, v))
    cu, cv = cu - cu.min(), cv - cv.min()
    _, inverse = np.unique(cu * (cv.max() + 1) + cv, return_inverse=True)
    height = points @ p
    top = np.full(inverse.max() + 1, -np.inf)
    np.maximum.at(top, inverse[facing], height[facing])
    return facing & (height >= top[inverse] - VISIBLE_DEPTH_MM)


def _spine_frame(bone: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """(3, 3) columns: left-right, posterior, cranio-caudal axes of the bone points (right-handed)."""
    p = posterior / np.linalg.norm(posterior)
    centred = bone - bone.mean(axis=0)
    across = centred - np.outer(centred @ p, p)
    _, _, vt = np.linalg.svd(across, full_matrices=False)
    long = vt[0] - (vt[0] @ p) * p
    long /= np.linalg.norm(long)
    return np.stack([np.cross(p, long), p, long], axis=1)


def _rotation_candidates(truth_pts: np.ndarray, frame_ref: np.ndarray) -> list[np.ndarray]:
    """Truth-to-Reference rotations taking the truth's principal axes onto ``frame_ref``'s, every
    permutation and sign that is a proper rotation."""
    centred = truth_pts - truth_pts.mean(axis=0)
    _, vecs = np.linalg.eigh(centred.T @ centred)
    axes = vecs[:, ::-1]  # descending variance: long axis first
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            q = np.zeros((3, 3))
            q[[2, 0, 1], list(perm)] = signs  # long axis -> cranio-caudal, then left-right, posterior
            r = frame_ref @ q @ axes.T
            if np.linalg.det(r) > 0:
                out.append(r)
    return out


def _icp(bone: np.ndarray, truth_pts: np.ndarray, truth_nrm: np.ndarray, posterior_ref: np.ndarray,
         ref_to_truth: np.ndarray, *, iterations: int, plane: bool, revisit: int) -> np.ndarray:
    """Trimmed ICP moving ``bone`` (Reference) onto the visible truth surface; returns ReferenceToTruth."""
    g = ref_to_truth.copy()
    tree = None
    for it in range(iterations):
        if tree is None or (revisit and it % revisit == 0):
            vis = _visible(truth_pts, truth_nrm, g[:3, :3] @ posterior_ref)
            if vis.sum() < 10:
                return g
            tree, vis_pts, vis_nrm = cKDTree(truth_pts[vis]), truth_pts[vis], truth_nrm[vis]
        src = _apply(g, bone)
        dist, idx = tree.query(src)
        keep = dist <= np.quantile(dist, TRIM)
        if keep.sum() < 6:
            return g
        if plane:
            step = _point_to_plane(src[keep], vis_pts[idx[keep]], vis_nrm[idx[keep]])
        else:
            step = _rigid(src[keep], vis_pts[idx[keep]])
        g = step @ g
        if np.linalg.norm(step[:3, 3]) < 1e-4 and np.abs(step[:3, :3] - np.eye(3)).max() < 1e-6:
            break
    return g


def _point_to_plane(src: np.ndarray, dst: np.ndarray, nrm: np.ndarray) -> np.ndarray:
    """(4, 4) small rigid step minimising the point-to-plane distances (linearised, then made a rotation)."""
    a = np.hstack([np.cross(src, nrm), nrm])
    b = -np.einsum("ij,ij->i", src - dst, nrm)
    try:
        x = np.linalg.solve(a.T @ a, a.T @ b)
    except np.linalg.LinAlgError:  # a plane or a line of points: no unique step
        x = np.linalg.lstsq(a, b, rcond=None)[0]
    w, t = x[:3], x[3:]
    angle = np.linalg.norm(w)
    r = np.eye(3)
    if angle > 0:
        k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]) / angle
        r = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, t
    return m


def _fit_quality(bone: np.ndarray, truth_pts: np.ndarray, truth_nrm: np.ndarray, posterior_ref: np.ndarray,
                 ref_to_truth: np.ndarray) -> tuple[float, float]:
    """``(inlier fraction, inlier RMS mm)`` of the bone points against the visible truth surface."""
    vis = _visible(truth_pts, truth_nrm, ref_to_truth[:3, :3] @ posterior_ref)
    if not vis.any():
        return 0.0, float("inf")
    dist, _ = cKDTree(truth_pts[vis]).query(_apply(ref_to_truth, bone))
    inl = dist <= INLIER_MM
    rms = float(np.sqrt(np.mean(dist[inl] ** 2))) if inl.any() else float("inf")
    return float(inl.mean()), rms


def register_auto(bone_ref: np.ndarray, truth: dict[str, Surface], posterior_ref: np.ndarray, *,
                  min_inlier_fraction: float = MIN_INLIER_FRACTION, max_rms_mm: float = MAX_RMS_MM,
                  seed: int = 0) -> Registration:
    """Register the truth onto ultrasound bone points (see the module docstring).

    Parameters
    ----------
    bone_ref : (P, 3) array_like
        Bone points recompounded from the recording, Reference, mm.
    truth : dict[str, Surface]
        Truth meshes by level, truth frame, mm.
    posterior_ref : (3,) array_like
        Direction towards the probe in Reference (the opposite of the frames' mean beam direction).
    min_inlier_fraction, max_rms_mm : float, keyword-only
        Refusal thresholds (defaults :data:`MIN_INLIER_FRACTION`, :data:`MAX_RMS_MM`).
    seed : int, keyword-only
        Seed of the truth sampling and the bone-point subsets.

    Raises
    ------
    InputError
        Too few bone points, or the best pose fails the inlier-fraction or RMS threshold.
    """
    bone = np.asarray(bone_ref, dtype=np.float64).reshape(-1, 3)
    post = np.asarray(posterior_ref, dtype=np.float64).reshape(3)
    post = post / np.linalg.norm(post)
    if len(bone) < MIN_BONE_POINTS:
        raise InputError(f"--register auto: the recording gives {len(bone)} bone points (< {MIN_BONE_POINTS}); "
                         "too few to register the truth: use --register fiducials:PAIRS.csv")
    rng = np.random.default_rng(seed)
    samples = [sample_with_normals(s, TRUTH_POINTS_PER_LEVEL, seed=seed + k) for k, s in enumerate(truth.values())]
    truth_pts = np.vstack([s[0] for s in samples])
    truth_nrm = np.vstack([s[1] for s in samples])
    coarse = bone[rng.choice(len(bone), min(len(bone), _COARSE_POINTS), replace=False)]
    fine = bone[rng.choice(len(bone), min(len(bone), _FINE_POINTS), replace=False)]
    frame_ref = _spine_frame(bone, post)
    tried = []
    for r in _rotation_candidates(truth_pts, frame_ref):
        g = np.eye(4)
        g[:3, :3] = r.T  # ReferenceToTruth rotation
        vis = _visible(truth_pts, truth_nrm, r.T @ post)
        g[:3, 3] = truth_pts[vis].mean(axis=0) - r.T @ bone.mean(axis=0)
        g = _icp(coarse, truth_pts, truth_nrm, post, g, iterations=15, plane=False, revisit=0)
        tried.append((_fit_quality(coarse, truth_pts, truth_nrm, post, g), g))
    tried.sort(key=lambda t: (-t[0][0], t[0][1]))
    finals = []
    for _, g in tried[:_FINALISTS]:
        g = _icp(fine, truth_pts, truth_nrm, post, g, iterations=40, plane=True, revisit=10)
        finals.append((_fit_quality(bone, truth_pts, truth_nrm, post, g), g))
    finals.sort(key=lambda t: (-t[0][0], t[0][1]))
    (fraction, rms), g = finals[0]
    details = {"bone_points": int(len(bone)), "truth_points": int(len(truth_pts)), "inlier_mm": INLIER_MM,
               "min_inlier_fraction": min_inlier_fraction, "max_rms_mm": max_rms_mm,
               "candidates": len(tried), "coarse_best_inliers": round(tried[0][0][0], 4)}
    log.info("auto registration: inlier fraction %.3f, RMS %.2f mm over %d bone points", fraction, rms, len(bone))
    if fraction < min_inlier_fraction or rms > max_rms_mm:
        raise InputError(f"--register auto: cannot register the truth to the recording's bone points: "
                         f"{fraction:.0%} within {INLIER_MM:g} mm (need {min_inlier_fraction:.0%}), inlier RMS "
                         f"{rms:.2f} mm (at most {max_rms_mm:g}); is it this patient's spine? else use "
                         "--register fiducials:PAIRS.csv")
    return Registration("auto", np.linalg.inv(g), rms, fraction, details)
