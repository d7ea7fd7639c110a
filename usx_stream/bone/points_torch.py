"""Bone points from a bone-probability tensor, on the tensor's device (:func:`extract_bone_points`'s twin).

The node compounds on a GPU with the torch backend; reading its bone channel back to the host every
update costs more than extracting the points there. This module runs the three steps of
:mod:`usx_stream.bone.points` (threshold, non-maximum suppression along the beam, probability-weighted voxel
downsample) in torch on the tensor's device and brings back only the points. It reproduces the numpy
version step for step: the same voxels in the same (flat index) order, trilinear samples computed as
``scipy.ndimage.map_coordinates(order=1, mode="nearest")`` computes them (clamped corner indices, weights
``1 - t`` and ``1 - (1 - t)``, corners summed in C order in float64, rounded to the channel's float32),
the same crest rule, and cells ordered by the same key. The beam estimate's (3, 3) structure tensor is
summed on the device and decomposed on the host by the numpy code; the per-cell means are float64 sums
(in another order on a GPU: equal to ~1e-12 mm).
"""

from __future__ import annotations

import numpy as np
import torch

from .points import beam_step_kji, check_point_settings, given_beam, principal_axis


def extract_bone_points_torch(prob: torch.Tensor, *, origin_mm, spacing_mm, weights=None, threshold: float = 0.5,
                              beam_direction=None, voxel_mm: float = 1.0) -> np.ndarray:
    """Bone surface points of the probability volume ``prob``, computed on ``prob.device``.

    Parameters
    ----------
    prob : (Z, Y, X) torch.Tensor
        Bone probability in [0, 1] (compared and sampled as float32, as the numpy version does).
    origin_mm, spacing_mm : (3,) array-like
        The grid: position of voxel (0, 0, 0) and voxel size along x, y, z, mm.
    weights : (Z, Y, X) tensor or ndarray, optional
        Compounding weights; voxels with weight 0 are never bone.
    threshold, beam_direction, voxel_mm
        As :func:`usx_stream.bone.points.extract_bone_points`.

    Returns
    -------
    (N, 3) float64 ndarray
        Points in the grid's frame, mm; ``(0, 3)`` when nothing passes. Equal to
        :func:`~usx_stream.bone.points.extract_bone_points` on the same values.
    """
    check_point_settings(threshold, voxel_mm)
    if prob.ndim != 3:
        raise ValueError(f"bone.points: expected a (Z, Y, X) probability volume, got shape {tuple(prob.shape)}")
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(3)
    origin = np.asarray(origin_mm, dtype=np.float64).reshape(3)
    d_given = None if beam_direction is None else given_beam(beam_direction)
    prob = prob.to(torch.float32)
    mask = prob >= threshold
    if weights is not None:
        mask &= torch.as_tensor(weights, device=prob.device) > 0
    kji = torch.nonzero(mask)                    # row-major order, as flatnonzero + unravel_index
    if len(kji) == 0:
        return np.zeros((0, 3))
    d_xyz = _estimate_beam(prob, kji, spacing) if d_given is None else d_given
    step = torch.tensor(beam_step_kji(d_xyz, spacing).tolist(), dtype=torch.float64, device=prob.device)
    centre = prob[kji[:, 0], kji[:, 1], kji[:, 2]]
    coords = kji.to(torch.float64)
    up, down = sample_linear_nearest(prob, coords + step), sample_linear_nearest(prob, coords - step)
    # ">" on one side and ">=" on the other keeps exactly one voxel of a two-voxel plateau.
    keep = (centre > up) & (centre >= down)
    kji, weight = kji[keep], centre[keep]
    t_spacing = torch.as_tensor(spacing, device=prob.device)
    points = kji.flip(1).to(torch.float64) * t_spacing + torch.as_tensor(origin, device=prob.device)
    return voxel_downsample_torch(points, voxel_mm=voxel_mm, weights=weight).cpu().numpy()


def _estimate_beam(prob: torch.Tensor, kji: torch.Tensor, spacing_mm: np.ndarray) -> np.ndarray:
    """Principal axis of the probability gradient (mm units) at the voxels ``kji``: central differences
    on the device, the (3, 3) structure tensor decomposed on the host (``points.principal_axis``)."""
    grads = []
    for axis in range(3):
        hi, lo = kji.clone(), kji.clone()
        hi[:, axis] = torch.clamp(hi[:, axis] + 1, max=prob.shape[axis] - 1)
        lo[:, axis] = torch.clamp(lo[:, axis] - 1, min=0)
        step = (hi[:, axis] - lo[:, axis]).clamp(min=1).to(torch.float64) * float(spacing_mm[2 - axis])
        diff = prob[hi[:, 0], hi[:, 1], hi[:, 2]] - prob[lo[:, 0], lo[:, 1], lo[:, 2]]   # float32, as numpy
        grads.append(diff.to(torch.float64) / step)
    g_xyz = torch.stack(grads[::-1], dim=1)       # (k, j, i) -> (x, y, z)
    return principal_axis((g_xyz.T @ g_xyz).cpu().numpy())


def sample_linear_nearest(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``volume`` at ``coords`` ((N, 3) float64 voxel indices, axis order of the
    volume), edges extended with the nearest voxel, in ``volume``'s dtype: the values
    ``scipy.ndimage.map_coordinates(volume, coords.T, order=1, mode="nearest")`` gives."""
    start = torch.floor(coords)
    w0 = 1.0 - (coords - start)                   # scipy: weights[0] = 1 - t, weights[1] = 1 - weights[0]
    w1 = 1.0 - w0
    # "nearest" extends the edges by clamping the corner indices (not the coordinates)
    last = torch.tensor(volume.shape, dtype=torch.int64, device=coords.device) - 1
    lo = start.to(torch.int64)
    corner = (torch.clamp(torch.minimum(lo, last), min=0), torch.clamp(torch.minimum(lo + 1, last), min=0))
    weight = (w0, w1)
    total = torch.zeros(len(coords), dtype=torch.float64, device=coords.device)
    for n in range(8):                            # the last axis fastest, as scipy iterates the footprint
        o = ((n >> 2) & 1, (n >> 1) & 1, n & 1)
        value = volume[corner[o[0]][:, 0], corner[o[1]][:, 1], corner[o[2]][:, 2]].to(torch.float64)
        total = total + ((value * weight[o[0]][:, 0]) * weight[o[1]][:, 1]) * weight[o[2]][:, 2]
    return total.to(volume.dtype)


def voxel_downsample_torch(points: torch.Tensor, *, voxel_mm: float, weights: torch.Tensor | None = None
                           ) -> torch.Tensor:
    """:func:`usx_stream.bone.points.voxel_downsample` on ``points``' device: one point per occupied
    ``voxel_mm`` cell, the weighted mean of its points, cells ordered by the same key ((M, 3) float64)."""
    if not voxel_mm > 0:
        raise ValueError(f"voxel_downsample.voxel_mm: must be > 0, got {voxel_mm!r}")
    pts = points.to(torch.float64).reshape(-1, 3)
    if len(pts) == 0:
        return torch.zeros((0, 3), dtype=torch.float64, device=pts.device)
    if weights is None:
        w = torch.ones(len(pts), dtype=torch.float64, device=pts.device)
    else:
        w = weights.to(torch.float64).reshape(-1)
    if len(w) != len(pts):
        raise ValueError(f"voxel_downsample.weights: expected {len(pts)} values, got {len(w)}")
    w = torch.clamp(w, min=1e-12)
    cells = torch.floor(pts / voxel_mm).to(torch.int64)
    cells -= cells.min(dim=0).values
    dims = (cells.max(dim=0).values + 1).cpu().numpy()
    if float(np.prod(dims.astype(np.float64))) >= 2.0 ** 62:
        raise ValueError(f"voxel_downsample: {dims.tolist()} cells of {voxel_mm} mm overflow a cell key")
    key = (cells[:, 0] * int(dims[1]) + cells[:, 1]) * int(dims[2]) + cells[:, 2]
    _, inverse = torch.unique(key, sorted=True, return_inverse=True)
    n = int(inverse.max()) + 1
    total = torch.zeros(n, dtype=torch.float64, device=pts.device).index_add_(0, inverse, w)
    out = torch.zeros((n, 3), dtype=torch.float64, device=pts.device).index_add_(0, inverse, w[:, None] * pts)
    return out / total[:, None]
