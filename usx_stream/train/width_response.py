"""How much of a left-right stretch of the ultrasound cloud reaches the completed vertebral body.

A lateral X-ray shows a body's height and depth, never its width: only the ultrasound cloud (laminae,
transverse processes) tells a wide vertebra from a narrow one. A network that completes every body at the
width it saw most ignores that cue and completes a large patient's bodies too narrow. This measures it:
each sample's partial cloud is stretched along the left-right axis about its own centroid by a factor f,
completed again, and the body's width compared with the unstretched completion's. ``follow`` is
(median width ratio - 1) / (f - 1): 1 when the body widens with the cloud, 0 when it keeps its width.

Width: the 2nd-98th percentile extent along x of the body points (those not posterior of the ground
truth's centroid, the split of :func:`usx_stream.metrics.region_masks`), in mm.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..metrics import POSTERIOR_AXIS, region_masks

LATERAL_AXIS = 0
DEFAULT_FACTORS = (0.9, 1.1, 1.2)


def body_width(points: np.ndarray, gt_centroid: np.ndarray) -> float:
    """Left-right extent (2nd-98th percentile) of the body points of ``points``, in their units."""
    body = points[region_masks(points, gt_centroid, axis=POSTERIOR_AXIS)["body"]]
    if len(body) < 2:
        return float("nan")
    lo, hi = np.percentile(body[:, LATERAL_AXIS], [2, 98])
    return float(hi - lo)


def _median(x: np.ndarray) -> float:
    """Median of the finite values; NaN (without numpy's warning) where a model completed no body at all."""
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else float("nan")


def stretch_left_right(partial: np.ndarray, factor: float) -> np.ndarray:
    """(N, P, 3) partial clouds stretched along x by ``factor`` about each cloud's own centroid."""
    out = np.array(partial, dtype=np.float32, copy=True)
    cx = out[:, :, LATERAL_AXIS].mean(axis=1, keepdims=True)
    out[:, :, LATERAL_AXIS] = (out[:, :, LATERAL_AXIS] - cx) * factor + cx
    return out


def width_response(complete: Callable[[np.ndarray], np.ndarray], partial: np.ndarray, truth: np.ndarray, *,
                   mm_per_unit: float, factors: Sequence[float] = DEFAULT_FACTORS) -> dict:
    """Median body widths and how far they follow a stretch of ``partial`` (see the module docstring).

    Parameters
    ----------
    complete : callable
        (N, P, 3) partial clouds -> (N, Q, 3) completions in the same frame (the labelmap, if any, held
        fixed by the caller: it is what the X-ray shows and does not change with the stretch).
    partial, truth : (N, P, 3) and (N, G, 3) ndarrays
        Partial clouds and ground truth, unit frame.
    mm_per_unit : float
    factors : floats other than 1
    """
    if any(abs(f - 1.0) < 1e-6 for f in factors):
        raise ValueError(f"width_response: factors must differ from 1, got {list(factors)}")
    centroids = truth.mean(axis=1)
    base = complete(partial)
    base_w = np.array([body_width(b, c) for b, c in zip(base, centroids)])
    truth_w = np.array([body_width(t, c) for t, c in zip(truth, centroids)])
    rows = []
    for f in factors:
        stretched = complete(stretch_left_right(partial, f))
        ratio = np.array([body_width(s, c) for s, c in zip(stretched, centroids)]) / base_w
        median = _median(ratio)
        rows.append({"factor": float(f), "width_ratio": median, "follow": (median - 1.0) / (f - 1.0)})
    return {"n": int(len(partial)), "truth_width_mm": _median(truth_w) * mm_per_unit,
            "pred_width_mm": _median(base_w) * mm_per_unit, "stretches": rows,
            "follow_mean": float(np.mean([r["follow"] for r in rows]))}


def model_width_response(net, model_cfg, arrays, *, name: str,
                         factors: Sequence[float] = DEFAULT_FACTORS) -> dict:
    """:func:`width_response` of a completion network on a paired-data file (no body fit: the fit moves
    height and depth only, and the question is what the network itself makes of the cloud)."""
    import torch

    from .network_io import frame_shift, model_inputs, predict

    partial, labelmap = model_inputs(arrays, model_cfg, name)
    shift = frame_shift(arrays, model_cfg)[:, None]

    def complete(p: np.ndarray) -> np.ndarray:              # back to the file's frame, where the truth is
        return predict(net, torch.from_numpy(p), labelmap).numpy() + shift

    result = width_response(complete, partial.numpy(), arrays.complete, mm_per_unit=arrays.mm_per_unit,
                            factors=factors)
    return {"name": name, **result}
