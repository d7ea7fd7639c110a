"""Draw whole lumbar spines L1-L5 from a :class:`~.ssm.ShapeModel`, check them, write and draw them.

Output frame ("LPS" patient axes): x = patient left, y = posterior, z = cranial, mm, origin at the centroid
of L3's vertices; L3's model frame gives the axes, the other levels are chained from it through the
sampled neighbour poses. That is the input ``usx-stream simulate --spine DIR`` takes as ``L1.ply`` ..
``L5.ply``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..frames import Surface
from ..transforms import apply
from .plausibility import Plausibility, check_spine
from .ssm import ShapeModel, pose_matrix

log = logging.getLogger(__name__)

SIZE_LIMIT_SD = 2.0
"""A spine's size factor stays within this many ``size_sd`` of 1 (about the central 95 % of adults)."""


@dataclass
class Draw:
    """One sampled spine with what it was made of.

    Attributes
    ----------
    spine : dict level -> Surface
        LPS frame as in the module docstring, mm, cranial level first.
    coefficients : dict level -> (K,) ndarray
        Shape mode coefficients, SD units.
    poses : dict (La, Lb) -> (6,) ndarray
        Pose of Lb in La (translation mm, rotation vector rad).
    local : dict level -> (V, 3) ndarray
        Each level in its own model frame, mm.
    to_spine : dict level -> (4, 4) ndarray
        Each level's model frame (the canonical vertebra frame) to the spine's frame: ``spine[lv]`` is
        ``local[lv]`` moved by it.
    size : float
        Spine-wide scale applied to every level and to the translations between them (1: as the model).
    """

    spine: dict[str, Surface]
    coefficients: dict[str, np.ndarray]
    poses: dict[tuple[str, str], np.ndarray]
    local: dict[str, np.ndarray]
    to_spine: dict[str, np.ndarray]
    size: float = 1.0


def build_spine(model: ShapeModel, coefficients: dict[str, np.ndarray],
                poses: dict[tuple[str, str], np.ndarray] | None = None, size: float = 1.0) -> Draw:
    """The spine for given coefficients (SD units), neighbour poses (None: the mean poses) and size (the
    whole spine scaled by it: every level's shape and the translations between levels)."""
    if not size > 0:
        raise ValueError(f"size: must be positive, got {size}")
    names = list(model.levels)
    poses = {k: np.asarray((poses or {}).get(k, v[0]), dtype=np.float64) for k, v in model.poses.items()}
    local = {lv: size * model.levels[lv].shape(coefficients[lv]) for lv in names}
    poses = {k: np.r_[size * v[:3], v[3:]] for k, v in poses.items()}
    anchor = names.index("L3") if "L3" in names else len(names) // 2
    to_anchor = {names[anchor]: np.eye(4)}
    for i in range(anchor + 1, len(names)):
        to_anchor[names[i]] = to_anchor[names[i - 1]] @ pose_matrix(poses[(names[i - 1], names[i])])
    for i in range(anchor - 1, -1, -1):
        to_anchor[names[i]] = to_anchor[names[i + 1]] @ np.linalg.inv(pose_matrix(poses[(names[i], names[i + 1])]))
    shift = np.eye(4)
    shift[:3, 3] = -apply(to_anchor[names[anchor]], local[names[anchor]]).mean(0)
    to_spine = {lv: shift @ to_anchor[lv] for lv in names}
    spine = {lv: Surface(apply(to_spine[lv], local[lv]), model.levels[lv].triangles, frame="LPS", name=lv)
             for lv in names}
    return Draw(spine, {lv: np.asarray(coefficients[lv], dtype=np.float64) for lv in names}, poses, local,
                to_spine, float(size))


def _truncated_normal(rng: np.random.Generator, k: int, sd: float) -> np.ndarray:
    """(k,) standard normal draw conditioned on Euclidean norm at most ``sd``: a uniform direction and a
    radius from the chi distribution truncated at ``sd`` (exact, and no rejection loop, which for small
    ``sd`` and several modes almost never accepts)."""
    from scipy.stats import chi

    if k == 0:
        return np.zeros(0)
    direction = rng.standard_normal(k)
    direction /= max(np.linalg.norm(direction), 1e-300)
    radius = chi.ppf(rng.uniform(0.0, chi.cdf(sd, k)), k)
    return radius * direction


def draw_spine(model: ShapeModel, rng: np.random.Generator, *, sd: float = 2.0) -> Draw:
    """One spine: each level's coefficients and each neighbour pose drawn within ``sd`` (Mahalanobis); when
    the model has a ``size_sd``, a spine-wide size factor within :data:`SIZE_LIMIT_SD` of it, drawn last so
    that the same seed gives the same shape as a model without one, only scaled."""
    coefficients = {lv: _truncated_normal(rng, len(m.variances), sd) for lv, m in model.levels.items()}
    poses = {}
    for key, (mean, cov, _) in model.poses.items():
        poses[key] = mean + np.linalg.cholesky(cov) @ _truncated_normal(rng, 6, sd)
    size = 1.0 + model.size_sd * float(_truncated_normal(rng, 1, SIZE_LIMIT_SD)[0]) if model.size_sd > 0 else 1.0
    return build_spine(model, coefficients, poses, size)


def sample_spine(model: ShapeModel, rng: np.random.Generator | int | None, *, sd: float = 2.0,
                 max_tries: int = 50) -> dict[str, Surface]:
    """A plausible spine: drawn by :func:`draw_spine`, checked by :func:`.plausibility.check_spine`,
    redrawn when a check fails.

    Parameters
    ----------
    model : ShapeModel
    rng : Generator or int or None
        Random source (an int seeds one: the same seed gives the same spine).
    sd : float, keyword-only
        Mahalanobis limit of every draw (shape per level and pose per pair).
    max_tries : int, keyword-only

    Returns
    -------
    dict level -> Surface
        L1..L5, LPS mm, origin at the L3 centroid (module docstring).

    Raises
    ------
    RuntimeError
        When no draw passes in ``max_tries`` (the last failures are named).
    """
    return sample_checked(model, rng, sd=sd, max_tries=max_tries)[0].spine


def sample_checked(model: ShapeModel, rng: np.random.Generator | int | None, *, sd: float = 2.0,
                   max_tries: int = 50) -> tuple[Draw, Plausibility, int]:
    """:func:`sample_spine` with the accepted draw, its check and the number of draws it took."""
    if not sd > 0:
        raise ValueError(f"sd: must be positive, got {sd}")
    rng = np.random.default_rng(rng)
    last = None
    for tries in range(1, max_tries + 1):
        draw = draw_spine(model, rng, sd=sd)
        last = check_spine(model, draw.spine, draw.coefficients, sd=sd, local=draw.local)
        if last.ok:
            return draw, last, tries
        log.info("draw %d rejected: %s", tries, "; ".join(last.failures))
        if tries == 10:  # each check takes seconds: say so before the rest of max_tries
            log.warning("10 draws within %g SD rejected as implausible so far (up to %d are tried); a smaller sd "
                        "draws plausible spines sooner", sd, max_tries)
    raise RuntimeError(f"no plausible spine in {max_tries} draws; last: {'; '.join(last.failures)}")


def write_spine(spine: dict[str, Surface], out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/L1.ply`` .. ``L5.ply`` (binary PLY, mm); returns the paths."""
    from ..io.meshes import write_mesh

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [write_mesh(out / f"{lv}.ply", Surface(s.vertices_mm, s.triangles, frame=s.frame, name=lv))
            for lv, s in spine.items()]


def preview_png(spines: list[dict[str, Surface]], path: str | Path) -> Path:
    """A PNG grid: one row per spine, side view (y-z, anterior left) and top view (x-y) of every level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(spines), 2, figsize=(7, 3.2 * len(spines)), squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 1, 5))
    for row, spine in zip(axes, spines):
        for k, (lv, s) in enumerate(spine.items()):
            v = s.vertices_mm[:: max(1, len(s.vertices_mm) // 600)]
            row[0].scatter(v[:, 1], v[:, 2], s=0.5, color=colours[k % 5], label=lv)
            row[1].scatter(v[:, 0], v[:, 1], s=0.5, color=colours[k % 5])
        row[0].set(xlabel="y posterior (mm)", ylabel="z cranial (mm)", aspect="equal", title="side")
        row[1].set(xlabel="x left (mm)", ylabel="y posterior (mm)", aspect="equal", title="top")
        row[0].legend(markerscale=8, fontsize=6, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
