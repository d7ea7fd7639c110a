"""The real lumbar vertebra surfaces a shape model is built from, read from the reference data folder.

Each surface becomes one :class:`Instance`: the subject it belongs to (the unit of every train/held-out
split), its level, its mesh in mm in its source frame, and what is known of that frame:

================================  ==========  =========================================  ======
folder                            subject     frame of the mesh                          in place
================================  ==========  =========================================  ======
``verse_L1/*_segment_20.ply``     sub-verseN  CT scanner LPS, mm                         no
``verse_spines/VerseN/L?.ply``    VerseN      CT scanner LPS, mm                         yes
``totalsegmentator/labelmaps``    s0004       label map meshed here (RAS file -> LPS)    yes
``totalsegmentator/vertebrae``    sNNNN       scaled voxel axes (unknown orientation)    no
``clouthier_mean_L2-L5``          clouthier   unknown axes, mm                           yes
``visible_human_male_L1-L5``      vhm         unknown axes, metres (scaled to mm here)   yes
================================  ==========  =========================================  ======

"In place" means the levels of that subject keep their relative positions, so the subject also gives
the relative pose of neighbouring levels. A missing folder is skipped (a subset of the data is a valid
input, e.g. in tests).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..frames import LEVELS, Surface

log = logging.getLogger(__name__)

TOTALSEGMENTATOR_LEVELS = {31: "L1", 30: "L2", 29: "L3", 28: "L4", 27: "L5"}


@dataclass
class Instance:
    """One real vertebra surface.

    Attributes
    ----------
    name : str
        ``"<subject>/<level>"``, unique in a data set.
    subject : str
        Who it comes from; every level of one subject shares it (split unit).
    level : str
        ``"L1"`` .. ``"L5"``.
    mesh : Surface
        Closed surface, mm, in the source frame (see the module table).
    frame : {"LPS"} or None
        Known patient-axis convention of ``mesh`` (starts the rigid alignment); None when unknown.
    in_place : bool
        The subject's levels keep their anatomical relative positions.
    """

    name: str
    subject: str
    level: str
    mesh: Surface
    frame: str | None
    in_place: bool


def _surface(path: Path, *, scale: float = 1.0) -> Surface:
    from ..io.meshes import read_mesh

    raw = read_mesh(path, scale=scale)
    return outward(Surface(np.asarray(raw.vertices_mm, dtype=np.float64),
                           np.asarray(raw.triangles, dtype=np.int64), name=path.stem))


def outward(mesh: Surface) -> Surface:
    """``mesh`` with triangles counter-clockwise seen from outside (positive enclosed volume).

    Half of the reference sources (the VerSe spines, the TotalSegmentator vertebrae) are wound inward;
    normal-aware registration needs one convention.
    """
    t = mesh.vertices_mm[mesh.triangles]
    volume = np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6
    if volume >= 0:
        return mesh
    return Surface(mesh.vertices_mm, mesh.triangles[:, ::-1].copy(), frame=mesh.frame, name=mesh.name)


def _level_of(path: Path) -> str:
    from ..datasets.mesh_alignment import level_from_filename

    return level_from_filename(path)


def collect_instances(data_dir: str | Path, *, subjects: set[str] | None = None,
                      levels: tuple[str, ...] = LEVELS,
                      labelmaps: dict[str, str | Path] | None = None) -> list[Instance]:
    """Every real vertebra under ``data_dir`` (the ``vertebrae`` reference folder), in a fixed order.

    Parameters
    ----------
    data_dir : str or Path
        Folder holding ``verse_L1/``, ``verse_spines/``, ``totalsegmentator/``, ``clouthier_mean_L2-L5/``,
        ``visible_human_male_L1-L5/`` (any may be missing).
    subjects : set of str or None, keyword-only
        Keep only these subjects (None: all).
    levels : tuple of str, keyword-only
        Keep only these levels.
    labelmaps : dict of str to path, or None, keyword-only
        More TotalSegmentator v2 label maps (subject -> file) from outside ``data_dir``: a user's own CT
        segmentations, each a spine in place like ``totalsegmentator/labelmaps``.

    Returns
    -------
    list of Instance
        Sorted by source folder, then subject, then level (deterministic).

    Raises
    ------
    FileNotFoundError
        When ``data_dir`` or a file of ``labelmaps`` does not exist.
    ValueError
        When a subject of ``labelmaps`` is also a subject under ``data_dir`` (or given twice): one subject
        counted as two would leak across a train/held-out split.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"shape data folder not found: {root}")
    found: list[tuple[str, str, Path | Surface, str | None, bool, float]] = []
    for path in sorted((root / "verse_L1").glob("*.ply")):
        found.append((path.name.split("_segment")[0], _level_of(path), path, "LPS", False, 1.0))
    for spine in sorted(p for p in (root / "verse_spines").glob("*") if p.is_dir()):
        for path in sorted(spine.glob("L?.ply")):
            found.append((spine.name, _level_of(path), path, "LPS", True, 1.0))
    for path in sorted((root / "totalsegmentator" / "vertebrae").glob("*.ply")):
        found.append((path.stem.split("_")[0], _level_of(path), path, None, False, 1.0))
    for path in sorted((root / "clouthier_mean_L2-L5").glob("*.ply")):
        found.append(("clouthier", _level_of(path), path, None, True, 1.0))
    for path in sorted((root / "visible_human_male_L1-L5").glob("L?_*.obj")):
        found.append(("vhm", _level_of(path), path, None, True, 1000.0))
    out = []
    for subject, level, path, frame, in_place, scale in found:
        if level not in levels or (subjects is not None and subject not in subjects):
            continue
        out.append(Instance(f"{subject}/{level}", subject, level, _surface(path, scale=scale), frame, in_place))
    maps = {labelmap_subject(path): path
            for path in sorted((root / "totalsegmentator" / "labelmaps").glob("*_labels.nii*"))}
    taken = set(maps) | {f[0] for f in found}
    for subject, path in (labelmaps or {}).items():
        if subject in taken:
            raise ValueError(f"labelmaps: subject {subject!r} ({path}) is already under {root}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"labelmaps: {subject!r}: no such file: {path}")
        maps[subject] = Path(path)
    for subject, path in maps.items():
        if subjects is not None and subject not in subjects:
            continue
        out.extend(_labelmap_instances(path, subject, levels))
    if out:  # none is the caller's error to name
        log.info("%d vertebrae from %s", len(out), root)
    return out


def labelmap_subject(path: str | Path) -> str:
    """The subject a label map file names: ``s0004_labels.nii.gz`` -> ``s0004``, ``x.nii.gz`` -> ``x``."""
    return Path(path).name.split("_labels")[0].split(".nii")[0]


def _labelmap_instances(path: Path, subject: str, levels: tuple[str, ...]) -> list[Instance]:
    """The lumbar levels of a TotalSegmentator v2 label map, meshed in LPS mm."""
    from ..sim.ct_labelmaps import label_meshes, read_labels

    labels, ijk_to_lps = read_labels(path)
    wanted = {k: v for k, v in TOTALSEGMENTATOR_LEVELS.items() if v in levels}
    meshes = label_meshes(labels, ijk_to_lps, levels=wanted)
    return [Instance(f"{subject}/{lv}", subject, lv,
                     outward(Surface(m.vertices_mm, m.triangles, frame="LPS", name=f"{subject}_{lv}")), "LPS", True)
            for lv, m in sorted(meshes.items())]
