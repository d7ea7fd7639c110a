"""Statistical shape model of the lumbar spine L1-L5 built from real CT surfaces, and its ``ssm.npz`` file.

Per level: dense correspondence (:mod:`.correspondence`), generalised Procrustes alignment (rigid, no
scaling: size is part of the shape), PCA keeping the leading modes up to a fraction of the variance. Per
pair of neighbouring levels: the rigid pose of L(k+1) in L(k)'s model frame from every training subject
whose levels are in place, as a mean and covariance of (translation mm, rotation vector rad).

Split by subject: the ``held_out`` subjects (default Verse631, all its levels) are registered but kept out
of the PCA and the poses; each held-out vertebra is projected onto the modes and the surface distance of
the reconstruction to the real surface (mm) is the model's generalisation error.

``ssm.npz`` keys (``{L}`` = L1..L5, every array float64 unless said, mm, model frame of the level: x = patient
left, y = posterior, z = cranial, origin near the body centre):

- ``levels``: (5,) str; ``meta``: JSON str (units, frames, held-out subjects, template per level, seed,
  variance kept, skipped meshes, pose floor; ``size_sd`` when the build was given one);
- ``{L}_mean`` (V, 3); ``{L}_modes`` (K, V, 3) unit-norm modes; ``{L}_variances`` (K,) mm^2;
  ``{L}_triangles`` (T, 3) int64; ``{L}_body`` (B,) int64 vertex indices of the vertebral body;
- ``{L}_instances`` (n,) str training vertebrae; ``{L}_residual_mm`` (n,) registration residuals;
  ``{L}_coefficients`` (n, K) training shapes in SD units; ``{L}_dims_mm`` (n, 3) body width/depth/height;
- ``{L}_heldout_instances`` (h,) str; ``{L}_heldout_residual_mm``, ``{L}_heldout_error_mm`` (h,) error of
  the reconstruction from the modes; ``{L}_heldout_mean_error_mm`` (h,) error of the mean shape alone;
- ``pose_{La}_{Lb}_mean`` (6,): translation (mm) and rotation vector (rad) of Lb's model frame in La's;
  ``pose_{La}_{Lb}_cov`` (6, 6) (sample covariance plus the documented floor); ``pose_{La}_{Lb}_n`` int.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..errors import InputError
from ..frames import LEVELS, Surface
from ..transforms import apply
from .correspondence import canonical_template, correspond, kernel_basis
from .geometry import surface_distance_mm
from .sources import Instance, collect_instances

log = logging.getLogger(__name__)

FORMAT = "usx-stream-ssm/1"
# Floor added to each pose covariance: (1 mm)^2 per translation axis, (2 deg)^2 per rotation axis. Few
# spines are in place (3-5 per pair), so the sample covariance alone is rank-deficient.
POSE_FLOOR = np.diag([1.0, 1.0, 1.0] + [np.deg2rad(2.0) ** 2] * 3)

SIZE_SD_ADULT = 0.07
"""Spine-wide size spread a build can add to its draws (``shape-model build --size-sd``). Panjabi et al. (Spine
1992, 17(3):299-306) report lumbar endplate widths with SDs of 3-4 mm on means of 40-50 mm (about 8 %). The
draws of a model of a few subjects vary far less: they stay within ``sim.spine_spec.SSM_SAMPLE_SD`` of the
mean (larger shape-mode draws are implausible), and 60 sessions drawn from the model of eight subjects span
body widths of only 1-4 mm per level at L1-L4 (5th-95th percentile). A uniform scale of a whole spine is always a
plausible shape, so it carries the missing spread: 7 % leaves the modes' own few per cent to make ~8 %."""


@dataclass
class LevelModel:
    """PCA shape model of one level (model frame: x left, y posterior, z cranial, mm).

    Attributes
    ----------
    mean : (V, 3) ndarray
    modes : (K, V, 3) ndarray
        Orthonormal (as flattened vectors).
    variances : (K,) ndarray
        mm^2 per mode.
    triangles : (T, 3) int ndarray
    body : (B,) int ndarray
        Vertex indices of the vertebral body.
    """

    mean: np.ndarray
    modes: np.ndarray
    variances: np.ndarray
    triangles: np.ndarray
    body: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def shape(self, b: np.ndarray) -> np.ndarray:
        """Vertices (V, 3) mm for mode coefficients ``b`` (K,) in SD units."""
        b = np.asarray(b, dtype=np.float64)
        return self.mean + np.tensordot(b * np.sqrt(self.variances), self.modes, axes=1)

    def project(self, vertices: np.ndarray) -> np.ndarray:
        """Coefficients (K,) in SD units of corresponded vertices (V, 3) already in the model frame."""
        d = (np.asarray(vertices) - self.mean).ravel()
        return (self.modes.reshape(len(self.variances), -1) @ d) / np.sqrt(self.variances)


@dataclass
class ShapeModel:
    """The spine model: one :class:`LevelModel` per level and neighbour poses ``(La, Lb) -> (mean, cov, n)``."""

    levels: dict[str, LevelModel]
    poses: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, int]]
    meta: dict

    @property
    def size_sd(self) -> float:
        """SD of the spine-wide size factor drawn with each spine (0: size only as the modes carry it)."""
        return float(self.meta.get("size_sd", 0.0))


def kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(4, 4) rigid transform minimising ``sum |R src + t - dst|^2`` over corresponding rows (N, 3)."""
    cs, cd = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, cd - r @ cs
    return m


def _body_wall_mm(level: str) -> float:
    """Posterior wall of the vertebral body in the canonical frame (y, mm), from the reference spine."""
    from ..datasets.mesh_alignment import _mean_spine

    ref = _mean_spine(1.5).vertebrae[level]
    return float(apply(np.linalg.inv(ref.frame), ref.body_mesh.vertices_mm)[:, 1].max())


def body_dimensions(vertices: np.ndarray, body: np.ndarray) -> np.ndarray:
    """(3,) body width (x), depth (y), height (z), mm, in the level's model frame.

    Robust extents (2nd to 98th percentile of the vertex coordinates): depth over all body vertices;
    width and height over those more than 5 mm anterior of the body's posterior wall, which leaves out
    the roots of the pedicles and (at L5) of the transverse processes.
    """
    b = np.asarray(vertices)[body]
    front = b[b[:, 1] < b[:, 1].max() - 5.0]
    ext = lambda p, k: float(np.percentile(p[:, k], 98) - np.percentile(p[:, k], 2))  # noqa: E731
    return np.array([ext(front, 0), ext(b, 1), ext(front, 2)])


def _procrustes(shapes: np.ndarray, reference: np.ndarray, iterations: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes (rigid) of ``shapes`` (n, V, 3); the mean is kept on ``reference`` (V, 3).

    Returns the aligned shapes (n, V, 3) and the per-shape transforms (n, 4, 4) into the model frame.
    """
    mean = reference
    for _ in range(iterations):
        mats = np.stack([kabsch(s, mean) for s in shapes])
        aligned = np.stack([apply(m, s) for m, s in zip(mats, shapes)])
        mean = apply(kabsch(aligned.mean(0), reference), aligned.mean(0))
    mats = np.stack([kabsch(s, mean) for s in shapes])
    return np.stack([apply(m, s) for m, s in zip(mats, shapes)]), mats


def _pca(aligned: np.ndarray, variance_kept: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(aligned)
    mean = aligned.mean(0)
    d = (aligned - mean).reshape(n, -1)
    if n < 2:
        return mean, np.zeros((0,) + mean.shape), np.zeros(0)
    _, s, vt = np.linalg.svd(d, full_matrices=False)
    var = s ** 2 / (n - 1)
    var = var[var > 1e-9 * max(var.max(), 1e-30)]
    k = int(np.searchsorted(np.cumsum(var) / var.sum(), variance_kept - 1e-12) + 1)
    k = min(k, len(var))
    return mean, vt[:k].reshape(k, *mean.shape), var[:k]


def _pose_vector(m: np.ndarray) -> np.ndarray:
    return np.concatenate([m[:3, 3], Rotation.from_matrix(m[:3, :3]).as_rotvec()])


def pose_matrix(v: np.ndarray) -> np.ndarray:
    """(4, 4) rigid transform from a pose vector (6,): translation mm, rotation vector rad."""
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(np.asarray(v[3:], dtype=np.float64)).as_matrix()
    m[:3, 3] = v[:3]
    return m


def build_model(data_dir: str | Path, *, held_out: tuple[str, ...] = ("Verse631",), template_subject: str = "s0004",
                subjects: set[str] | None = None, levels: tuple[str, ...] = LEVELS, n_triangles: int = 2400,
                n_points: int = 2000, variance_kept: float = 0.95, seed: int = 0,
                labelmaps: dict[str, str | Path] | None = None, size_sd: float = 0.0) -> ShapeModel:
    """Build the spine shape model from the real vertebrae under ``data_dir``.

    Parameters
    ----------
    data_dir : str or Path
        The ``vertebrae`` reference folder (see :func:`.sources.collect_instances`).
    held_out : tuple of str, keyword-only
        Subjects kept out of the model and used to measure its reconstruction error.
    template_subject : str, keyword-only
        Subject whose vertebra of each level is the template (default s0004: a real patient with all five
        levels, in LPS); the first instance of the level when absent.
    subjects : set of str or None, keyword-only
        Use only these subjects (held-out and template included when listed); None: all.
    levels : tuple of str, keyword-only
    n_triangles, n_points : int, keyword-only
        Template size and points sampled per instance for the registration.
    variance_kept : float, keyword-only
        Fraction of the shape variance the kept modes explain.
    seed : int, keyword-only
        All sampling is seeded from it: the same seed gives the same arrays.
    labelmaps : dict of str to path, or None, keyword-only
        More subjects as TotalSegmentator label maps from outside ``data_dir`` (subject -> file).
    size_sd : float, keyword-only
        SD of a spine-wide size factor drawn with every sampled spine (:data:`SIZE_SD_ADULT` and why);
        0 = none (the model's draws vary in size only as far as its few subjects did).
    """
    if not 0 < variance_kept <= 1:
        raise ValueError(f"variance_kept: expected (0, 1], got {variance_kept}")
    if not 0 <= size_sd < 0.25:
        raise ValueError(f"size_sd: expected [0, 0.25), got {size_sd}")
    instances = collect_instances(data_dir, subjects=subjects, levels=levels, labelmaps=labelmaps)
    found = sorted({i.subject for i in instances})
    if not found:
        raise ValueError(f"{data_dir}: no real vertebra found (expected the reference folder's verse_L1/, "
                         f"verse_spines/, totalsegmentator/, ...; see usx_stream.shape.sources)")
    unknown = [s for s in held_out if s not in found]
    if unknown:  # a misspelt name would silently train on the subject meant to be held out
        raise ValueError(f"held-out subject {', '.join(unknown)} not found under {data_dir} (its subjects: "
                         f"{', '.join(found)})")
    out: dict[str, LevelModel] = {}
    frames: dict[tuple[str, str], np.ndarray] = {}  # (subject, level) -> model frame to source frame
    meta = {"format": FORMAT, "units": "mm", "held_out": list(held_out), "seed": seed,
            "variance_kept": variance_kept, "templates": {}, "skipped": [], "pose_floor_diag": POSE_FLOOR.diagonal().tolist(),
            "frame": "per level: x patient left, y posterior, z cranial (canonical vertebra frame), mm"}
    if labelmaps:  # provenance; absent otherwise, so a build from data_dir alone stays as it was
        meta["labelmaps"] = {k: Path(v).name for k, v in labelmaps.items()}
    if size_sd > 0:  # likewise
        meta["size_sd"] = size_sd
    for level in levels:
        mine = [i for i in instances if i.level == level]
        if not mine:
            raise ValueError(f"level {level}: no vertebra under {data_dir}")
        out[level] = _build_level(level, mine, held_out=held_out, template_subject=template_subject,
                                  n_triangles=n_triangles, n_points=n_points, variance_kept=variance_kept,
                                  seed=seed, meta=meta, frames=frames)
    return ShapeModel(out, _poses(frames, levels), meta)


def _build_level(level: str, mine: list, *, held_out, template_subject, n_triangles, n_points, variance_kept,
                 seed, meta: dict, frames: dict) -> LevelModel:
    """One level of :func:`build_model`: template, dense correspondence of every instance, Procrustes, PCA.

    Names of the template and of instances that could not be aligned go into ``meta``; the pose of every
    training vertebra that sits in its spine goes into ``frames`` ((subject, level) -> model to source frame)."""
    from ..datasets.mesh_alignment import AlignmentError

    tpl_inst = next((i for i in mine if i.subject == template_subject), mine[0])
    tpl = canonical_template(tpl_inst.mesh, level, frame=tpl_inst.frame, n_triangles=n_triangles, seed=seed)
    meta["templates"][level] = tpl_inst.name
    basis = kernel_basis(tpl.vertices_mm, beta=1.0)
    done: list[tuple[Instance, object]] = []
    for k, inst in enumerate(mine):
        try:
            done.append((inst, correspond(tpl, inst.mesh, frame=inst.frame, n_points=n_points,
                                          seed=seed + 1000 * LEVELS.index(level) + k, basis=basis)))
        except AlignmentError as e:
            log.warning("%s: skipped (%s)", inst.name, e)
            meta["skipped"].append(inst.name)
    train = [(i, c) for i, c in done if i.subject not in held_out]
    test = [(i, c) for i, c in done if i.subject in held_out]
    if not train:
        raise ValueError(f"level {level}: no training vertebra left after holding out {held_out}")
    aligned, to_model = _procrustes(np.stack([c.vertices_mm for _, c in train]), tpl.vertices_mm)
    mean, modes, var = _pca(aligned, variance_kept)
    body = np.flatnonzero(mean[:, 1] < _body_wall_mm(level))
    lm = LevelModel(mean, modes, var, np.asarray(tpl.triangles, dtype=np.int64), body)
    for (inst, c), m in zip(train, to_model):
        if inst.in_place:  # model frame -> source frame
            frames[(inst.subject, level)] = np.linalg.inv(c.instance_to_canonical) @ np.linalg.inv(m)
    lm.extra = {
        "instances": np.array([i.name for i, _ in train]),
        "residual_mm": np.array([c.residual_mm for _, c in train]),
        "coefficients": np.stack([lm.project(a) for a in aligned]) if len(var) else np.zeros((len(train), 0)),
        "dims_mm": np.stack([body_dimensions(a, body) for a in aligned]),
        **_held_out_errors(lm, test, seed),
    }
    log.info("%s: %d training shapes, %d modes (%.0f%% variance), residual %.2f mm", level, len(train),
             len(var), 100 * variance_kept, lm.extra["residual_mm"].mean())
    return lm


def _held_out_errors(lm: LevelModel, test: list, seed: int) -> dict[str, np.ndarray]:
    names, res, err, err0 = [], [], [], []
    for inst, c in test:
        to_model = kabsch(c.vertices_mm, lm.mean)
        x = apply(to_model, c.vertices_mm)
        recon = lm.shape(lm.project(x)) if len(lm.variances) else lm.mean
        real = apply(to_model @ c.instance_to_canonical, inst.mesh.vertices_mm)
        names.append(inst.name)
        res.append(c.residual_mm)
        err.append(surface_distance_mm(recon, lm.triangles, real, inst.mesh.triangles, seed=seed))
        best = kabsch(lm.mean, x)  # mean shape alone, rigidly placed on the instance
        err0.append(surface_distance_mm(apply(best, lm.mean), lm.triangles, real, inst.mesh.triangles, seed=seed))
    return {"heldout_instances": np.array(names, dtype=str), "heldout_residual_mm": np.array(res),
            "heldout_error_mm": np.array(err), "heldout_mean_error_mm": np.array(err0)}


def _poses(frames: dict[tuple[str, str], np.ndarray], levels: tuple[str, ...]):
    poses = {}
    subjects = sorted({s for s, _ in frames})
    for a, b in zip(levels[:-1], levels[1:]):
        vecs = [_pose_vector(np.linalg.inv(frames[(s, a)]) @ frames[(s, b)])
                for s in subjects if (s, a) in frames and (s, b) in frames]
        if not vecs:
            raise ValueError(f"pose {a}-{b}: no training spine has both levels in place")
        v = np.array(vecs)
        cov = (np.cov(v.T) if len(v) > 1 else np.zeros((6, 6))) + POSE_FLOOR
        poses[(a, b)] = (v.mean(0), cov, len(v))
    return poses


def save_model(model: ShapeModel, path: str | Path) -> Path:
    """Write ``model`` as one ``.npz`` (keys in the module docstring); returns the path."""
    arrays: dict[str, np.ndarray] = {"levels": np.array(list(model.levels)), "meta": np.array(json.dumps(model.meta))}
    for lv, m in model.levels.items():
        arrays.update({f"{lv}_mean": m.mean, f"{lv}_modes": m.modes, f"{lv}_variances": m.variances,
                       f"{lv}_triangles": m.triangles, f"{lv}_body": m.body})
        arrays.update({f"{lv}_{k}": v for k, v in m.extra.items()})
    for (a, b), (mean, cov, n) in model.poses.items():
        arrays.update({f"pose_{a}_{b}_mean": mean, f"pose_{a}_{b}_cov": cov, f"pose_{a}_{b}_n": np.array(n)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_model(path: str | Path) -> ShapeModel:
    """Read a model written by :func:`save_model`.

    Raises
    ------
    InputError
        When the file is not a shape model of this format (or not readable as one).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, FileNotFoundError):
            raise
        # numpy takes any file without the zip or .npy magic for a pickle, and says so
        reason = "not an .npz archive" if "pickled" in str(e) else f"{type(e).__name__}: {e}"
        raise InputError(f"{path}: not a readable shape model ({reason})") from None
    if "meta" not in data or json.loads(str(data["meta"])).get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} shape model")
    levels = {}
    for lv in (str(x) for x in data["levels"]):
        extra = {k[len(lv) + 1:]: v for k, v in data.items() if k.startswith(f"{lv}_")}
        core = {k: extra.pop(k) for k in ("mean", "modes", "variances", "triangles", "body")}
        levels[lv] = LevelModel(**core, extra=extra)
    names = list(levels)
    poses = {(a, b): (data[f"pose_{a}_{b}_mean"], data[f"pose_{a}_{b}_cov"], int(data[f"pose_{a}_{b}_n"]))
             for a, b in zip(names[:-1], names[1:])}
    return ShapeModel(levels, poses, json.loads(str(data["meta"])))


def level_surface(model: ShapeModel, level: str, b: np.ndarray | None = None) -> Surface:
    """The level's shape for coefficients ``b`` (SD units; None: the mean) in its model frame, mm."""
    m = model.levels[level]
    v = m.mean if b is None else m.shape(b)
    return Surface(v, m.triangles, frame=f"{level}_model", name=level)
