"""Paired completion data as in US-X Complete: partial US cloud + X-ray labelmap points + ground truth.

One sample per vertebra, all three clouds in the network's unit frame (:mod:`usx_stream.completion.normalize`:
axes of the canonical vertebra frame, x = left-right, y = posterior, z = cranial; origin at the middle of
the bounding box of the partial and labelmap points; 50 mm per unit):

- ``incomplete_pcds``: what an ultrasound sweep sees (:mod:`usx_stream.sim.visibility`: ray casting from
  posterior probe positions over the whole spine, neighbours occluding, incidence filter, shadowing,
  optional beam noise), resampled to a fixed count;
- ``labelmaps``: the vertebral body's lateral X-ray labelmap, cropped per vertebra and back-projected
  onto the vertebra's mid-sagittal plane (:mod:`usx_stream.sim.labelmap_points` renders it, the node's
  :func:`usx_stream.xray.backproject.backproject_to_plane` back-projects it);
- ``complete_pcds``: points sampled uniformly by area on the whole vertebra mesh.

Sources: procedural spines (:func:`usx_stream.sim.anatomy.make_spine`) and user meshes aligned to the
canonical frame (:mod:`usx_stream.datasets.mesh_alignment`). The HDF5 layout lives in
:mod:`usx_stream.train.data`; :func:`generate` runs the sources in parallel and writes the file.
"""

from __future__ import annotations

import functools
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..frames import LEVELS, Surface
from ..transforms import apply
from ..completion.normalize import SCALE_MM, canonical_center, normalize
from ..xray.backproject import backproject_to_plane
from ..xray.geometry import CArmGeometry
from ..sim.ct_labelmaps import LABEL_SETS, LABELMAP_SUFFIXES, choose_label_set, label_meshes, read_labels
from ..sim.labelmap_points import render_body_labelmap
from .shards import shard_attrs, shard_bounds
from .mesh_alignment import (AlignmentError, CanonicalVertebra, align_vertebra, canonical_user_vertebra,
                             sample_surface)
from ..sim.visibility import SweepConfig, simulate_us_visibility

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PairConfig:
    """How one paired sample is made.

    Attributes
    ----------
    partial_points, labelmap_points, complete_points : int
        Fixed point counts of the three clouds.
    min_partial_points : int
        A vertebra the sweep sees at fewer distinct points than this is skipped (and counted).
    sweep : SweepConfig
        Ultrasound sweep and echo model.
    source_to_target_mm, source_to_detector_mm : (float, float)
        Ranges (uniform) of the C-arm geometry of the lateral X-ray.
    pixel_spacing_mm : float
        X-ray detector pixel size.
    target_jitter_mm : float
        Standard deviation of the offset of the X-ray central ray from the spine centre.
    mesh_spacing_mm : float
        Grid spacing of the procedural meshes (1.5 mm: ~50k triangles per vertebra, ~0.5 s each).
    variation : float
        Shape variation of the procedural spines (1 = published spread).
    """

    partial_points: int = 1024
    labelmap_points: int = 256
    complete_points: int = 2048
    min_partial_points: int = 64
    sweep: SweepConfig = field(default_factory=SweepConfig)
    source_to_target_mm: tuple[float, float] = (600.0, 800.0)
    source_to_detector_mm: tuple[float, float] = (1000.0, 1200.0)
    pixel_spacing_mm: float = 0.3
    target_jitter_mm: float = 20.0
    mesh_spacing_mm: float = 1.5
    variation: float = 1.0

    def __post_init__(self) -> None:
        for name in ("partial_points", "labelmap_points", "complete_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"PairConfig.{name}: must be >= 1, got {getattr(self, name)!r}")


@dataclass
class PairedSample:
    """One vertebra's training pair, model frame (unit scale), float32.

    Attributes
    ----------
    level : str
    partial : (P, 3) ndarray
    labelmap : (Q, 3) ndarray
    complete : (G, 3) ndarray
    name : str
        Where it came from (``"spine00012/L3"`` or a file name).
    center_mm : (3,) ndarray
        Origin of the model frame in the canonical vertebra frame, mm (``completion.normalize``).
    """

    level: str
    partial: np.ndarray
    labelmap: np.ndarray
    complete: np.ndarray
    name: str
    center_mm: np.ndarray


def resample(points_mm: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``n`` rows of ``points_mm`` in furthest-point order (as inference prepares its inputs).

    The rows are shuffled first so that the fixed first point of the furthest-point order is random.
    """
    from ..completion.normalize import resample as fps_resample

    if len(points_mm) == 0:
        raise ValueError("points: cannot resample an empty cloud")
    shuffled = points_mm[rng.permutation(len(points_mm))]
    return fps_resample(shuffled, n, seed=int(rng.integers(2**31))).astype(np.float64)


def _to_vertebra(points_mm: np.ndarray, vertebra_to_patient: np.ndarray) -> np.ndarray:
    """Patient-frame points to the canonical vertebra frame (mm)."""
    return apply(np.linalg.inv(vertebra_to_patient), points_mm)


def _xray_view(vertebrae: list[CanonicalVertebra], cfg: PairConfig, rng: np.random.Generator) -> CArmGeometry:
    """A lateral view centred near the spine, from a random side, with random C-arm distances."""
    origins = np.array([v.vertebra_to_patient[:3, 3] for v in vertebrae])
    lateral = np.mean([v.vertebra_to_patient[:3, 0] for v in vertebrae], axis=0)
    cranial = np.mean([v.vertebra_to_patient[:3, 2] for v in vertebrae], axis=0)
    target = origins.mean(0) + rng.normal(0.0, cfg.target_jitter_mm, size=3)
    side = rng.choice([-1.0, 1.0])
    sid = rng.uniform(*cfg.source_to_detector_mm)
    sod = min(rng.uniform(*cfg.source_to_target_mm), 0.9 * sid)
    return CArmGeometry.lateral(target, lateral=side * lateral, cranial=cranial, source_to_target_mm=sod,
                                source_to_detector_mm=sid, pixel_spacing_mm=cfg.pixel_spacing_mm,
                                shape=(4096, 4096))


def make_pairs(vertebrae: list[CanonicalVertebra], *, cfg: PairConfig, rng: np.random.Generator,
               name: str, occluders: Sequence[Surface] = ()) -> tuple[list[PairedSample], list[str]]:
    """Paired samples for vertebrae that share one patient frame (one spine, or a single vertebra).

    All vertebrae (and ``occluders``, bone that gives no sample: e.g. template neighbours of a single
    user vertebra) occlude each other in the ultrasound sweep; the vertebrae appear in one lateral X-ray.

    Returns
    -------
    samples : list of PairedSample
    skipped : list of str
        ``"<name>/<level>: <reason>"`` for every vertebra that gave no sample.
    """
    posterior = np.mean([v.vertebra_to_patient[:3, 1] for v in vertebrae], axis=0)
    cranial = np.mean([v.vertebra_to_patient[:3, 2] for v in vertebrae], axis=0)
    visible = simulate_us_visibility([v.mesh for v in vertebrae] + list(occluders), posterior=posterior,
                                     cranial=cranial, config=cfg.sweep, rng=rng)
    view = _xray_view(vertebrae, cfg, rng)
    samples, skipped = [], []
    for vert, seen in zip(vertebrae, visible):
        tag = f"{name}/{vert.level}"
        n_distinct = len(np.unique(np.round(seen, 3), axis=0)) if len(seen) else 0
        if n_distinct < cfg.min_partial_points:
            skipped.append(f"{tag}: ultrasound sees {n_distinct} points (< {cfg.min_partial_points})")
            continue
        crop = render_body_labelmap(vert.body_mesh, view)
        pixels = crop.labelled_pixels()
        if len(pixels) == 0:
            skipped.append(f"{tag}: vertebral body outside the X-ray detector")
            continue
        m = vert.vertebra_to_patient
        plane = backproject_to_plane(view, pixels, plane_point_mm=m[:3, 3], plane_normal=m[:3, 0])
        partial_mm, plane_mm = _to_vertebra(seen, m), _to_vertebra(plane, m)
        # The origin comes from what the network sees (never the ground truth), as at inference.
        center = canonical_center(partial_mm, plane_mm)
        gt_mm = _to_vertebra(sample_surface(vert.mesh, cfg.complete_points, rng), m)
        samples.append(PairedSample(
            level=vert.level,
            partial=normalize(resample(partial_mm, cfg.partial_points, rng), center_mm=center),
            labelmap=normalize(resample(plane_mm, cfg.labelmap_points, rng), center_mm=center),
            complete=normalize(gt_mm, center_mm=center),
            name=tag,
            center_mm=center,
        ))
    return samples, skipped


def procedural_pairs(index: int, *, seed: int, cfg: PairConfig) -> tuple[list[PairedSample], list[str]]:
    """Samples of procedural spine number ``index`` of the stream seeded by ``seed`` (deterministic)."""
    from ..sim.anatomy import make_spine

    rng = np.random.default_rng([int(seed), int(index)])
    spine = make_spine(rng, variation=cfg.variation, spacing_mm=cfg.mesh_spacing_mm)
    vertebrae = [
        CanonicalVertebra(level, v.mesh, v.body_mesh, np.asarray(v.frame, dtype=np.float64))
        for level, v in sorted(spine.vertebrae.items()) if level in LEVELS
    ]
    return make_pairs(vertebrae, cfg=cfg, rng=rng, name=f"spine{index:05d}")


# ------------------------------------------------------------------------------------ user meshes

def mesh_pairs(path: str, *, seed: int, cfg: PairConfig, scale: float = 1.0, frame: str | None = None,
               repeats: int = 1) -> tuple[list[PairedSample], list[str]]:
    """``repeats`` samples (different sweeps and X-rays) of one user mesh; unalignable meshes are skipped."""
    try:
        vert, occluders = canonical_user_vertebra(path, scale=scale, frame=frame,
                                                  spacing_mm=cfg.mesh_spacing_mm, seed=seed)
    except AlignmentError as e:
        return [], [str(e)]
    samples, skipped = [], []
    for r in range(repeats):
        rng = np.random.default_rng([int(seed), zlib.crc32(Path(path).name.encode()), r])
        s, k = make_pairs([vert], cfg=cfg, rng=rng, name=Path(path).name + (f"#{r}" if repeats > 1 else ""),
                          occluders=occluders)
        samples += s
        skipped += k
    return samples, skipped


# ------------------------------------------------------------------------------------ CT segmentations

def labelmap_pairs(path: str, *, seed: int, cfg: PairConfig, levels: dict[int, str] | None = None,
                   labels: str = "auto") -> tuple[list[PairedSample], list[str]]:
    """Paired samples of every lumbar vertebra of one CT segmentation (they occlude each other).

    The meshes come from :func:`usx_stream.sim.ct_labelmaps.label_meshes`. ``levels`` (label value of
    each level) overrides ``labels``, the label set: ``verse`` (20..24 = L1..L5), ``totalsegmentator``
    (v2: 31..27 = L1..L5) or ``auto`` (:func:`usx_stream.sim.ct_labelmaps.choose_label_set`, per file).
    Each vertebra is aligned to the canonical frame of its level (rigid ICP started from LPS); one that
    cannot be aligned is skipped with its reason.
    """
    name = Path(path).name
    try:
        volume, ijk_to_lps = read_labels(path)
        if levels is None:
            label_set, chosen_by = choose_label_set(np.unique(volume), labels)
            levels = LABEL_SETS[label_set]
            log.info("%s: %s labels (%s)", name, label_set, chosen_by)
        meshes = label_meshes(volume, ijk_to_lps, levels=levels)
    except ValueError as e:
        return [], [f"{name}: {e}"]
    if not meshes:
        return [], [f"{name}: no lumbar vertebra label ({sorted(levels)})"]
    vertebrae, skipped = [], []
    for level, mesh in sorted(meshes.items()):
        try:
            vertebrae.append(align_vertebra(mesh, level, frame="LPS", spacing_mm=cfg.mesh_spacing_mm, seed=seed))
        except AlignmentError as e:
            skipped.append(f"{name}/{level}: {e}")
    if not vertebrae:
        return [], skipped
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    samples, more = make_pairs(vertebrae, cfg=cfg, rng=rng, name=name)
    return samples, skipped + more


# ------------------------------------------------------------------------------------ the driver

MESH_SUFFIXES = (".ply", ".stl", ".obj")


@dataclass
class GenerateReport:
    """What :func:`generate` wrote: ``path``, ``samples`` written, ``skipped`` (one reason per vertebra)."""

    path: Path
    samples: int
    skipped: list[str]
    number_per_level: dict[str, int]


def _files(folder: Path, suffixes: tuple[str, ...], option: str) -> list[str]:
    if not folder.is_dir():
        raise ValueError(f"{option}: not a directory: {folder}")
    files = sorted(str(p) for p in folder.iterdir() if p.name.lower().endswith(suffixes))
    if not files:
        raise ValueError(f"{option}: no {'/'.join(suffixes)} file in {folder}")
    return files


def generate(out: str | Path, *, procedural: int | None = None, meshes: str | Path | None = None,
             labelmaps: str | Path | None = None, seed: int = 0, workers: int = 1, cfg: PairConfig | None = None, scale: float = 1.0,
             frame: str | None = None, repeats: int = 1, command: str = "", progress: bool = True,
             shard: tuple[int, int] | None = None, labels: str = "auto",
             ssm: tuple[str | Path, int] | None = None) -> GenerateReport:
    """Generate a paired-data HDF5 file from procedural, shape-model or real spines, in parallel.

    Parameters
    ----------
    out : path
        Output ``.h5`` (layout in :mod:`usx_stream.train.data`).
    procedural : int, keyword-only
        Number of procedural spines (five vertebrae each).
    meshes : path, keyword-only
        Folder of PLY/STL/OBJ vertebra meshes (level in the file name).
    labelmaps : path, keyword-only
        Folder of multi-label CT segmentations (NIfTI/NRRD/MHA).
    ssm : (path, int), keyword-only
        A shape model (``usx-stream shape-model build``) and the number of spines to draw from it
        (:mod:`.ssm_pairs`); exactly one of ``procedural``, ``ssm``, ``meshes``, ``labelmaps``.
    labels : {"auto", "verse", "totalsegmentator"}, keyword-only
        Label set of the segmentations (see :func:`labelmap_pairs`).
    seed : int, keyword-only
        Same seed, same file, whatever ``workers`` is (each spine / mesh has its own derived stream).
    workers : int, keyword-only
        Processes (1 = in this process).
    cfg : PairConfig, keyword-only
    scale, frame, repeats : keyword-only
        User meshes: unit scale to mm, patient-frame convention (None = register), samples per mesh.
    command : str, keyword-only
        Stored in the file for provenance.
    shard : (int, int), keyword-only
        ``(i, n)``: generate only part ``i`` (0-based) of ``n`` (:func:`shard_bounds`: a contiguous range of
        the spines / files, each with the random stream it has in the whole run); None = everything.
    """
    from ..train.data import write_pairs

    cfg = cfg or PairConfig()
    if sum(x is not None for x in (procedural, meshes, labelmaps, ssm)) != 1:
        raise ValueError("generate: give exactly one of procedural=N, ssm=(FILE, N), meshes=DIR or labelmaps=DIR")
    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    if procedural is not None:
        if procedural < 1:
            raise ValueError(f"procedural: must be >= 1, got {procedural}")
        fn, items, source = functools.partial(procedural_pairs, seed=seed, cfg=cfg), list(range(procedural)), "procedural"
    elif ssm is not None:
        from .ssm_pairs import ssm_pairs

        model_path, n = str(ssm[0]), int(ssm[1])
        if n < 1:
            raise ValueError(f"ssm: the number of spines must be >= 1, got {n}")
        if not Path(model_path).is_file():
            raise InputError(f"--ssm {model_path}: no such shape model (usx-stream shape-model build makes one)")
        fn, items, source = functools.partial(ssm_pairs, seed=seed, cfg=cfg, model_path=model_path), list(range(n)), f"ssm:{Path(model_path).name}"
    elif meshes is not None:
        fn = functools.partial(mesh_pairs, seed=seed, cfg=cfg, scale=scale, frame=frame, repeats=repeats)
        items, source = _files(Path(meshes), MESH_SUFFIXES, "meshes"), f"meshes:{Path(meshes).name}"
    else:
        fn = functools.partial(labelmap_pairs, seed=seed, cfg=cfg, labels=labels)
        items, source = _files(Path(labelmaps), LABELMAP_SUFFIXES, "labelmaps"), f"labelmaps:{Path(labelmaps).name}"
    start, stop = shard_bounds(len(items), shard)
    samples, skipped = collect_pairs(fn, items[start:stop], workers=workers, progress=progress)
    attrs = {"seed": int(seed), "source": source, "command": command, "skipped": skipped,
             "config": _config_dict(cfg), "frame": frame or "registered", "scale": float(scale),
             "repeats": int(repeats), **shard_attrs(len(items), shard)}
    path = write_pairs(out, samples, attrs=attrs, mm_per_unit=SCALE_MM)
    counts = {lv: sum(s.level == lv for s in samples) for lv in LEVELS}
    return GenerateReport(path, len(samples), skipped, counts)


def _config_dict(cfg: PairConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


def collect_pairs(fn, items: list, *, workers: int, progress: bool) -> tuple[list, list[str]]:
    """``fn(item) -> (samples, skipped)`` over every item, in order, in ``workers`` processes; the
    samples and skip reasons (each also logged) of all of them."""
    samples, skipped = [], []
    for s, k in _run(fn, items, workers=workers, progress=progress):
        samples += s
        skipped += k
    for reason in skipped:
        log.warning("skipped %s", reason)
    return samples, skipped


def _ignore_interrupts() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(fn, items: list, *, workers: int, progress: bool):
    """``fn(item)`` for every item, in order, in ``workers`` processes, with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc="dataset", unit="item", disable=not progress)
    if workers == 1:
        for item in items:
            yield fn(item)
            bar.update(1)
    else:
        import multiprocessing as mp

        # spawn: the parent may hold threads (torch, open3d) that a fork would copy in a broken state.
        # Workers ignore Ctrl-C: the parent alone stops (the pool is terminated as it leaves), in one line.
        with mp.get_context("spawn").Pool(workers, initializer=_ignore_interrupts) as pool:
            for result in pool.imap(fn, items, chunksize=1):
                yield result
                bar.update(1)
    bar.close()
