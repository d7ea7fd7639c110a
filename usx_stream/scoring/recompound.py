"""What ultrasound saw in a recording, for registering a truth to it: the recorded frames recompounded with
the node's own ingest stage (:class:`usx_stream.node.ingest.IngestStage`, the launch file's ``[compound]``
and ``[bone]`` tables) and the bone points of the bone channel (:func:`usx_stream.bone.points.extract_bone_points`),
in Reference. :mod:`usx_stream.scoring.register` registers the truth onto them (``--register auto``).
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np

from ..frames import TrackedFrame

log = logging.getLogger(__name__)

MIN_SPACING_MM = 1.0
"""Recompounding spacing floor, mm: bone points are downsampled to ~1 mm anyway."""


def bone_points_from_frames(frames: Iterable[TrackedFrame], poses: np.ndarray, shapes: list[tuple[int, int]],
                            launch, *, calibration=None) -> np.ndarray:
    """Recompound tracked frames with the node's ingest stage and return their bone points.

    Parameters
    ----------
    frames : iterable of TrackedFrame
        The recording's frames (read once; the stage skips and counts any it cannot place).
    poses : (N, 4, 4) ndarray
        ImageToReference of the frames that can be placed, mm; with ``shapes`` (their ``(rows, cols)``)
        they size the grid: every frame's corners plus ``compound.margin_mm`` (tracking outliers aside).
    shapes : list of (int, int)
    launch : LaunchConfig
        ``[compound]``, ``[bone]`` and ``source.image_to_reference``; the spacing is at least
        :data:`MIN_SPACING_MM` and coarser when the grid would exceed a quarter of the ingest stage's
        voxel cap.
    calibration : TransformRepository, keyword-only, optional
        ImageToProbe when the frames do not carry ImageToReference.

    Returns
    -------
    (P, 3) float64 ndarray
        Bone surface points in Reference, mm (``(0, 3)`` when none).
    """
    from ..bone.points import extract_bone_points
    from ..compound.geometry import MAX_GRID_VOXELS
    from ..node.ingest import IngestStage, robust_frames

    if len(poses) == 0:
        return np.zeros((0, 3))
    keep = robust_frames(list(poses), shapes[0])
    corners = np.vstack([_image_corners(m, shape) for m, shape, k in zip(poses, shapes, keep) if k])
    margin = launch.compound.margin_mm
    lo, hi = corners.min(axis=0) - margin, corners.max(axis=0) + margin
    spacing = max(launch.compound.spacing_mm, MIN_SPACING_MM,
                  float(np.prod(hi - lo) / (MAX_GRID_VOXELS / 4)) ** (1 / 3))
    cfg = launch.with_overrides({"compound.origin_mm": lo.tolist(), "compound.extent_mm": (hi - lo).tolist(),
                                 "compound.spacing_mm": spacing, "compound.bone_channel": True,
                                 "bone.enabled": True})
    stage = IngestStage(cfg.compound, cfg.bone, image_to_reference=cfg.source.image_to_reference,
                        calibration=calibration)
    for frame in frames:
        stage.add(frame)
    volume, info = stage.snapshot()
    if volume is None or info["frames"] == 0:
        return np.zeros((0, 3))
    log.info("recompounded %d frames at %.2f mm for registration", info["frames"], spacing)
    return extract_bone_points(volume, threshold=cfg.bone.probability_threshold,
                               beam_direction=info["beam_direction"], voxel_mm=cfg.bone.point_voxel_mm)


def _image_corners(image_to_reference: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """(4, 3) Reference positions of the corner pixels of a ``(rows, cols)`` frame, mm."""
    h, w = shape_hw
    ij = np.array([[0, 0, 0, 1], [w - 1, 0, 0, 1], [0, h - 1, 0, 1], [w - 1, h - 1, 0, 1]], dtype=np.float64)
    return (ij @ image_to_reference.T)[:, :3]
