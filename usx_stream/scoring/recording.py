"""What a node recording holds for scoring: the last published surface per level and the tracked frames.

A recording folder is written by :class:`usx_stream.node.recording.SessionRecorder`: ``surfaces/index.jsonl``
(one line per published surface: ``update``, ``file``, ``name``, ...), ``surfaces/NNNNNN_<name>.ply``,
``inputs_NNNN.igs.mha`` sequence chunks (numbered in order) and ``xray_NNNN.npz``. A ``*.part`` file is
an interrupted write and is ignored. Surface names may carry the launch file's device prefix
(``USX_L3_Completed``); the level is the ``L1``..``L5`` token of the name.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import InputError
from ..frames import LEVELS, Surface, TrackedFrame
from ..node.recording import chunk_paths
from ..transforms import TransformRepository

log = logging.getLogger(__name__)

__all__ = ["PublishedSurface", "last_surfaces", "level_of", "chunk_paths", "recorded_frames", "frame_poses",
           "mean_beam"]

_LEVEL = re.compile(r"(?:^|[^A-Za-z0-9])(L[1-5])(?:[^0-9]|$)")
_SURFACE_FILE = re.compile(r"^(\d+)_(.*)\.ply$")


@dataclass
class PublishedSurface:
    """The last surface the node published for one level.

    Attributes
    ----------
    level : str
        ``"L1"`` .. ``"L5"``.
    surface : Surface
        Vertices in the published frame (Reference unless the launch file said otherwise), mm.
    update : int
        Update number it was published in.
    file : str
        File name under ``surfaces/``.
    metadata : dict
        What travelled with it (fusion, centres, ...).
    """

    level: str
    surface: Surface
    update: int
    file: str
    metadata: dict


def level_of(name: str) -> str | None:
    """The level (``"L3"``) named by a surface name such as ``"USX_L3_Completed"``, or None."""
    m = _LEVEL.search(f"_{name}_")
    return m.group(1) if m else None


def _index_entries(surfaces_dir: Path, warnings: list[str]) -> list[dict]:
    """Entries of ``surfaces/index.jsonl`` (unreadable lines skipped, each named in ``warnings``), else entries
    from the file names."""
    index = surfaces_dir / "index.jsonl"
    entries = []
    if index.is_file():
        for n, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                entries.append({"update": int(entry["update"]), "file": str(entry["file"]),
                                "name": str(entry.get("name") or ""), "metadata": entry.get("metadata") or {}})
            except (ValueError, KeyError, TypeError) as e:  # a line cut by a kill: the file is still there
                warnings.append(f"{index} line {n} skipped: {e}")
                log.warning("%s", warnings[-1])
    if not entries:  # an index lost or never written: the numbered files say as much
        for p in surfaces_dir.glob("*.ply"):
            if m := _SURFACE_FILE.match(p.name):
                entries.append({"update": int(m.group(1)), "file": p.name, "name": m.group(2), "metadata": {}})
    return entries


def last_surfaces(recording: str | Path, *, warnings: list[str] | None = None) -> dict[str, PublishedSurface]:
    """The last published surface of each level in a recording folder.

    "Last" is the highest update number (ties: the later index line). A surface whose file is missing or
    unreadable is skipped for an earlier one of the same level, with a warning.

    Parameters
    ----------
    recording : str or Path
        The node's ``record.dir``.
    warnings : list of str, keyword-only
        Receives one line per index line or surface file skipped (they are also logged).

    Returns
    -------
    dict[str, PublishedSurface]
        By level, in ``L1``..``L5`` order.

    Raises
    ------
    InputError
        The folder holds no ``surfaces/`` or no readable surface of any level.
    """
    from ..io.meshes import read_mesh

    rec = Path(recording)
    if not rec.is_dir():
        raise InputError(f"{rec}: recording folder not found")
    surfaces_dir = rec / "surfaces"
    if not surfaces_dir.is_dir():
        raise InputError(f"{rec}: no surfaces/ folder (was the node run with record.surfaces = true?)")
    warnings = [] if warnings is None else warnings
    by_level: dict[str, list[tuple[int, int, dict]]] = {}
    for order, entry in enumerate(_index_entries(surfaces_dir, warnings)):
        level = level_of(entry["name"]) or level_of(entry["file"])
        if level is not None:
            by_level.setdefault(level, []).append((entry["update"], order, entry))
    out = {}
    for level in LEVELS:
        for _, _, entry in sorted(by_level.get(level, []), key=lambda t: t[:2], reverse=True):
            path = surfaces_dir / entry["file"]
            try:
                surface = read_mesh(path)
            except (OSError, ValueError) as e:
                warnings.append(f"{path}: {e}; taking the level's previous surface")
                log.warning("%s", warnings[-1])
                continue
            if len(surface.vertices_mm) and len(surface.triangles):
                out[level] = PublishedSurface(level, surface, entry["update"], entry["file"], entry["metadata"])
                break
    if not out:
        raise InputError(f"{surfaces_dir}: no readable published surface of any level L1..L5")
    return out


def recorded_frames(recording: str | Path) -> Iterator[TrackedFrame]:
    """Every tracked frame of the recording's sequence chunks, in order, one at a time.

    Yields
    ------
    TrackedFrame
        As recorded (pixels in MF orientation, transforms as they arrived). Nothing when the recording
        holds no chunk.

    Raises
    ------
    InputError
        A chunk that cannot be read (the message names it).
    """
    from ..io.sequence import iter_frames

    for path in chunk_paths(recording):
        yield from iter_frames(path)


def frame_poses(frames: Iterable[TrackedFrame], *, calibration: TransformRepository | None = None,
                image_to_reference: str = "ImageToReference") -> tuple[np.ndarray, list[tuple[int, int]]]:
    """ImageToReference of every frame that can be placed in Reference, and its image size.

    Frames marked invalid (image or transform status) are left out.

    Returns
    -------
    poses : (N, 4, 4) float64 ndarray
        ImageToReference, mm per pixel index.
    shapes : list of (rows, cols)

    Raises
    ------
    InputError
        Frames exist but none can be placed: the transforms they carry and ``calibration`` do not chain
        to ``image_to_reference`` (usually ImageToProbe is missing: pass the device set).
    """
    from ..compound.reconstructor import frame_image_to_reference

    poses, shapes, total, last_error = [], [], 0, None
    for frame in frames:
        total += 1
        try:
            m, valid = frame_image_to_reference(frame, image_to_reference, calibration)
        except KeyError as e:  # TransformError is a KeyError
            last_error = e
            continue
        if valid and frame.image_status and np.all(np.isfinite(m)):
            poses.append(m)
            shapes.append(tuple(np.shape(frame.pixels)[:2]))
    if total and not poses:
        hint = f" ({last_error})" if last_error is not None else ""
        raise InputError(f"recording: none of its {total} frames can be placed by {image_to_reference}"
                         f"{hint}; give the PLUS device set with ImageToProbe (--calibration)")
    return np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4), shapes


def mean_beam(poses: np.ndarray) -> np.ndarray:
    """Unit mean beam direction (ImageToReference's +j column) of ``(N, 4, 4)`` poses, in Reference.

    The posterior direction is its opposite (the probe lies on the patient's back).
    """
    from ..bone.points import mean_beam_direction

    try:
        return mean_beam_direction(poses)
    except ValueError as e:
        raise InputError(f"recording: no beam direction from its frames ({e})") from e
