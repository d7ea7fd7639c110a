"""Pose solvers of the C-arm calibration (:mod:`usx_stream.xray.calibrate`), on validated arrays.

- :func:`rigid_fit`: least-squares rigid (or similarity) transform between point sets, Kabsch / Umeyama.
- :func:`epnp_candidates`, :func:`posit_candidate`: linear ReferenceToXray starts for perspective-n-point,
  from normalised image coordinates (EPnP, Lepetit et al. 2009; POSIT, DeMenthon & Davis 1995).
- :func:`best_pose`: each start refined by Levenberg-Marquardt on the reprojection error in pixels,
  with the mirrored twin of each refined pose for a planar target (:func:`plane_normal`); the lowest
  error with every fiducial in front of the source wins.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation


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


def epnp_candidates(points: np.ndarray, xy: np.ndarray, *, planar: bool) -> list[np.ndarray]:
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


def posit_candidate(points: np.ndarray, xy: np.ndarray, *, iterations: int = 30) -> np.ndarray | None:
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


def plane_normal(points: np.ndarray) -> np.ndarray:
    """Unit normal of the least-squares plane through ``points`` (the direction of least spread)."""
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


def best_pose(starts: list[np.ndarray], points: np.ndarray, pixels: np.ndarray, k: np.ndarray, *,
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
