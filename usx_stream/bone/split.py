"""Split bone points per vertebra (L1..L5), guided by level centres along the cranio-caudal axis.

The level centres come from the X-ray labelmap back-projected into Reference (vertebral-body
centres), or — until an X-ray arrives — from landmarks (a POINT message from the navigation
system, or ``[bone] landmarks_mm`` in the launch file); :func:`choose_level_centres` picks.

Each level owns a slab across the spine: the point's offset along the local cranio-caudal axis
from the level centre, divided by the slab half-thickness (half the distance to the neighbouring
centres), must be at most 1, and the point goes to the level where that ratio is smallest. The
local axis at a level is the direction between its neighbours' centres, so the slabs follow the
lumbar lordosis instead of cutting it with parallel planes. Points farther than ``max_radius_mm``
from the level's axis line (off the spine) are dropped.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from ..frames import LEVELS

log = logging.getLogger(__name__)

# Lumbar level-to-level distance used when a single centre is known, mm (typical adult L1-L5:
# vertebral body height ~27 mm + disc ~10 mm).
DEFAULT_LEVEL_SPACING_MM = 37.0


def _as_centres(centres) -> dict[str, np.ndarray]:
    """``{level: (3,) mm}`` from a mapping or a ``(5, 3)`` array in L1..L5 order (NaN rows = unknown)."""
    if isinstance(centres, Mapping):
        out = {}
        for level, c in centres.items():
            if level not in LEVELS:
                raise ValueError(f"bone.split: unknown level {level!r} (expected one of {LEVELS})")
            out[level] = np.asarray(c, dtype=np.float64).reshape(3)
    else:
        arr = np.asarray(centres, dtype=np.float64)
        if arr.shape != (len(LEVELS), 3):
            raise ValueError(f"bone.split: centres must be (5, 3) for L1..L5 or a mapping, got shape {arr.shape}")
        out = {level: arr[n] for n, level in enumerate(LEVELS)}
    return {lv: c for lv, c in out.items() if np.all(np.isfinite(c))}


def _local_axes(ordered: list[np.ndarray], axis: np.ndarray | None) -> list[np.ndarray]:
    """Unit cranio-caudal axis per level (pointing from caudal to cranial, i.e. L5 -> L1)."""
    n = len(ordered)
    if n == 1:
        return [axis]
    axes = []
    for i in range(n):
        a = ordered[max(i - 1, 0)] - ordered[min(i + 1, n - 1)]     # towards the lower-numbered level
        norm = np.linalg.norm(a)
        if norm == 0:
            raise ValueError("bone.split: two level centres coincide")
        a = a / norm
        if axis is not None and a @ axis < 0:
            a = -a
        axes.append(a)
    return axes


def split_levels(points_mm, centres, *, axis=None, max_radius_mm: float = 80.0,
                 level_spacing_mm: float = DEFAULT_LEVEL_SPACING_MM) -> dict[str, np.ndarray]:
    """Assign bone points to vertebral levels.

    Parameters
    ----------
    points_mm : (N, 3) array-like
        Bone points in Reference, mm.
    centres : mapping level -> (3,) or (5, 3) array-like
        Level centres in Reference, mm (L1..L5 rows; NaN rows or missing keys = level unknown).
    axis : (3,) array-like, optional
        Cranio-caudal direction (towards cranial). Needed when only one centre is known; with
        several, the local axes come from the centres and this only fixes their sign.
    max_radius_mm : float
        Largest distance from a level's axis line for a point to belong to it, mm (the spinous
        process tip lies ~60-70 mm behind the vertebral-body centre).
    level_spacing_mm : float
        Slab thickness used when a single centre is known, mm.

    Returns
    -------
    dict level -> (N_i, 3) float64 ndarray
        One entry per known level (possibly empty), in L1..L5 order; points of no level are dropped.
    """
    if not max_radius_mm > 0:
        raise ValueError(f"bone.split.max_radius_mm: must be > 0, got {max_radius_mm!r}")
    if not level_spacing_mm > 0:
        raise ValueError(f"bone.split.level_spacing_mm: must be > 0, got {level_spacing_mm!r}")
    pts = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    known = _as_centres(centres)
    if axis is not None:
        axis = np.asarray(axis, dtype=np.float64).reshape(3)
        if not np.linalg.norm(axis) > 0:
            raise ValueError(f"bone.split.axis: must be a non-zero vector, got {axis.tolist()}")
        axis = axis / np.linalg.norm(axis)
    levels = [lv for lv in LEVELS if lv in known]
    if not levels:
        return {}
    if len(levels) == 1 and axis is None:
        raise ValueError("bone.split: one level centre needs the cranio-caudal axis")
    ordered = [known[lv] for lv in levels]
    axes = _local_axes(ordered, axis)
    half = _half_thickness(ordered, [LEVELS.index(lv) for lv in levels], level_spacing_mm)
    ratio = np.full((len(pts), len(levels)), np.inf)
    for n, (c, a, h) in enumerate(zip(ordered, axes, half)):
        d = pts - c
        t = d @ a
        radial = np.linalg.norm(d - t[:, None] * a, axis=1)
        r = np.abs(t) / h
        ratio[:, n] = np.where((r <= 1.0) & (radial <= max_radius_mm), r, np.inf)
    best = ratio.argmin(axis=1) if len(pts) else np.zeros(0, int)
    owned = np.isfinite(ratio[np.arange(len(pts)), best]) if len(pts) else np.zeros(0, bool)
    out = {lv: pts[owned & (best == n)] for n, lv in enumerate(levels)}
    log.debug("split %d points: %s, %d unassigned", len(pts), {k: len(v) for k, v in out.items()},
              int((~owned).sum()))
    return out


def _half_thickness(ordered: list[np.ndarray], index: list[int], level_spacing_mm: float) -> list[float]:
    """Slab half-thickness per level: half the mean distance to its neighbours (end levels: one), per level
    step: where a level between two known ones is missing (L1 and L3 known, not L2), each keeps one level's
    thickness and the missing level's bone goes to neither, instead of half of it joining each."""
    n = len(ordered)
    if n == 1:
        return [level_spacing_mm / 2]
    gaps = [float(np.linalg.norm(ordered[i + 1] - ordered[i])) / (index[i + 1] - index[i]) for i in range(n - 1)]
    half = []
    for i in range(n):
        near = [g for g in (gaps[i - 1] if i > 0 else None, gaps[i] if i < n - 1 else None) if g is not None]
        # A slightly wider slab than the mid-plane lets the argmin decide near boundaries when the
        # local axes of neighbours differ; the far side of an end level reaches as far as the near side.
        half.append(0.5 * float(np.mean(near)) * 1.05)
    return half


# Body centre to body centre, per level step, mm: adult lumbar levels sit 30-45 mm apart; outside this
# range the centres are in other units or belong to other levels.
LEVEL_SPACING_RANGE_MM = (15.0, 60.0)


def implausible_centres(centres) -> str:
    """Why these level centres cannot be a lumbar spine's, in one line; empty when they can.

    The known levels must follow each other along the spine in L1..L5 order (their projections on the
    centres' principal axis are monotonic) and lie :data:`LEVEL_SPACING_RANGE_MM` apart per level step.
    Catches a markup point named L2 placed on L4, or landmarks sent in metres."""
    known = _as_centres(centres)
    levels = [lv for lv in LEVELS if lv in known]
    if len(levels) < 2:
        return ""
    pts = np.stack([known[lv] for lv in levels])
    index = np.array([LEVELS.index(lv) for lv in levels])
    steps = np.linalg.norm(np.diff(pts, axis=0), axis=1) / np.diff(index)
    lo, hi = LEVEL_SPACING_RANGE_MM
    for n, step in enumerate(steps):
        if not lo <= step <= hi:
            return (f"{levels[n]} and {levels[n + 1]} centres are {step:.1f} mm apart per level ({lo:.0f}-{hi:.0f} "
                    "expected: millimetres, and the right levels?)")
    centred = pts - pts.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    t = centred @ axis
    if not (np.all(np.diff(t) > 0) or np.all(np.diff(t) < 0)):
        order = [levels[i] for i in np.argsort(t)]
        return f"level centres out of order along the spine: {', '.join(order)} from one end to the other"
    return ""


def choose_level_centres(*, xray_centres=None, landmarks=None) -> tuple[dict[str, np.ndarray], str]:
    """Level centres to split with: the X-ray's when known, else the landmarks.

    Parameters
    ----------
    xray_centres, landmarks : mapping level -> (3,) or (5, 3) array-like, optional
        Reference, mm. Levels with NaN coordinates count as unknown.

    Returns
    -------
    centres : dict level -> (3,) ndarray
    source : str
        ``"xray"``, ``"landmarks"`` or ``"none"`` (empty centres).
    """
    if xray_centres is not None:
        c = _as_centres(xray_centres)
        if c:
            return c, "xray"
    if landmarks is not None:
        c = _as_centres(landmarks)
        if c:
            return c, "landmarks"
    return {}, "none"
