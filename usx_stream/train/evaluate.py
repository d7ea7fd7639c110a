"""Evaluate completion models on a paired-data file: every metric of DESIGN §3, per level and region,
and a Wilcoxon signed-rank comparison of two models on the same vertebrae.

Per sample the completion (``fine``, deterministic) is compared with the ground truth by
:func:`usx_stream.metrics.evaluate_completion` in the unit frame (normalised figures) and in mm (the unit
frame is a similarity of the vertebra frame: ``mm_per_unit`` of the file).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..frames import LEVELS
from ..metrics import MM_KEYS, NORMALISED_KEYS, REGIONS, evaluate_completion
from .data import PairedArrays

log = logging.getLogger(__name__)

METRICS = NORMALISED_KEYS + MM_KEYS
LOWER_IS_BETTER = {"cd_p": True, "cd_t": True, "f1": False, "assd_mm": True, "hd95_mm": True,
                   "fscore_1mm": False, "fscore_2mm": False}
REPORT_SCALE = {"cd_t": 1e4}
"""Summaries report CD_t ×10⁴ (key ``cd_t_x1e4``), as the paper does."""


@dataclass
class ModelEvaluation:
    """Completions and metrics of one model on one file.

    Attributes
    ----------
    name : str
    predictions : (N, P, 3) float32 ndarray
        Completions, unit frame.
    values : dict[str, dict[str, (N,) ndarray]]
        ``values[region][metric]`` per sample (NaN where a region is empty).
    """

    name: str
    predictions: np.ndarray
    values: dict[str, dict[str, np.ndarray]]


def load_model(spec: str):
    """``(net, ModelConfig, name)`` for ``"default"`` (shipped multimodal), ``"us-only"`` (shipped US-only) or a path."""
    from ..completion.checkpoint import load_checkpoint, load_default

    if spec == "default":
        net, cfg, _ = load_default("multimodal")
        return net, cfg, "multimodal (default)"
    if spec in ("us-only", "us_only"):
        net, cfg, _ = load_default("us_only")
        return net, cfg, "us_only (default)"
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--model: not a checkpoint file nor 'default'/'us-only': {spec!r}")
    net, cfg, _ = load_checkpoint(path)
    return net, cfg, f"{'multimodal' if cfg.multimodal else 'us_only'} ({path.name})"


def evaluate_model(net, model_cfg, arrays: PairedArrays, *, name: str, batch_size: int = 16,
                   fit_body: bool = False) -> ModelEvaluation:
    """Complete every sample of ``arrays`` with ``net`` and compute all metrics per region.

    ``fit_body``: a multimodal model's completions go through the node's X-ray body fit
    (:mod:`usx_stream.completion.body_fit`) with the sample's labelmap points, as the node does."""
    from .network_io import frame_shift, model_inputs, predict

    partial, labelmap = model_inputs(arrays, model_cfg, name)
    # Back to the file's frame (a translation: the unit-frame metrics do not change).
    fine = predict(net, partial, labelmap, batch_size=batch_size).numpy() + frame_shift(arrays, model_cfg)[:, None]
    if fit_body and model_cfg.multimodal:
        from ..completion.body_fit import fit_body_to_silhouette

        lm = labelmap.numpy()
        fine = np.stack([fit_body_to_silhouette(f, l)[0] for f, l in zip(fine, lm)]).astype(np.float32)
        name = f"{name} + X-ray body fit"
    values = {r: {m: np.full(len(arrays), np.nan) for m in METRICS} for r in REGIONS}
    for i in range(len(arrays)):
        res = evaluate_completion(fine[i], arrays.complete[i], mm_per_unit=arrays.mm_per_unit)
        for region in REGIONS:
            for metric in METRICS:
                values[region][metric][i] = res[region][metric]
    return ModelEvaluation(name, fine, values)


def _stats(x: np.ndarray, metric: str) -> dict[str, float]:
    x = x[np.isfinite(x)] * REPORT_SCALE.get(metric, 1.0)
    if len(x) == 0:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "std": float("nan")}
    return {"n": int(len(x)), "mean": float(x.mean()), "median": float(np.median(x)), "std": float(x.std())}


def _key(metric: str) -> str:
    return f"{metric}_x1e4" if metric in REPORT_SCALE else metric


def summarise(ev: ModelEvaluation, labels: np.ndarray) -> dict:
    """``{"overall": {region: {metric: stats}}, "per_level": {level: {region: {metric: stats}}}}``."""
    overall = {r: {_key(m): _stats(ev.values[r][m], m) for m in METRICS} for r in REGIONS}
    per_level = {}
    for k, level in enumerate(LEVELS):
        sel = labels == k
        if np.any(sel):
            per_level[level] = {r: {_key(m): _stats(ev.values[r][m][sel], m) for m in METRICS} for r in REGIONS}
    return {"name": ev.name, "overall": overall, "per_level": per_level}


def wilcoxon_compare(a: ModelEvaluation, b: ModelEvaluation, labels: np.ndarray) -> dict:
    """Wilcoxon signed-rank tests of ``a`` against ``b`` on the same samples, every metric and region.

    For each test: ``p_two_sided``; ``p_a_better`` (one-sided: ``a`` lower for distances, higher for
    F-scores); ``median_diff`` (a - b, reported scale); ``n`` pairs; overall and per level.
    """
    from scipy.stats import wilcoxon

    def test(x: np.ndarray, y: np.ndarray, metric: str) -> dict:
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        scale = REPORT_SCALE.get(metric, 1.0)
        if len(x) < 2 or np.all(x == y):
            return {"n": int(len(x)), "p_two_sided": float("nan"), "p_a_better": float("nan"),
                    "median_diff": float(np.median(x - y) * scale) if len(x) else float("nan")}
        alt = "less" if LOWER_IS_BETTER[metric] else "greater"
        return {"n": int(len(x)), "statistic": float(wilcoxon(x, y).statistic),
                "p_two_sided": float(wilcoxon(x, y).pvalue),
                "p_a_better": float(wilcoxon(x, y, alternative=alt).pvalue),
                "median_diff": float(np.median(x - y) * scale)}

    out = {"a": a.name, "b": b.name, "overall": {}, "per_level": {}}
    for r in REGIONS:
        out["overall"][r] = {_key(m): test(a.values[r][m], b.values[r][m], m) for m in METRICS}
    for k, level in enumerate(LEVELS):
        sel = labels == k
        if np.count_nonzero(sel) >= 2:
            out["per_level"][level] = {r: {_key(m): test(a.values[r][m][sel], b.values[r][m][sel], m)
                                           for m in METRICS} for r in REGIONS}
    return out
