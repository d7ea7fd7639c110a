"""A picture to check a CT segmentation by eye: one sagittal and one axial slice per lumbar level, labels over the CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .ct_segment import LUMBAR, TOTALSEGMENTATOR_CODES, CtSegmentation

_COLOURS = {31: "tab:pink", 30: "tab:brown", 29: "tab:purple", 28: "tab:red", 27: "tab:green"}


def preview_png(ct: np.ndarray, seg: CtSegmentation, path: str | Path) -> Path:
    """Write ``path``: the mid-sagittal slice through the seeds, then an axial slice through each body seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    seeds = {lv: np.rint(f.seed_ijk).astype(int) for lv, f in seg.fits.items()}
    levels = [lv for lv in LUMBAR if np.any(seg.labels == TOTALSEGMENTATOR_CODES[lv][0])]
    fig, axes = plt.subplots(1, 1 + len(levels), figsize=(4 + 3 * len(levels), 5.5),
                             gridspec_kw={"width_ratios": [1.6] + [1] * len(levels)})
    axes = np.atleast_1d(axes)
    cmap = ListedColormap([_COLOURS[c] for c in sorted(_COLOURS)])
    i = int(np.median([s[0] for s in seeds.values()]))
    ks = [s[2] for s in seeds.values()]
    js = [s[1] for s in seeds.values()]
    _show(axes[0], ct[i], seg.labels[i], cmap)
    axes[0].set_xlim(min(js) - 70, max(js) + 40)
    axes[0].set_ylim(min(ks) - 20, max(ks) + 20)
    axes[0].set_title(f"sagittal i = {i}")
    for lv in seeds:
        axes[0].annotate(lv, (seeds[lv][1], seeds[lv][2]), color="cyan", fontsize=7)
    for ax, lv in zip(axes[1:], levels):
        s = seeds[lv]
        _show(ax, ct[:, :, s[2]], seg.labels[:, :, s[2]], cmap)
        ax.set_xlim(s[0] - 60, s[0] + 60)
        ax.set_ylim(s[1] - 70, s[1] + 40)
        ax.set_title(f"{lv}: axial k = {s[2]}")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def _show(ax, image: np.ndarray, labels: np.ndarray, cmap) -> None:
    ax.imshow(np.clip(image.T, -200, 1000), cmap="gray", origin="lower")
    shown = np.ma.masked_where(labels.T == 0, labels.T)
    ax.imshow(shown, cmap=cmap, vmin=26.5, vmax=31.5, alpha=0.45, origin="lower", interpolation="nearest")
