"""Point-cloud completion metrics: the paper's normalised figures and physical ones in millimetres.

Normalised figures (DESIGN §3), computed exactly as the US-X Complete / VRCNet evaluation code does on
clouds in the unit-scale model frame:

- ``dist1[i]`` = squared distance from predicted point ``i`` to its nearest ground-truth point,
  ``dist2[j]`` = squared distance from ground-truth point ``j`` to its nearest predicted point;
- ``CD_p = (mean(sqrt(dist1)) + mean(sqrt(dist2))) / 2``;
- ``CD_t = mean(dist1) + mean(dist2)`` (reported ×10⁴);
- ``F1``: precision = fraction of ``dist1 < 1e-4``, recall = fraction of ``dist2 < 1e-4`` (a distance
  of 0.01 model units), ``F1 = 2PR / (P + R)`` and 0 when both are 0.

Physical figures on clouds in millimetres: mean symmetric surface distance (ASSD), HD95 (the larger of the
two directed 95th percentiles, as MONAI computes it) and the F-score at 1 mm and 2 mm.

Region split (the paper's body / arch analysis): in the canonical vertebra frame ``+y`` points posterior
(towards the probe). Points whose ``y`` is greater than the ground-truth centroid's ``y`` belong to the
arch, the others to the body; prediction and ground truth are split by the same plane.

Everything here is numpy/scipy (evaluation) or torch (the training loss, batched and chunked).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree

F1_THRESHOLD_SQ = 1e-4
"""Squared-distance threshold of the normalised F1 (0.01 model units), as in the original code."""

POSTERIOR_AXIS = 1
"""Index of the posterior axis (+y) of the canonical vertebra frame."""

REGIONS = ("whole", "body", "arch")

NORMALISED_KEYS = ("cd_p", "cd_t", "f1")
MM_KEYS = ("assd_mm", "hd95_mm", "fscore_1mm", "fscore_2mm")


def _as_cloud(points, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name}: expected an (N, 3) array, got shape {arr.shape}")
    return arr


def nearest_sq_dists(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """Squared nearest-neighbour distances in both directions.

    Parameters
    ----------
    pred : (N, 3) array_like
    gt : (M, 3) array_like
        Same frame and unit as ``pred``.

    Returns
    -------
    dist1 : (N,) float64 ndarray
        Squared distance from every ``pred`` point to the nearest ``gt`` point.
    dist2 : (M,) float64 ndarray
        Squared distance from every ``gt`` point to the nearest ``pred`` point.
    """
    pred = _as_cloud(pred, "pred")
    gt = _as_cloud(gt, "gt")
    if len(pred) == 0 or len(gt) == 0:
        raise ValueError(f"pred/gt: both clouds need points, got {len(pred)} and {len(gt)}")
    d1, _ = cKDTree(gt).query(pred, k=1)
    d2, _ = cKDTree(pred).query(gt, k=1)
    return d1**2, d2**2


def fscore_from_dists(dist1: np.ndarray, dist2: np.ndarray, threshold: float) -> float:
    """F-score from directed distances: ``2PR/(P+R)`` with ``P = mean(dist1 < t)``, ``R = mean(dist2 < t)``.

    ``dist1``/``dist2`` and ``threshold`` must be in the same quantity (both squared or both plain).
    Returns 0 when precision and recall are both 0 (the original code maps its NaN to 0).
    """
    precision = float(np.mean(dist1 < threshold))
    recall = float(np.mean(dist2 < threshold))
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def normalised_metrics(pred, gt) -> dict[str, float]:
    """The paper's ``cd_p``, ``cd_t`` (raw, not ×10⁴) and ``f1`` for one cloud pair in model units.

    Parameters
    ----------
    pred : (N, 3) array_like
        Completed cloud, unit-scale model frame.
    gt : (M, 3) array_like
        Ground truth, same frame.
    """
    d1, d2 = nearest_sq_dists(pred, gt)
    return {
        "cd_p": float((np.sqrt(d1).mean() + np.sqrt(d2).mean()) / 2.0),
        "cd_t": float(d1.mean() + d2.mean()),
        "f1": fscore_from_dists(d1, d2, F1_THRESHOLD_SQ),
    }


def surface_metrics_mm(pred_mm, gt_mm, *, thresholds_mm=(1.0, 2.0)) -> dict[str, float]:
    """Physical distances between two clouds sampled on surfaces, in millimetres.

    Parameters
    ----------
    pred_mm, gt_mm : (N, 3), (M, 3) array_like
        Points in mm, same frame.
    thresholds_mm : sequence of float, keyword-only
        F-score distance thresholds (mm); keys ``fscore_<t>mm`` (``t`` printed with ``%g``).

    Returns
    -------
    dict
        ``assd_mm`` (mean of all directed distances), ``hd95_mm`` (max of the two directed 95th
        percentiles) and one ``fscore_<t>mm`` per threshold.
    """
    d1, d2 = (np.sqrt(d) for d in nearest_sq_dists(pred_mm, gt_mm))
    out = {
        "assd_mm": float((d1.sum() + d2.sum()) / (len(d1) + len(d2))),
        "hd95_mm": float(max(np.percentile(d1, 95), np.percentile(d2, 95))),
    }
    for t in thresholds_mm:
        out[f"fscore_{t:g}mm"] = fscore_from_dists(d1, d2, float(t))
    return out


def region_masks(points, gt_centroid, *, axis: int = POSTERIOR_AXIS) -> dict[str, np.ndarray]:
    """Boolean masks ``{"whole", "body", "arch"}`` splitting ``points`` at the ground-truth centroid.

    ``arch``: coordinate along ``axis`` (posterior) greater than the centroid's; ``body``: the rest.
    """
    pts = _as_cloud(points, "points")
    c = np.asarray(gt_centroid, dtype=np.float64).reshape(3)
    arch = pts[:, axis] > c[axis]
    return {"whole": np.ones(len(pts), dtype=bool), "body": ~arch, "arch": arch}


def evaluate_completion(pred, gt, *, mm_per_unit: float, axis: int = POSTERIOR_AXIS) -> dict[str, dict[str, float]]:
    """Every metric of DESIGN §3 for one vertebra, per region.

    Parameters
    ----------
    pred : (N, 3) array_like
        Completed cloud in the unit-scale canonical model frame.
    gt : (M, 3) array_like
        Ground truth in the same frame.
    mm_per_unit : float, keyword-only
        Millimetres per model unit (the model frame is a similarity of the patient frame), used for the
        physical metrics.
    axis : int, keyword-only
        Posterior axis of the model frame for the body/arch split.

    Returns
    -------
    dict
        ``{region: {"cd_p", "cd_t", "f1", "assd_mm", "hd95_mm", "fscore_1mm", "fscore_2mm"}}`` for
        ``region`` in ``("whole", "body", "arch")``. A region in which either cloud has no point gets NaN
        for every metric (it happens only with a degenerate prediction).
    """
    if not (math.isfinite(mm_per_unit) and mm_per_unit > 0):
        raise ValueError(f"mm_per_unit: must be a positive finite number, got {mm_per_unit!r}")
    pred = _as_cloud(pred, "pred")
    gt = _as_cloud(gt, "gt")
    centroid = gt.mean(axis=0)
    pm = region_masks(pred, centroid, axis=axis)
    gm = region_masks(gt, centroid, axis=axis)
    out = {}
    for region in REGIONS:
        p, g = pred[pm[region]], gt[gm[region]]
        if len(p) == 0 or len(g) == 0:
            out[region] = {k: float("nan") for k in NORMALISED_KEYS + MM_KEYS}
            continue
        out[region] = {**normalised_metrics(p, g), **surface_metrics_mm(p * mm_per_unit, g * mm_per_unit)}
    return out


# --------------------------------------------------------------------------------------------- torch


def chamfer_sq_dists(pred: torch.Tensor, gt: torch.Tensor, *, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched squared nearest-neighbour distances, differentiable, in chunks to bound memory.

    The nearest neighbours are found without gradient on chunks of ``chunk`` rows (memory
    ``B × chunk × M``); the returned distances are then recomputed exactly from the matched pairs, so the
    gradient is that of the CUDA chamfer kernel of the original code (flows to both clouds).

    Parameters
    ----------
    pred : (B, N, 3) tensor
    gt : (B, M, 3) tensor
    chunk : int, keyword-only
        Rows of the distance matrix computed at once.

    Returns
    -------
    dist1 : (B, N) tensor
        Squared distance from each ``pred`` point to the nearest ``gt`` point.
    dist2 : (B, M) tensor
        Squared distance from each ``gt`` point to the nearest ``pred`` point.
    """
    check_batched_pair(pred, gt, chunk)
    with torch.no_grad():
        idx1, idx2 = nearest_indices(pred.detach(), gt.detach(), chunk)
    nn_of_pred = torch.gather(gt, 1, idx1.unsqueeze(-1).expand(-1, -1, 3))
    nn_of_gt = torch.gather(pred, 1, idx2.unsqueeze(-1).expand(-1, -1, 3))
    dist1 = ((pred - nn_of_pred) ** 2).sum(-1)
    dist2 = ((gt - nn_of_gt) ** 2).sum(-1)
    return dist1, dist2


def check_batched_pair(pred: torch.Tensor, gt: torch.Tensor, chunk: int) -> None:
    """Raise ValueError unless ``pred`` (B, N, 3) and ``gt`` (B, M, 3) pair up and ``chunk`` >= 1."""
    if pred.ndim != 3 or pred.shape[-1] != 3 or gt.ndim != 3 or gt.shape[-1] != 3 or pred.shape[0] != gt.shape[0]:
        raise ValueError(f"pred/gt: expected (B, N, 3) and (B, M, 3), got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk: must be >= 1, got {chunk}")


def nearest_indices(a: torch.Tensor, b: torch.Tensor, chunk: int, a_mask: torch.Tensor | None = None,
                    b_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest ``b`` index of every ``a`` point and nearest ``a`` index of every ``b`` point.

    ``a`` (B, N, 3), ``b`` (B, M, 3) -> (B, N), (B, M) long. One pass over row chunks of the distance
    matrix serves both directions (row minima directly, column minima as a running minimum). With masks
    ((B, N), (B, M) bool) only masked points are candidates; an index with no candidate is 0, and the
    caller masks its distance out.
    """
    b_sq = (b * b).sum(-1).unsqueeze(1)  # (B, 1, M)
    inf = torch.tensor(float("inf"), dtype=a.dtype, device=a.device)
    rows = []
    col_val = torch.full(b.shape[:2], float("inf"), dtype=a.dtype, device=a.device)
    col_idx = torch.zeros(b.shape[:2], dtype=torch.long, device=a.device)
    for start in range(0, a.shape[1], chunk):
        a_c = a[:, start:start + chunk]
        # |a|^2 + |b|^2 - 2ab: only the argmin is used, so rounding in the expansion is harmless.
        d = torch.baddbmm(b_sq + (a_c * a_c).sum(-1, keepdim=True), a_c, b.transpose(1, 2), alpha=-2.0)
        rows.append((d if b_mask is None else torch.where(b_mask.unsqueeze(1), d, inf)).argmin(dim=2))
        if a_mask is not None:
            d = torch.where(a_mask[:, start:start + chunk].unsqueeze(2), d, inf)
        val, idx = d.min(dim=1)
        better = val < col_val
        col_val = torch.where(better, val, col_val)
        col_idx = torch.where(better, idx + start, col_idx)
    return torch.cat(rows, dim=1), col_idx


def chamfer_cdp(pred: torch.Tensor, gt: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
    """Per-sample ``CD_p = (mean sqrt(dist1) + mean sqrt(dist2)) / 2``: (B,) tensor, differentiable.

    A tiny epsilon inside the square root keeps the gradient finite for coincident points.
    """
    d1, d2 = chamfer_sq_dists(pred, gt, chunk=chunk)
    return (torch.sqrt(d1 + 1e-12).mean(1) + torch.sqrt(d2 + 1e-12).mean(1)) / 2.0


def calc_cd(pred: torch.Tensor, gt: torch.Tensor, *, chunk: int = 1024) -> dict[str, torch.Tensor]:
    """Batched ``cd_p``, ``cd_t`` and ``f1`` (each (B,)) exactly as the original evaluation code."""
    d1, d2 = chamfer_sq_dists(pred, gt, chunk=chunk)
    cd_p = (torch.sqrt(d1).mean(1) + torch.sqrt(d2).mean(1)) / 2.0
    cd_t = d1.mean(1) + d2.mean(1)
    precision = (d1 < F1_THRESHOLD_SQ).float().mean(1)
    recall = (d2 < F1_THRESHOLD_SQ).float().mean(1)
    f1 = 2 * precision * recall / (precision + recall)
    f1 = torch.nan_to_num(f1, nan=0.0)
    return {"cd_p": cd_p, "cd_t": cd_t, "f1": f1}
