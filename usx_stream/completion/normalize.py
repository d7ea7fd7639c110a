"""Canonical per-vertebra frame of the completion network, and fixed-size resampling.

Frame
-----
The network works in a unit frame per vertebra::

    unit = R @ (p_mm - center_mm) / scale_mm

* axes: those of the per-vertebra patient frame (x = left-right, y = posterior, i.e. towards the probe,
  z = cranial; ``sim.anatomy.Vertebra.frame``). Points already in those axes need no ``rotation``;
  otherwise pass the 3x3 rotation ``R`` from the points' axes to these axes.
* origin ``center_mm``: ``canonical_center`` — the middle of the axis-aligned bounding box of everything the
  network sees at inference, the partial ultrasound cloud and the back-projected labelmap points. It never
  uses the ground truth, so training and inference place vertebrae the same way.
* scale: fixed ``SCALE_MM`` = 50 mm per unit, so a lumbar vertebra (about 50 x 75 x 35 mm) spans about
  ±1 and distances convert back to mm by one factor.

``denormalize`` is the exact inverse. ``resample`` returns a fixed number of points in furthest-point order
(first point fixed), the order the network's "ordered" pooling expects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from usx_stream.completion import ops

SCALE_MM = 50.0

# Clouds larger than this multiple of the requested count are first thinned with a seeded random subset, so
# furthest point sampling (one step per output point over all input points) stays cheap.
_MAX_OVERSAMPLE = 8


def as_points(name: str, points: np.ndarray) -> np.ndarray:
    """``points`` as a (N, 3) float64 array; ValueError naming ``name`` otherwise."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {arr.shape}")
    return arr


def _frame_args(center_mm: np.ndarray, scale_mm: float, rotation: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    center = np.asarray(center_mm, dtype=np.float64).reshape(-1)
    if center.shape != (3,) or not np.all(np.isfinite(center)):
        raise ValueError(f"center_mm must be 3 finite values, got {center_mm!r}")
    if not (np.isfinite(scale_mm) and scale_mm > 0):
        raise ValueError(f"scale_mm must be positive, got {scale_mm!r}")
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    if rot.shape != (3, 3) or not np.allclose(rot @ rot.T, np.eye(3), atol=1e-6):
        raise ValueError(f"rotation must be a 3x3 rotation matrix, got {rotation!r}")
    return center, rot


def canonical_center(partial_mm: np.ndarray, labelmap_mm: np.ndarray | None = None, *,
                     rotation: np.ndarray | None = None) -> np.ndarray:
    """Origin of the canonical frame: middle of the bounding box of the partial and labelmap points.

    Parameters
    ----------
    partial_mm : (N, 3) array, mm
    labelmap_mm : (M, 3) array, mm, optional
    rotation : (3, 3) array, optional
        From the points' axes to the vertebra axes: the box is taken along the vertebra axes (as for points
        given in those axes), and the centre is returned in the points' axes, ready for ``normalize``.

    Returns
    -------
    (3,) float64 array, mm, in the points' axes
    """
    parts = [as_points("partial_mm", partial_mm)]
    if labelmap_mm is not None:
        parts.append(as_points("labelmap_mm", labelmap_mm))
    pts = np.concatenate(parts, axis=0)
    if len(pts) == 0:
        raise ValueError("canonical_center needs at least one point, got none")
    _, rot = _frame_args(np.zeros(3), 1.0, rotation)
    along = pts @ rot.T
    return (0.5 * (along.min(axis=0) + along.max(axis=0))) @ rot


def normalize(points_mm: np.ndarray, *, center_mm: np.ndarray, scale_mm: float = SCALE_MM,
              rotation: np.ndarray | None = None) -> np.ndarray:
    """Millimetres to the unit frame.

    Parameters
    ----------
    points_mm : (N, 3) array, mm
    center_mm : (3,) array, mm
    scale_mm : float, mm per unit
    rotation : (3, 3) array, optional, from the points' axes to the vertebra axes

    Returns
    -------
    (N, 3) float32 array, unit scale
    """
    pts = as_points("points_mm", points_mm)
    center, rot = _frame_args(center_mm, scale_mm, rotation)
    return (((pts - center) @ rot.T) / scale_mm).astype(np.float32)


def denormalize(points_unit: np.ndarray, *, center_mm: np.ndarray, scale_mm: float = SCALE_MM,
                rotation: np.ndarray | None = None) -> np.ndarray:
    """Inverse of ``normalize``: unit frame to millimetres.

    Returns
    -------
    (N, 3) float64 array, mm
    """
    pts = as_points("points_unit", points_unit)
    center, rot = _frame_args(center_mm, scale_mm, rotation)
    return (pts * scale_mm) @ rot + center


def resample(points: np.ndarray, count: int, *, seed: int = 0) -> np.ndarray:
    """A fixed number of points in furthest-point order.

    Parameters
    ----------
    points : (N, 3) array, N >= 1
    count : int, points wanted
    seed : int, seed of the random thinning of very large clouds (more than 8 x count points)

    Returns
    -------
    (count, 3) float32 array
        With N >= count: a furthest point subset, first point ``points[0]`` (after thinning). With N < count:
        all points in furthest-point order, then repeated cyclically in that order (duplicates add no
        new information, and a prefix stays a well spread subset).
    """
    return resample_batch([points], count, seed=seed)[0]


def resample_batch(clouds: Sequence[np.ndarray], count: int, *, seed: int = 0) -> np.ndarray:
    """``resample`` of several clouds in one batched furthest point sampling.

    Parameters
    ----------
    clouds : sequence of (N_i, 3) arrays, N_i >= 1
    count : int
    seed : int

    Returns
    -------
    (len(clouds), count, 3) float32 array, equal to ``resample`` of each cloud.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if len(clouds) == 0:
        return np.zeros((0, count, 3), dtype=np.float32)
    rng = np.random.default_rng(seed)
    pts = []
    for i, cloud in enumerate(clouds):
        arr = as_points(f"clouds[{i}]", cloud).astype(np.float32)
        if len(arr) == 0:
            raise ValueError(f"resample needs at least one point, got none in clouds[{i}]")
        if len(arr) > _MAX_OVERSAMPLE * count:
            arr = arr[np.sort(rng.choice(len(arr), _MAX_OVERSAMPLE * count, replace=False))]
        pts.append(arr)
    longest = max(len(a) for a in pts)
    # Padding by cycling a cloud's own points changes nothing: a copy is never further than its original,
    # and ties go to the lower index, so copies are picked only once every original point has been.
    padded = torch.from_numpy(np.stack([np.resize(a, (longest, 3)) for a in pts]))
    order = ops.furthest_point_sample_fast(padded, min(count, longest)).numpy()
    out = np.empty((len(pts), count, 3), dtype=np.float32)
    for i, arr in enumerate(pts):
        own = order[i, :min(count, len(arr))]
        out[i] = arr[np.resize(own, count)]
    return out
