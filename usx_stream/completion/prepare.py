"""From per-level bone points in Reference to network inputs in each vertebra's canonical frame, and back.

The canonical frame (DESIGN §3, ``completion.normalize``) has x = left-right, y = posterior, z = cranial.
Live, no vertebra pose is known, so its axes come from what the node measures:

* z (cranial): the tangent of a quadratic through the level centres, pointing from L5 towards L1;
* y (posterior): towards the probe, i.e. against the mean ultrasound beam direction, made orthogonal to z;
* x = y × z (right-handed: with y posterior and z cranial, x points to the patient's left, as in LPS).

Origin and scale are those of ``normalize``: the bounding-box middle of the partial and labelmap points,
50 mm per unit. :class:`~usx_stream.frames.VertebraCloud` keeps ``model_to_reference`` so completed points
go back to Reference exactly (tested round trip).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..frames import LEVELS, VertebraCloud
from . import normalize as nz


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"completion.prepare: {what} is degenerate: {np.asarray(v).tolist()}")
    return np.asarray(v, dtype=np.float64) / n


def cranial_axes(centres_mm: Mapping[str, np.ndarray], *, fallback_cranial=None) -> dict[str, np.ndarray]:
    """Cranial unit axis per known level: the tangent of the centre curve at that level.

    The curve is a least-squares quadratic through all known centres, parametrised by the chord length
    from the most cranial one (three or more levels; two give their chord). Central differences are
    exact in the middle of a curve but not at its ends: at L1 and L5 the one-sided chord leans half
    a disc's angle towards the neighbour, 4.9 degrees on average and up to 7.2 on simulated spines with
    40 degrees of lordosis, against 0.96 (at most 1.9) for the quadratic's tangent (30 spines,
    body centroids).

    centres_mm : level -> (3,) mm in Reference. A single level takes ``fallback_cranial``.
    """
    levels = [lv for lv in LEVELS if lv in centres_mm]
    if len(levels) < 2:
        if fallback_cranial is None:
            raise ValueError("completion.prepare: one level centre needs fallback_cranial")
        return {lv: _unit(np.asarray(fallback_cranial, dtype=np.float64), f"cranial axis of {lv}") for lv in levels}
    pts = np.stack([np.asarray(centres_mm[lv], dtype=np.float64).reshape(3) for lv in levels])
    chord = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    for n, step in enumerate(chord):
        if not np.isfinite(step) or step < 1e-6:
            raise ValueError(f"completion.prepare: centres of {levels[n]} and {levels[n + 1]} coincide: "
                             f"{pts[n].tolist()}")
    # LEVELS run cranial -> caudal, so s grows caudally and the cranial axis is -dP/ds.
    s = np.concatenate([[0.0], np.cumsum(chord)])
    s /= s[-1]                                   # well-conditioned Vandermonde
    if len(levels) == 2:
        tangents = np.repeat((pts[1] - pts[0])[None], 2, axis=0)
    else:
        coef, *_ = np.linalg.lstsq(np.vander(s, 3), pts, rcond=None)      # rows: s², s, 1
        tangents = 2.0 * s[:, None] * coef[0] + coef[1]
    return {lv: _unit(-t, f"cranial axis of {lv}") for lv, t in zip(levels, tangents)}


def vertebra_rotation(*, cranial, posterior) -> np.ndarray:
    """(3, 3) rotation whose rows are the canonical axes (x, y, z) expressed in Reference.

    ``R @ v_ref`` gives a direction in the canonical frame.
    """
    z = _unit(cranial, "cranial axis")
    y = np.asarray(posterior, dtype=np.float64)
    y = _unit(y - (y @ z) * z, "posterior axis (parallel to the cranial axis)")
    x = np.cross(y, z)
    return np.stack([x, y, z])


def prepare_vertebra(level: str, partial_ref_mm: np.ndarray, labelmap_ref_mm: np.ndarray | None, *,
                     rotation: np.ndarray, num_partial: int, num_labelmap: int, seed: int = 0,
                     resampled: tuple[np.ndarray, np.ndarray | None] | None = None) -> VertebraCloud:
    """One vertebra's network input.

    Parameters
    ----------
    level : str
    partial_ref_mm : (N, 3) bone points of this level, Reference, mm (N >= 1)
    labelmap_ref_mm : (M, 3) back-projected labelmap points, Reference, mm, or None (US-only)
    rotation : (3, 3) from :func:`vertebra_rotation`
    num_partial, num_labelmap : fixed point counts of the model (furthest-point resampled)
    resampled : (partial, labelmap) of this level already resampled to those counts, Reference, mm
        (:func:`resample_levels`, batched over levels); the full clouds still give the centre. Furthest-point
        order does not depend on the frame, so it can be computed before the rotation.

    Returns
    -------
    VertebraCloud
        ``partial`` (num_partial, 3) and ``labelmap_points`` (num_labelmap, 3) float32 in the unit frame.
    """
    unit_partial, unit_lm, model_to_ref = canonical_input(
        partial_ref_mm, labelmap_ref_mm, rotation=rotation, num_partial=num_partial, num_labelmap=num_labelmap,
        seed=seed, resampled=resampled, name=level)
    return VertebraCloud(level=level, partial=unit_partial, labelmap_points=unit_lm, model_to_reference=model_to_ref)


def canonical_input(partial_mm: np.ndarray, labelmap_mm: np.ndarray | None, *, rotation: np.ndarray,
                    num_partial: int, num_labelmap: int, seed: int = 0,
                    resampled: tuple[np.ndarray, np.ndarray | None] | None = None, name: str = "vertebra"
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """:func:`prepare_vertebra` for any frame and any name: the unit-frame inputs and the way back.

    Parameters
    ----------
    partial_mm : (N, 3) array, mm, in the input frame (N >= 1)
    labelmap_mm : (M, 3) array, mm, same frame, or None
    rotation : (3, 3) array, rows the canonical axes expressed in the input frame
    name : str, names the vertebra in errors

    Returns
    -------
    partial_unit : (num_partial, 3) float32 ndarray, unit frame
    labelmap_unit : (num_labelmap, 3) float32 ndarray or None, unit frame
    model_to_input : (4, 4) float64 ndarray, unit frame -> input frame (mm)
    """
    partial = np.asarray(partial_mm, dtype=np.float64).reshape(-1, 3)
    if len(partial) == 0:
        raise ValueError(f"completion.prepare: {name} has no bone points")
    has_lm = labelmap_mm is not None and len(labelmap_mm) > 0
    rot = np.asarray(rotation, dtype=np.float64)
    # Work in canonical axes (origin still at the input frame's) so the centre is the box middle in those
    # axes, exactly as the training data computes it.
    partial_c = partial @ rot.T
    lm_c = np.asarray(labelmap_mm, dtype=np.float64).reshape(-1, 3) @ rot.T if has_lm else None
    center_c = nz.canonical_center(partial_c, lm_c)
    if resampled is not None:
        partial_c = np.asarray(resampled[0], dtype=np.float64).reshape(-1, 3) @ rot.T
        lm_c = np.asarray(resampled[1], dtype=np.float64).reshape(-1, 3) @ rot.T if has_lm else None
        for what, pts, count in (("partial", partial_c, num_partial), ("labelmap", lm_c, num_labelmap)):
            if pts is not None and len(pts) != count:
                raise ValueError(f"completion.prepare: resampled {what} of {name} has {len(pts)} points, "
                                 f"expected {count}")
    else:
        partial_c = nz.resample(partial_c, num_partial, seed=seed)
        lm_c = nz.resample(lm_c, num_labelmap, seed=seed) if has_lm else None
    unit_partial = nz.normalize(partial_c, center_mm=center_c)
    unit_lm = nz.normalize(lm_c, center_mm=center_c) if has_lm else None
    model_to_input = np.eye(4)
    # p_in = R^T (scale * u + center_c)
    model_to_input[:3, :3] = rot.T * nz.SCALE_MM
    model_to_input[:3, 3] = rot.T @ center_c
    return unit_partial, unit_lm, model_to_input


def resample_levels(clouds: Mapping[str, np.ndarray], count: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Each level's cloud resampled to ``count`` points in furthest-point order, in one batched sampling
    (one sequential sampling loop for all levels instead of one per level)."""
    levels = [lv for lv, pts in clouds.items() if pts is not None and len(pts)]
    if not levels:
        return {}
    out = nz.resample_batch([clouds[lv] for lv in levels], count, seed=seed)
    return {lv: out[i].astype(np.float64) for i, lv in enumerate(levels)}


def to_reference(cloud: VertebraCloud, points_unit: np.ndarray) -> np.ndarray:
    """Network output (K, 3) in ``cloud``'s unit frame -> (K, 3) float64 Reference, mm."""
    p = np.asarray(points_unit, dtype=np.float64).reshape(-1, 3)
    m = cloud.model_to_reference
    return p @ m[:3, :3].T + m[:3, 3]
