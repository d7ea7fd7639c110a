"""Ingest stage: every tracked frame -> bone detection -> compounded into the live volume.

Runs on the ingest thread. It keeps every valid frame (the source queue counts any drop), detects bone per
frame (2D) and pastes the frame and its bone probability into the volume with
:class:`~usx_stream.compound.reconstructor.Reconstructor`. The grid comes from the launch file
(``compound.origin_mm`` / ``extent_mm``); when those are empty it is derived from the first
``completion.min_frames`` frames plus ``compound.margin_mm`` (frames seen before the grid exists are held
and pasted as soon as it does, so none is lost).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from .bone.detect import BoneDetectionParams, BoneDetector, pixel_size_from_image_to_probe
from .compound.config import ReconstructionConfig
from .compound.geometry import OutputGeometry
from .compound.reconstructor import Reconstructor, frame_image_to_reference
from .frames import TrackedFrame, Volume
from .telemetry import Telemetry
from .transforms import TransformRepository

log = logging.getLogger(__name__)


def _grid_from_frames(matrices: list[np.ndarray], shape_hw: tuple[int, int], *, spacing_mm: float,
                      margin_mm: float) -> OutputGeometry:
    """Axis-aligned grid enclosing every frame's image corners plus ``margin_mm``."""
    h, w = shape_hw
    corners = np.array([[0, 0, 0, 1], [w - 1, 0, 0, 1], [0, h - 1, 0, 1], [w - 1, h - 1, 0, 1]], dtype=np.float64)
    pts = np.vstack([(m @ corners.T)[:3].T for m in matrices])
    lo, hi = pts.min(axis=0) - margin_mm, pts.max(axis=0) + margin_mm
    dims = tuple(int(np.ceil((b - a) / spacing_mm)) + 1 for a, b in zip(lo, hi))
    return OutputGeometry(lo, np.full(3, spacing_mm), dims)


class IngestStage:
    """Bone detection and compounding of tracked frames.

    Parameters
    ----------
    compound, bone : launch-file sections ``[compound]`` and ``[bone]``
    image_to_reference : str
        Transform name that places a frame in Reference.
    calibration : TransformRepository or None
        Completes each frame's chain to ``image_to_reference`` (ImageToProbe) when frames do not carry it.
    bootstrap_frames : int
        Frames used to derive the grid when the launch file does not give it.
    telemetry : Telemetry
    """

    def __init__(self, compound, bone, *, image_to_reference: str = "ImageToReference",
                 calibration: TransformRepository | None = None, bootstrap_frames: int = 30,
                 telemetry: Telemetry | None = None) -> None:
        self.telemetry = telemetry or Telemetry()
        self._compound, self._bone = compound, bone
        self.image_to_reference = image_to_reference
        self.calibration = calibration
        self.bootstrap_frames = int(bootstrap_frames)
        self.recon_config = ReconstructionConfig(
            output_spacing=np.full(3, compound.spacing_mm),
            interpolation=compound.interpolation, compounding_mode=compound.compounding_mode,
            clip_rectangle_origin=compound.clip_rectangle_origin or None,
            clip_rectangle_size=compound.clip_rectangle_size or None,
            pixel_rejection_threshold=compound.pixel_rejection_threshold or None,
        )
        self.reconstructor: Reconstructor | None = None
        self._pending: list[tuple[TrackedFrame, np.ndarray, dict]] = []
        self._detector: BoneDetector | None = None
        # Written by the ingest thread only; read by the completion thread under _lock.
        self._lock = threading.Lock()
        self._beam_sum = np.zeros(3)
        self.frames_received = 0
        self.newest_arrival_s = float("nan")   # monotonic time the newest pasted frame arrived
        self.newest_timestamp = float("nan")
        if compound.origin_mm and compound.extent_mm:
            dims = tuple(int(np.ceil(e / compound.spacing_mm)) + 1 for e in compound.extent_mm)
            self._make_reconstructor(OutputGeometry(np.asarray(compound.origin_mm), np.full(3, compound.spacing_mm), dims))

    # ------------------------------------------------------------------ ingest thread
    def add(self, frame: TrackedFrame, *, arrival_s: float | None = None) -> bool:
        """Detect bone in ``frame`` and paste it; returns False when the frame was invalid."""
        arrival_s = time.monotonic() if arrival_s is None else arrival_s
        self.frames_received += 1
        try:
            m, valid = frame_image_to_reference(frame, self.image_to_reference, self.calibration)
        except KeyError as e:
            self.telemetry.drop("ingest")
            log.warning("frame %d: %s; frame dropped", frame.index, e)
            return False
        if not (valid and frame.image_status):
            self.telemetry.count("frames_invalid")
            return False
        with self.telemetry.time("bone_detect"):
            channels = self._detect(frame, m)
        if self.reconstructor is None:
            self._pending.append((frame, m, channels))
            if len(self._pending) < self.bootstrap_frames:
                return True
            self._bootstrap()
            return True
        self._paste(frame, m, channels)
        self._note(m, arrival_s, frame.timestamp)
        return True

    def _paste(self, frame: TrackedFrame, image_to_reference: np.ndarray, channels: dict) -> None:
        if not self._inside(image_to_reference, np.asarray(frame.pixels).shape[:2]):
            # Pixels outside the grid are lost; say so (the launch file's compound ROI is too small).
            self.telemetry.count("frames_outside_grid")
        with self.telemetry.time("compound"):
            self.reconstructor.add(frame, image_to_reference=image_to_reference, channels=channels)

    def _inside(self, image_to_reference: np.ndarray, shape_hw) -> bool:
        h, w = shape_hw
        corners = np.array([[0, 0, 0, 1], [w - 1, 0, 0, 1], [0, h - 1, 0, 1], [w - 1, h - 1, 0, 1]], dtype=np.float64)
        g = self.reconstructor.geometry
        ijk = ((image_to_reference @ corners.T)[:3].T - g.origin_mm) / g.spacing_mm
        return bool(np.all(ijk >= -0.5) and np.all(ijk <= np.asarray(g.dims) - 0.5))

    def flush(self) -> None:
        """Create the grid from the frames held so far (end of a short stream)."""
        if self.reconstructor is None and self._pending:
            self._bootstrap()

    def _detect(self, frame: TrackedFrame, image_to_reference: np.ndarray) -> dict:
        if not (self._bone.enabled and self._compound.bone_channel):
            return {}
        if self._detector is None:
            size = self._bone.pixel_size_mm or pixel_size_from_image_to_probe(image_to_reference)
            self._detector = BoneDetector(pixel_size_mm=size, params=BoneDetectionParams.from_mapping(self._bone.as_dict()))
        return {"bone": self._detector.detect(frame.pixels).probability}

    def _bootstrap(self) -> None:
        shape = np.asarray(self._pending[0][0].pixels).shape[:2]
        grid = _grid_from_frames([m for _, m, _ in self._pending], shape, spacing_mm=self._compound.spacing_mm,
                                 margin_mm=self._compound.margin_mm)
        log.info("compounding grid %s voxels at %.2f mm, origin %s mm", grid.dims, self._compound.spacing_mm,
                 np.round(grid.origin_mm, 1).tolist())
        self._make_reconstructor(grid)
        for frame, m, channels in self._pending:
            self._paste(frame, m, channels)
            self._note(m, time.monotonic(), frame.timestamp)
        self._pending.clear()

    def _make_reconstructor(self, grid: OutputGeometry) -> None:
        channels = {"bone": "MAXIMUM"} if (self._bone.enabled and self._compound.bone_channel) else {}
        self.reconstructor = Reconstructor(self.recon_config, grid, semantics="exact",
                                           backend="torch" if self._compound.backend == "torch" else "numba",
                                           channels=channels,
                                           device=None if self._compound.device == "auto" else self._compound.device)

    def _note(self, image_to_reference: np.ndarray, arrival_s: float, timestamp: float) -> None:
        beam = image_to_reference[:3, 1]  # image rows grow with depth: +j is the beam direction
        with self._lock:
            self._beam_sum += beam / (np.linalg.norm(beam) + 1e-12)
            self.newest_arrival_s = arrival_s
            self.newest_timestamp = timestamp

    # ------------------------------------------------------------------ completion thread
    @property
    def frames_pasted(self) -> int:
        return 0 if self.reconstructor is None else self.reconstructor.frames_pasted

    def snapshot(self) -> tuple[Volume | None, dict]:
        """The current volume and what it contains: ``arrival_s``, ``timestamp``, ``beam_direction``."""
        with self._lock:
            info = {"arrival_s": self.newest_arrival_s, "timestamp": self.newest_timestamp,
                    "beam_direction": self._beam_sum / max(np.linalg.norm(self._beam_sum), 1e-12),
                    "frames": self.frames_pasted}
        if self.reconstructor is None:
            return None, info
        with self.telemetry.time("snapshot"):
            if "bone" in self.reconstructor.channel_modes:
                return self.reconstructor.channel_volume("bone"), info
            return self.reconstructor.snapshot(fill_holes=False), info
