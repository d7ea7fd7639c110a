"""C-arm pose (``XrayToReference``) from fiducial point pairs.

Two kinds of pairs are supported:

- **3D-2D** (:func:`calibrate_pnp`): fiducials measured in Reference (mm, e.g. with a tracked pointer)
  and found in the X-ray at detector pixels ``(u column, v row)``. With the intrinsics of
  :class:`~usx_stream.xray.geometry.CArmGeometry` known, this is the perspective-n-point problem. Linear
  starts come from EPnP (Lepetit et al., IJCV 2009; four control points, or three for coplanar
  fiducials), POSIT (DeMenthon & Davis 1995; weak perspective, apt for a C-arm; covers N = 4) and
  the prior pose of the geometry; each is refined by Levenberg-Marquardt on the reprojection
  error (``scipy.optimize.least_squares``), and for nearly coplanar fiducials also the mirrored twin of
  each refined pose (planar PnP has two minima). The lowest error with every fiducial in front of the
  source wins.
- **3D-3D** (:func:`calibrate_3d3d`): fiducials known in the ``Xray`` (source) frame and measured in
  Reference: the rigid least-squares fit of Kabsch / Umeyama (no scale).

Both need at least 4 pairs. The result reports per-point residuals, their RMS (pixels and the
equivalent mm at the isocentre for 3D-2D: ``px * pixel size / magnification``) and warnings when the
fiducials are nearly coplanar; coincident or collinear fiducials raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from .geometry import CArmGeometry

log = logging.getLogger(__name__)

MIN_PAIRS = 4
# Spread of the fiducials, as ratios of the singular values of the centred point cloud (s1 >= s2 >= s3).
COLLINEAR_RATIO = 1e-3   # s2 / s1 below this: the rotation about the line is undetermined -> error
COPLANAR_RATIO = 0.05    # s3 / s1 below this: planar configuration, pose ambiguities likely -> warning
# Reciprocal condition number of the refinement Jacobian below which the pose is called ill-determined.
ILL_CONDITIONED_RCOND = 1e-8


@dataclass(frozen=True, eq=False)
class CalibrationResult:
    """A fitted ``XrayToReference`` and how well it explains the fiducials.

    Attributes
    ----------
    xray_to_reference : (4, 4) float64 ndarray
        Rigid pose of the ``Xray`` (source) frame in Reference, mm.
    method : str
        ``"pnp"`` (3D-2D) or ``"kabsch"`` (3D-3D).
    residuals_px : (N,) float64 ndarray or None
        Per-point reprojection error, pixels (3D-2D only).
    residuals_mm : (N,) float64 ndarray
        Per-point error in mm: the reprojection error scaled to the isocentre (3D-2D) or the 3D
        distance between the mapped and the measured fiducial (3D-3D).
    rms_px : float or None
        RMS of ``residuals_px``.
    rms_mm : float
        RMS of ``residuals_mm``.
    planarity : float
        ``s3 / s1`` of the Reference fiducials (0 = coplanar).
    warnings : tuple of str
    """

    xray_to_reference: np.ndarray
    method: str
    residuals_px: np.ndarray | None
    residuals_mm: np.ndarray
    rms_px: float | None
    rms_mm: float
    planarity: float
    warnings: tuple[str, ...] = ()

    def apply_to(self, geometry: CArmGeometry) -> CArmGeometry:
        """``geometry`` with this pose as its ``xray_to_reference``."""
        return dataclasses.replace(geometry, xray_to_reference=self.xray_to_reference.copy())

    def summary(self, names: list[str] | None = None) -> str:
        """Human-readable residuals, one line per fiducial (``names`` label them; default ``#i``)."""
        n = len(self.residuals_mm)
        names = [f"#{i}" for i in range(n)] if names is None else [str(x) for x in names]
        if len(names) != n:
            raise ValueError(f"names: expected {n} names, got {len(names)}")
        if self.residuals_px is not None:
            lines = [f"RMS reprojection error: {self.rms_px:.3f} px = {self.rms_mm:.3f} mm at the isocentre "
                     f"({n} fiducials, {self.method})"]
            lines += [f"  {name}: {p:.3f} px, {m:.3f} mm"
                      for name, p, m in zip(names, self.residuals_px, self.residuals_mm)]
        else:
            lines = [f"RMS fiducial registration error: {self.rms_mm:.3f} mm ({n} fiducials, {self.method})"]
            lines += [f"  {name}: {m:.3f} mm" for name, m in zip(names, self.residuals_mm)]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def _as_points(value, dim: int, name: str) -> np.ndarray:
    try:
        p = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not numeric ({e})") from e
    if p.ndim != 2 or p.shape[1] != dim:
        raise ValueError(f"{name}: expected shape (N, {dim}), got {p.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(p), axis=1))
    if len(bad):
        raise ValueError(f"{name}: non-finite value in row {int(bad[0])}: {p[bad[0]].tolist()}")
    return p


def _check_pairs(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} points but {name_b} has {len(b)}: counts must match")
    if len(a) < MIN_PAIRS:
        raise ValueError(f"{name_a}: at least {MIN_PAIRS} fiducial pairs are needed, got {len(a)}")


def _spread(points: np.ndarray, name: str) -> tuple[float, float]:
    """``(s2 / s1, s3 / s1)`` of the centred points (s3 = 0 for 2D); raises for coincident or collinear points."""
    diff = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    scale = float(diff.max())
    i, j = np.triu_indices(len(points), k=1)
    close = np.flatnonzero(diff[i, j] <= 1e-9 * scale)
    if len(close):
        k = close[0]
        raise ValueError(f"{name}: points {int(i[k])} and {int(j[k])} coincide ({points[i[k]].tolist()})")
    s = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    s = np.concatenate([s, np.zeros(3 - len(s))])
    line, plane = float(s[1] / s[0]), float(s[2] / s[0])
    if line < COLLINEAR_RATIO:
        raise ValueError(f"{name}: the fiducials are (nearly) collinear (singular value ratio s2/s1 = {line:.2e} "
                         f"< {COLLINEAR_RATIO}); the pose cannot be determined")
    return line, plane


def rigid_fit(source: np.ndarray, target: np.ndarray, *, with_scale: bool = False) -> tuple[np.ndarray, float]:
    """Least-squares ``target ≈ s R source + t`` (Kabsch; Umeyama 1991 when ``with_scale``).

    Parameters
    ----------
    source, target : (N, 3) float ndarray
        Corresponding points (N >= 3, not collinear).
    with_scale : bool, keyword-only
        Also fit the isotropic scale ``s`` (otherwise 1).

    Returns
    -------
    matrix : (4, 4) float64 ndarray
        ``[[s R, t], [0, 1]]`` mapping ``source`` to ``target``.
    scale : float
    """
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    a, b = source - mu_s, target - mu_t
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0  # reflection guard
    r = u @ np.diag([1.0, 1.0, d]) @ vt
    scale = float((sig * [1.0, 1.0, d]).sum() / (a * a).sum()) if with_scale else 1.0
    m = np.eye(4)
    m[:3, :3] = scale * r
    m[:3, 3] = mu_t - scale * r @ mu_s
    return m, scale


def _normalised(geometry: CArmGeometry, pixels: np.ndarray) -> np.ndarray:
    """Pixels -> normalised image coordinates ``(x/z, y/z)`` in the ``Xray`` frame."""
    k = geometry.intrinsics()
    return np.stack([(pixels[:, 0] - k[0, 2]) / k[0, 0], (pixels[:, 1] - k[1, 2]) / k[1, 1]], axis=1)


def _epnp_candidates(points: np.ndarray, xy: np.ndarray, *, planar: bool) -> list[np.ndarray]:
    """ReferenceToXray candidates (4x4) from EPnP with 4 (or 3, ``planar``) control points."""
    mu = points.mean(axis=0)
    _, s, vt = np.linalg.svd(points - mu, full_matrices=False)
    n_axes = 2 if planar else 3
    ctrl = np.vstack([mu, mu + (s[:n_axes, None] / np.sqrt(len(points))) * vt[:n_axes]])   # (m, 3)
    m = len(ctrl)
    homog = np.vstack([ctrl.T, np.ones(m)])                                       # (4, m)
    alphas = np.linalg.lstsq(homog, np.vstack([points.T, np.ones(len(points))]), rcond=None)[0].T  # (N, m)
    rows = np.zeros((2 * len(points), 3 * m))
    rows[0::2, 0::3] = alphas
    rows[0::2, 2::3] = -alphas * xy[:, :1]
    rows[1::2, 1::3] = alphas
    rows[1::2, 2::3] = -alphas * xy[:, 1:]
    _, vecs = np.linalg.eigh(rows.T @ rows)
    pairs = [(a, b) for a in range(m) for b in range(a + 1, m)]
    d_world = np.array([ctrl[a] - ctrl[b] for a, b in pairs])
    kernels = [vecs[:, k].reshape(m, 3) for k in range(3)]
    candidates = []
    for n_kernel in (1, 2) if planar else (1, 2, 3):
        betas = _betas(kernels[:n_kernel], pairs, d_world)
        if betas is None:
            continue
        ctrl_cam = sum(b * k for b, k in zip(betas, kernels))
        cam = alphas @ ctrl_cam
        if np.median(cam[:, 2]) < 0:  # the kernel's sign is arbitrary: fiducials lie in front of the source
            cam = -cam
        fit, scale = rigid_fit(points, cam, with_scale=True)
        if scale <= 0:
            continue
        pose = fit.copy()
        pose[:3, :3] /= scale
        pose[:3, 3] /= scale
        candidates.append(pose)
    return candidates


def _posit_candidate(points: np.ndarray, xy: np.ndarray, *, iterations: int = 30) -> np.ndarray | None:
    """ReferenceToXray from POSIT (DeMenthon & Davis 1995): weak perspective refined to full perspective.

    Needs non-coplanar points; exact for noise-free data, and well suited to a C-arm, whose objects are
    small compared with their distance from the source. Covers N = 4, where EPnP's linearisation is
    underdetermined.
    """
    rel = points - points[0]
    pinv = np.linalg.pinv(rel)                                                      # (3, N)
    eps = np.zeros(len(points))
    for _ in range(iterations):
        i_vec = pinv @ (xy[:, 0] * (1 + eps) - xy[0, 0])
        j_vec = pinv @ (xy[:, 1] * (1 + eps) - xy[0, 1])
        ni, nj = np.linalg.norm(i_vec), np.linalg.norm(j_vec)
        if ni == 0 or nj == 0:
            return None
        u, _, vt = np.linalg.svd(np.vstack([i_vec / ni, j_vec / nj, np.cross(i_vec / ni, j_vec / nj)]))
        r = u @ vt
        if np.linalg.det(r) < 0:
            return None
        depth0 = 1.0 / np.sqrt(ni * nj)
        eps = rel @ r[2] / depth0
    pose = np.eye(4)
    pose[:3, :3] = r
    pose[:3, 3] = np.array([xy[0, 0], xy[0, 1], 1.0]) * depth0 - r @ points[0]
    return pose


def _betas(kernels: list[np.ndarray], pairs: list[tuple[int, int]], d_world: np.ndarray) -> list[float] | None:
    """Kernel weights from the control-point distances (EPnP's linearisation for 1, 2 or 3 kernels)."""
    n = len(kernels)
    diffs = [np.array([k[a] - k[b] for a, b in pairs]) for k in kernels]          # each (P, 3)
    if n == 1:
        dc = np.linalg.norm(diffs[0], axis=1)
        dw = np.linalg.norm(d_world, axis=1)
        return [float(dc @ dw / max(dc @ dc, 1e-300))]
    terms = [(i, j) for i in range(n) for j in range(i, n)]
    lin = np.stack([(1.0 if i == j else 2.0) * np.einsum("pk,pk->p", diffs[i], diffs[j]) for i, j in terms],
                   axis=1)
    if lin.shape[0] < lin.shape[1]:
        return None
    prod = np.linalg.lstsq(lin, (d_world ** 2).sum(axis=1), rcond=None)[0]
    b11 = prod[0]
    if b11 <= 0:
        return None
    b1 = np.sqrt(b11)
    return [float(b1)] + [float(prod[terms.index((0, j))] / b1) for j in range(1, n)]


def _reprojection(x: np.ndarray, points: np.ndarray, pixels: np.ndarray, k: np.ndarray) -> np.ndarray:
    cam = Rotation.from_rotvec(x[:3]).apply(points) + x[3:]
    z = np.where(np.abs(cam[:, 2]) < 1e-9, 1e-9, cam[:, 2])
    uv = np.stack([k[0, 0] * cam[:, 0] / z + k[0, 2], k[1, 1] * cam[:, 1] / z + k[1, 2]], axis=1)
    return (uv - pixels).ravel()


def _refine(pose: np.ndarray, points: np.ndarray, pixels: np.ndarray, k: np.ndarray):
    """Levenberg-Marquardt on the reprojection error from ReferenceToXray ``pose``."""
    x0 = np.concatenate([Rotation.from_matrix(pose[:3, :3]).as_rotvec(), pose[:3, 3]])
    # A good start converges in ~10 evaluations; the cap stops a hopeless start from costing seconds.
    sol = least_squares(_reprojection, x0, args=(points, pixels, k), method="lm", x_scale="jac", max_nfev=200)
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(sol.x[:3]).as_matrix()
    out[:3, 3] = sol.x[3:]
    return out, sol


def _plane_normal(points: np.ndarray) -> np.ndarray:
    return np.linalg.svd(points - points.mean(axis=0))[2][2]


def _flipped(pose: np.ndarray, points: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """The other pose of a (nearly) planar target: its normal mirrored about the line of sight.

    Planar PnP has two minima of the reprojection error (the target tilted towards or away from the
    source by the same angle); rotating about the centroid by twice the normal-to-sight angle jumps
    from one to the other (as in IPPE, Collins & Bartoli 2014).
    """
    centre = pose[:3, :3] @ points.mean(axis=0) + pose[:3, 3]
    sight = centre / np.linalg.norm(centre)
    n_cam = pose[:3, :3] @ normal
    axis = np.cross(n_cam, sight)
    if np.linalg.norm(axis) < 1e-12:
        return pose.copy()
    angle = 2 * np.arctan2(np.linalg.norm(axis), n_cam @ sight)
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix() @ pose[:3, :3]
    out[:3, 3] = centre - out[:3, :3] @ points.mean(axis=0)
    return out


def _best_pose(starts: list[np.ndarray], points: np.ndarray, pixels: np.ndarray, k: np.ndarray, *,
               flip_normal: np.ndarray | None):
    """Refine every start (and, for planar targets, its flipped twin); keep the lowest error in front."""
    best = None
    queue = [(start, flip_normal is not None) for start in starts]
    while queue:
        start, flip = queue.pop()
        if not np.all((points @ start[:3, :3].T + start[:3, 3])[:, 2] > 0):
            continue  # fiducials behind the source: not a pose the refinement should start from
        pose, sol = _refine(start, points, pixels, k)
        if flip:
            queue.append((_flipped(pose, points, flip_normal), False))
        in_front = bool(np.all((points @ pose[:3, :3].T + pose[:3, 3])[:, 2] > 0))
        key = (not in_front, float(sol.cost))
        if best is None or key < best[0]:
            best = (key, pose, sol)
    if best is None or best[0][0]:
        raise ValueError("pixels_uv: no pose puts every fiducial in front of the X-ray source; "
                         "check that the pairs correspond")
    return best[1], best[2]


def calibrate_pnp(points_ref_mm, pixels_uv, geometry: CArmGeometry, *, use_prior: bool = True) -> CalibrationResult:
    """``XrayToReference`` from 3D-2D fiducial pairs with known intrinsics (perspective-n-point).

    Parameters
    ----------
    points_ref_mm : (N, 3) array_like
        Fiducial positions in Reference, mm (N >= 4, not collinear).
    pixels_uv : (N, 2) array_like
        The same fiducials in the X-ray, detector pixels ``(u column, v row)``.
    geometry : CArmGeometry
        Intrinsics (SDD, pixel size, principal point); its ``xray_to_reference`` is the prior pose.
    use_prior : bool, keyword-only
        Also start the refinement from ``geometry.xray_to_reference``.

    Returns
    -------
    CalibrationResult
        ``method == "pnp"``; residuals in pixels and mm at the isocentre.
    """
    points = _as_points(points_ref_mm, 3, "points_ref_mm")
    pixels = _as_points(pixels_uv, 2, "pixels_uv")
    _check_pairs(points, pixels, "points_ref_mm", "pixels_uv")
    _, planarity = _spread(points, "points_ref_mm")
    _spread(pixels, "pixels_uv")
    xy = _normalised(geometry, pixels)
    starts = _epnp_candidates(points, xy, planar=True)
    if planarity > 1e-6:
        starts += _epnp_candidates(points, xy, planar=False)
        posit = _posit_candidate(points, xy)
        starts += [] if posit is None else [posit]
    if use_prior:
        starts.append(np.linalg.inv(geometry.xray_to_reference))
    flip_normal = _plane_normal(points) if planarity < COPLANAR_RATIO else None
    pose, sol = _best_pose(starts, points, pixels, geometry.intrinsics(), flip_normal=flip_normal)
    warnings = _pnp_warnings(planarity, sol.jac)
    res = sol.fun.reshape(-1, 2)
    res_px = np.linalg.norm(res, axis=1)
    res_mm = np.linalg.norm(res * geometry.pixel_spacing_mm, axis=1) / geometry.magnification
    for w in warnings:
        log.warning("calibrate_pnp: %s", w)
    return CalibrationResult(xray_to_reference=np.linalg.inv(pose), method="pnp", residuals_px=res_px,
                             residuals_mm=res_mm, rms_px=_rms(res_px), rms_mm=_rms(res_mm),
                             planarity=planarity, warnings=tuple(warnings))


def _pnp_warnings(planarity: float, jac: np.ndarray) -> list[str]:
    warnings = []
    if planarity < COPLANAR_RATIO:
        warnings.append(f"fiducials are nearly coplanar (s3/s1 = {planarity:.3f} < {COPLANAR_RATIO}); "
                        "the pose may be ambiguous: spread them in depth along the beam")
    s = np.linalg.svd(jac / np.maximum(np.linalg.norm(jac, axis=0), 1e-300), compute_uv=False)
    rcond = float(s[-1] / s[0]) if s[0] > 0 else 0.0
    if rcond < ILL_CONDITIONED_RCOND:
        warnings.append(f"the pose is ill-determined by these fiducials (Jacobian rcond {rcond:.1e})")
    return warnings


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values ** 2)))


def calibrate_3d3d(points_xray_mm, points_ref_mm) -> CalibrationResult:
    """``XrayToReference`` from fiducials known in both the ``Xray`` frame and Reference (Kabsch).

    Parameters
    ----------
    points_xray_mm : (N, 3) array_like
        Fiducial positions in the ``Xray`` (source) frame, mm (N >= 4, not collinear).
    points_ref_mm : (N, 3) array_like
        The same fiducials in Reference, mm.

    Returns
    -------
    CalibrationResult
        ``method == "kabsch"``; ``residuals_mm`` are 3D distances, ``residuals_px`` is None.
    """
    src = _as_points(points_xray_mm, 3, "points_xray_mm")
    dst = _as_points(points_ref_mm, 3, "points_ref_mm")
    _check_pairs(src, dst, "points_xray_mm", "points_ref_mm")
    _spread(src, "points_xray_mm")
    _, planarity = _spread(dst, "points_ref_mm")
    m, _ = rigid_fit(src, dst)
    res = np.linalg.norm(src @ m[:3, :3].T + m[:3, 3] - dst, axis=1)
    return CalibrationResult(xray_to_reference=m, method="kabsch", residuals_px=None, residuals_mm=res,
                             rms_px=None, rms_mm=_rms(res), planarity=planarity)
