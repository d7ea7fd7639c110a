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
fiducials are nearly coplanar; coincident or collinear fiducials raise ``ValueError``. This module
checks the pairs and reports; the solvers are in :mod:`usx_stream.xray.pose_fit`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from .geometry import CArmGeometry
from .pose_fit import best_pose, epnp_candidates, plane_normal, posit_candidate, rigid_fit

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


def _normalised(geometry: CArmGeometry, pixels: np.ndarray) -> np.ndarray:
    """Pixels -> normalised image coordinates ``(x/z, y/z)`` in the ``Xray`` frame."""
    k = geometry.intrinsics()
    return np.stack([(pixels[:, 0] - k[0, 2]) / k[0, 0], (pixels[:, 1] - k[1, 2]) / k[1, 1]], axis=1)


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
    starts = epnp_candidates(points, xy, planar=True)
    if planarity > 1e-6:
        starts += epnp_candidates(points, xy, planar=False)
        posit = posit_candidate(points, xy)
        starts += [] if posit is None else [posit]
    if use_prior:
        starts.append(np.linalg.inv(geometry.xray_to_reference))
    flip_normal = plane_normal(points) if planarity < COPLANAR_RATIO else None
    pose, sol = best_pose(starts, points, pixels, geometry.intrinsics(), flip_normal=flip_normal)
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
