"""PNG report of an evaluation: per-level box plots (CD_t ×10⁴, whole / body / arch; ASSD in mm) for one or
two models, and example completions in sagittal and axial projections. matplotlib with the Agg backend
(headless).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..frames import LEVELS
from ..metrics import REGIONS
from .data import PairedArrays
from .evaluate import ModelEvaluation

COLOURS = ("#2b8cbe", "#e34a33")


def _boxes(ax, evals: Sequence[ModelEvaluation], labels: np.ndarray, region: str, metric: str, scale: float) -> None:
    width = 0.8 / len(evals)
    for m, ev in enumerate(evals):
        data, pos = [], []
        for k in range(len(LEVELS)):
            x = ev.values[region][metric][labels == k] * scale
            data.append(x[np.isfinite(x)])
            pos.append(k + (m - (len(evals) - 1) / 2) * width)
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
        for box in bp["boxes"]:
            box.set_facecolor(COLOURS[m % len(COLOURS)])
            box.set_alpha(0.7)
    ax.set_xticks(range(len(LEVELS)), LEVELS)
    ax.set_title(f"{region}: {metric}{' ×1e4' if scale != 1 else ''}")
    ax.grid(axis="y", alpha=0.3)


def _examples(axes, arrays: PairedArrays, evals: Sequence[ModelEvaluation], indices: Sequence[int]) -> None:
    for col, i in enumerate(indices):
        for row, (a, b, name) in enumerate(((1, 2, "sagittal (y posterior, z cranial)"), (0, 1, "axial (x, y)"))):
            ax = axes[row][col]
            gt = arrays.complete[i]
            ax.scatter(gt[:, a], gt[:, b], s=0.3, c="0.8", label="ground truth")
            for m, ev in enumerate(evals):
                p = ev.predictions[i]
                ax.scatter(p[:, a], p[:, b], s=0.3, c=COLOURS[m % len(COLOURS)], alpha=0.6, label=ev.name)
            ax.scatter(arrays.partial[i][:, a], arrays.partial[i][:, b], s=0.3, c="k", label="US partial")
            if arrays.labelmap.shape[1]:
                ax.scatter(arrays.labelmap[i][:, a], arrays.labelmap[i][:, b], s=0.3, c="#31a354", label="X-ray labelmap")
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{arrays.names[i]} {name}", fontsize=7)
    axes[0][0].legend(fontsize=6, markerscale=10, loc="lower left")


def write_report(path: str | Path, arrays: PairedArrays, evals: Sequence[ModelEvaluation], *,
                 n_examples: int = 3, title: str = "") -> Path:
    """Write the PNG report of ``evals`` (one or two models) on ``arrays``.

    Parameters
    ----------
    path : path
        Output PNG.
    arrays : PairedArrays
        The evaluated file.
    evals : sequence of ModelEvaluation
    n_examples : int, keyword-only
        Example completions shown (spread over the file).
    title : str, keyword-only
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not evals:
        raise ValueError("evals: at least one model evaluation is needed")
    n_examples = max(1, min(n_examples, len(arrays)))
    fig = plt.figure(figsize=(4.2 * max(4, n_examples), 11.5))
    grid = fig.add_gridspec(3, max(4, n_examples))
    labels = arrays.labels
    for c, region in enumerate(REGIONS):
        _boxes(fig.add_subplot(grid[0, c]), evals, labels, region, "cd_t", 1e4)
    _boxes(fig.add_subplot(grid[0, 3]), evals, labels, "whole", "assd_mm", 1.0)
    indices = np.linspace(0, len(arrays) - 1, n_examples).round().astype(int)
    axes = [[fig.add_subplot(grid[r, c]) for c in range(n_examples)] for r in (1, 2)]
    _examples(axes, arrays, evals, indices)
    names = " vs ".join(f"{ev.name} ({'blue' if m == 0 else 'red'})" for m, ev in enumerate(evals))
    fig.suptitle(title or names, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
