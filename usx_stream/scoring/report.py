"""Per-level scores of published surfaces against the truth, in Reference, and a picture of them.

Each level present in both the recording and the truth is scored in mm with
:func:`usx_stream.metrics.surface_metrics_mm`: the truth mesh is moved into Reference by the registration
and both surfaces are sampled evenly (:data:`SAMPLES` points each, fixed seeds, so a rerun gives the same
numbers); ASSD (mean symmetric surface distance), HD95 and F-scores at 1 and 2 mm, for the whole vertebra,
its body and its arch, split by the rule of :mod:`usx_stream.scoring.truth` (the truth centroid's plane
normal to the posterior direction).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from ..frames import LEVELS, Surface
from ..metrics import surface_metrics_mm
from .recording import PublishedSurface
from .register import Registration
from .truth import body_mask, sample_with_normals

log = logging.getLogger(__name__)

__all__ = ["score_levels", "summary", "write_png", "SAMPLES"]

SAMPLES = 8192
"""Points sampled on each surface (truth and prediction), per level."""
_TRUTH_SEED, _PRED_SEED = 0, 1


def _transformed(surface: Surface, m: np.ndarray) -> Surface:
    v = np.asarray(surface.vertices_mm, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]
    return Surface(v, surface.triangles, frame="Reference", name=surface.name)


def _region(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    if len(pred) == 0 or len(truth) == 0:
        return {k: float("nan") for k in ("assd_mm", "hd95_mm", "fscore_1mm", "fscore_2mm")}
    return surface_metrics_mm(pred, truth)


def score_levels(published: dict[str, PublishedSurface], truth: dict[str, Surface], registration: Registration,
                 posterior_ref: np.ndarray, *, samples: int = SAMPLES) -> tuple[dict, dict]:
    """Score every level present in both ``published`` and ``truth``.

    Parameters
    ----------
    published : dict[str, PublishedSurface]
        Last published surface per level, Reference, mm.
    truth : dict[str, Surface]
        Truth meshes per level, truth frame, mm.
    registration : Registration
        Its ``truth_to_reference`` moves the truth into Reference.
    posterior_ref : (3,) array_like
        Direction towards the probe in Reference (body / arch split).
    samples : int, keyword-only
        Points per surface.

    Returns
    -------
    levels : dict
        ``{level: {"assd_mm", "hd95_mm", "fscore_1mm", "fscore_2mm", "body_assd_mm", "body_hd95_mm",
        "body_fscore_1mm", "body_fscore_2mm", "arch_...", "n_points": {"pred", "truth", "pred_body",
        "truth_body"}, "update", "file", "fusion"}}``.
    clouds : dict
        ``{level: (pred_points (S, 3), truth_points (S, 3), pred_to_truth_mm (S,))}`` in Reference, for
        the picture.
    """
    from scipy.spatial import cKDTree

    posterior = np.asarray(posterior_ref, dtype=np.float64).reshape(3)
    levels, clouds = {}, {}
    for level in LEVELS:
        if level not in published or level not in truth:
            continue
        gt, _ = sample_with_normals(_transformed(truth[level], registration.truth_to_reference), samples,
                                    seed=_TRUTH_SEED)
        pred, _ = sample_with_normals(published[level].surface, samples, seed=_PRED_SEED)
        centroid = gt.mean(axis=0)
        gb, pb = body_mask(gt, centroid, posterior), body_mask(pred, centroid, posterior)
        out: dict = dict(_region(pred, gt))
        for region, pm, gm in (("body", pb, gb), ("arch", ~pb, ~gb)):
            out.update({f"{region}_{k}": v for k, v in _region(pred[pm], gt[gm]).items()})
        out["n_points"] = {"pred": int(len(pred)), "truth": int(len(gt)), "pred_body": int(pb.sum()),
                           "truth_body": int(gb.sum())}
        p = published[level]
        out.update({"update": p.update, "file": p.file, "fusion": p.metadata.get("fusion")})
        levels[level] = out
        clouds[level] = (pred, gt, cKDTree(gt).query(pred)[0])
    return levels, clouds


def summary(levels: dict) -> dict:
    """Mean of each per-level number over the scored levels (NaN-free levels only)."""
    keys = [k for k, v in next(iter(levels.values()), {}).items() if isinstance(v, float)]
    out = {}
    for k in keys:
        vals = [lv[k] for lv in levels.values() if not math.isnan(lv[k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    out["levels"] = len(levels)
    return out


def write_png(path: str | Path, clouds: dict, posterior_ref: np.ndarray, *, title: str = "",
              max_mm: float = 5.0) -> Path:
    """Three orthographic views (lateral, posterior, axial) of truth (grey) and predicted points coloured
    by their distance to the truth (0 .. ``max_mm``), in a spine-aligned frame of Reference.

    Parameters
    ----------
    path : str or Path
        PNG to write.
    clouds : dict
        As returned by :func:`score_levels`.
    posterior_ref : (3,) array_like
        Direction towards the probe in Reference.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    post = np.asarray(posterior_ref, dtype=np.float64) / np.linalg.norm(posterior_ref)
    truth_all = np.vstack([c[1] for c in clouds.values()]) if clouds else np.zeros((1, 3))
    centred = truth_all - truth_all.mean(axis=0)
    across = centred - np.outer(centred @ post, post)
    long = np.linalg.svd(across, full_matrices=False)[2][0] if len(truth_all) > 2 else np.array([0, 0, 1.0])
    long = long - (long @ post) * post
    long /= np.linalg.norm(long)
    basis = np.stack([np.cross(post, long), post, long], axis=1)  # left-right, posterior, cranio-caudal
    views = (("lateral", 1, 2), ("posterior", 0, 2), ("axial", 0, 1))
    axis_names = ("left-right (mm)", "posterior (mm)", "cranio-caudal (mm)")
    fig, axes = plt.subplots(1, 3, figsize=(15, 6), dpi=100, layout="constrained")
    scatter = None
    for ax, (name, a, b) in zip(axes, views):
        for level, (pred, gt, dist) in clouds.items():
            g, p = gt @ basis, pred @ basis
            ax.scatter(g[::4, a], g[::4, b], s=0.3, c="0.65", linewidths=0)
            scatter = ax.scatter(p[::2, a], p[::2, b], s=0.5, c=dist[::2], cmap="viridis", vmin=0, vmax=max_mm,
                                 linewidths=0)
            ax.annotate(level, g.mean(axis=0)[[a, b]], fontsize=8, color="k")
        ax.set_title(name)
        ax.set_xlabel(axis_names[a])
        ax.set_ylabel(axis_names[b])
        ax.set_aspect("equal", adjustable="datalim")
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, shrink=0.7, label="prediction to truth (mm)")
    fig.suptitle(title or "published surfaces (colour: distance to truth) over the truth (grey)")
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
