"""Ingest stage: every tracked frame -> bone detection -> compounded into the live volume.

Runs on the ingest thread. It keeps every valid frame (the source queue counts any drop), detects bone per
frame (2D) and pastes the frame and its bone probability into the volume with
:class:`~usx_stream.compound.reconstructor.Reconstructor`. The grid comes from the launch file
(``compound.origin_mm`` / ``extent_mm``); when those are empty it is derived from the first
``completion.min_frames`` frames plus ``compound.margin_mm`` (frames seen before the grid exists are held
and pasted as soon as it does, so none is lost; tracking outliers among them do not size it), and it grows
when the sweep moves on beyond it, keeping every compounded value (:meth:`Reconstructor.grow`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import numpy as np

from ..bone.detect import BoneDetectionParams, BoneDetector, pixel_size_from_image_to_probe
from ..compound.config import ReconstructionConfig
from ..compound.geometry import MAX_GRID_VOXELS, OutputGeometry, grid_dims
from ..compound.reconstructor import Reconstructor, frame_image_to_reference
from .compute import choose_bone_points, cuda_available
from .frame_check import FrameGate, image_reason, pose_reason
from ..frames import TrackedFrame, Volume
from .telemetry import Telemetry
from ..transforms import TransformRepository

log = logging.getLogger(__name__)


# An automatic grid grows towards a frame that lies at most this far outside it (the sweep moving on); a
# frame farther away is a tracking glitch and is only counted (frames_outside_grid).
GROW_REACH_MM = 100.0


def _frame_corners(m: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    h, w = shape_hw
    corners = np.array([[0, 0, 0, 1], [w - 1, 0, 0, 1], [0, h - 1, 0, 1], [w - 1, h - 1, 0, 1]], dtype=np.float64)
    return (m @ corners.T)[:3].T


def robust_frames(matrices: list[np.ndarray], shape_hw: tuple[int, int], *, slack_mm: float = 50.0) -> np.ndarray:
    """Mask of the frames whose image centre lies near the others' (the first frames of a sweep stay
    within a few centimetres of each other; a tracking glitch does not).

    A frame is kept when each coordinate of its centre is within ``5 * MAD + slack_mm`` of the median
    centre (MAD: median absolute deviation per axis, mm).
    """
    centres = np.array([_frame_corners(m, shape_hw).mean(axis=0) for m in matrices])
    med = np.median(centres, axis=0)
    mad = np.median(np.abs(centres - med), axis=0)
    return np.all(np.abs(centres - med) <= 5.0 * mad + slack_mm, axis=1)


def _grid_from_frames(matrices: list[np.ndarray], shape_hw: tuple[int, int], *, spacing_mm: float,
                      margin_mm: float) -> OutputGeometry:
    """Axis-aligned grid enclosing every frame's image corners plus ``margin_mm``."""
    pts = np.vstack([_frame_corners(m, shape_hw) for m in matrices])
    lo, hi = pts.min(axis=0) - margin_mm, pts.max(axis=0) + margin_mm
    dims = tuple(grid_dims(hi - lo, spacing_mm))
    if int(np.prod(dims, dtype=np.int64)) > MAX_GRID_VOXELS:
        raise ValueError(f"compound: the first frames span {np.round(hi - lo).tolist()} mm, a grid of {list(dims)} "
                         f"voxels at {spacing_mm} mm (> {MAX_GRID_VOXELS}); set compound.origin_mm and "
                         f"compound.extent_mm, or a larger compound.spacing_mm")
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
        self.recon_config = ReconstructionConfig.from_launch(compound)
        self.reconstructor: Reconstructor | None = None
        self._pending: list[tuple[TrackedFrame, np.ndarray, dict]] = []
        self._detector: BoneDetector | None = None
        self.gate = FrameGate()
        self._failures_logged: set[str] = set()
        self._outside_logged = False
        # Written by the ingest thread only; read by the completion thread under _lock.
        self._lock = threading.Lock()
        self._beam_sum = np.zeros(3)
        self.frames_received = 0
        self.newest_arrival_s = float("nan")   # monotonic time the newest pasted frame arrived
        self.newest_timestamp = float("nan")
        self._fixed_grid = bool(compound.origin_mm and compound.extent_mm)
        if compound.origin_mm and compound.extent_mm:
            dims = tuple(grid_dims(compound.extent_mm, compound.spacing_mm))
            self._make_reconstructor(OutputGeometry(np.asarray(compound.origin_mm), np.full(3, compound.spacing_mm), dims))

    # ------------------------------------------------------------------ ingest thread
    def add(self, frame: TrackedFrame, *, arrival_s: float | None = None) -> bool:
        """Validate ``frame`` (:mod:`usx_stream.node.frame_check`), detect bone in it and paste it.

        Returns False when the frame was skipped: invalid (counted under ``frames_rejected:<reason>`` and
        logged once per reason), marked invalid by PLUS (``frames_invalid``) or failed in a stage
        (``frames_failed``, logged once per stage and error type). Never raises for the frame's content.
        """
        arrival_s = time.monotonic() if arrival_s is None else arrival_s
        self.frames_received += 1
        reason, detail = image_reason(frame.pixels)
        if reason is not None:
            return self._reject(frame, reason, detail)
        if np.ndim(frame.pixels) == 3:  # (H, W, 1): one component, checked above
            frame = dataclasses.replace(frame, pixels=np.asarray(frame.pixels)[:, :, 0])
        try:
            m, valid = frame_image_to_reference(frame, self.image_to_reference, self.calibration)
        except KeyError as e:
            return self._reject(frame, "no_image_to_reference", str(e))
        if not (valid and frame.image_status):
            self.telemetry.count("frames_invalid")
            return False
        reason, detail = pose_reason(m, np.shape(frame.pixels))
        if reason is not None:
            return self._reject(frame, reason, detail)
        try:
            with self.telemetry.time("bone_detect"):
                channels = self._detect(frame, m)
            if self.reconstructor is None:
                self._pending.append((frame, m, channels))
                if len(self._pending) >= self.bootstrap_frames:
                    self._bootstrap()
                return True
            self._paste(frame, m, channels)
        except (ValueError, ArithmeticError, IndexError, MemoryError) as e:
            self._failed(frame, e)
            return False
        self._note(m, arrival_s, frame.timestamp)
        return True

    def _reject(self, frame: TrackedFrame, reason: str, detail: str) -> bool:
        self.gate.reject(reason, detail, index=frame.index)
        self.telemetry.count(f"frames_rejected:{reason}")
        return False

    def _failed(self, frame: TrackedFrame, error: BaseException) -> None:
        key = type(error).__name__
        self.telemetry.count("frames_failed")
        if key not in self._failures_logged:
            self._failures_logged.add(key)
            log.warning("frame %d: %s: %s; frame skipped (later %s errors are only counted)", frame.index, key,
                        error, key)

    def _paste(self, frame: TrackedFrame, image_to_reference: np.ndarray, channels: dict) -> None:
        shape_hw = np.asarray(frame.pixels).shape[:2]
        if not self._inside(image_to_reference, shape_hw) and not self._grow_to(image_to_reference, shape_hw):
            # Pixels outside the grid are lost; say so (the launch file's compound ROI is too small).
            self.telemetry.count("frames_outside_grid")
            if not self._outside_logged:
                self._outside_logged = True
                log.warning("frame %d lies (partly) outside the compounding grid: its pixels there are lost and "
                            "counted as frames_outside_grid; set compound.origin_mm / extent_mm around the sweep "
                            "(or a larger compound.margin_mm)", frame.index)
        with self.telemetry.time("compound"):
            self.reconstructor.add(frame, image_to_reference=image_to_reference, channels=channels)

    def _grow_to(self, image_to_reference: np.ndarray, shape_hw) -> bool:
        """Grow an automatic grid so that it holds this frame (plus the margin), when the sweep has moved on
        from where the first frames were: the frame must touch the grid's neighbourhood (GROW_REACH_MM),
        the grown grid stays under MAX_GRID_VOXELS, and the backend keeps its accumulators voxel by
        voxel (numba/numpy). A launch-file grid (compound.origin_mm / extent_mm) never grows."""
        if self._fixed_grid or self.reconstructor.backend == "torch":
            return False
        g = self.reconstructor.geometry
        pts = _frame_corners(image_to_reference, shape_hw)
        lo_g, hi_g = g.origin_mm, g.origin_mm + (np.asarray(g.dims) - 1) * g.spacing_mm
        gap = np.maximum(np.maximum(lo_g - pts.min(axis=0), pts.max(axis=0) - hi_g), 0.0)
        if np.any(gap > GROW_REACH_MM):
            return False  # far from everything compounded so far: a tracking glitch, not a sweep
        margin = self._compound.margin_mm
        lo = np.minimum(lo_g, np.floor((pts.min(axis=0) - margin - lo_g) / g.spacing_mm) * g.spacing_mm + lo_g)
        hi = np.maximum(hi_g, pts.max(axis=0) + margin)
        dims = tuple(int(np.ceil((b - a) / sp - 1e-9)) + 1 for a, b, sp in zip(lo, hi, g.spacing_mm))
        if int(np.prod(dims, dtype=np.int64)) > MAX_GRID_VOXELS:
            return False
        try:
            self.reconstructor.grow(OutputGeometry(lo, g.spacing_mm, dims))
        except ValueError as e:
            log.warning("compounding grid cannot grow (%s); frames outside it are counted", e)
            self._fixed_grid = True
            return False
        self.telemetry.count("grid_grown")
        log.info("compounding grid grown to %s voxels, origin %s mm (the sweep left the first frames' grid)",
                 dims, np.round(lo, 1).tolist())
        return True

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
        same = [p for p in self._pending if np.asarray(p[0].pixels).shape[:2] == shape]
        keep = robust_frames([m for _, m, _ in same], shape)
        if not keep.all():
            log.warning("compounding grid: %d of the first %d frames lie far from the others (tracking outliers) "
                        "and do not size the grid", int((~keep).sum()), len(same))
        try:
            grid = _grid_from_frames([m for (_, m, _), k in zip(same, keep) if k], shape,
                                     spacing_mm=self._compound.spacing_mm, margin_mm=self._compound.margin_mm)
        except ValueError as e:  # the held frames are dropped (counted): the next ones size the grid afresh
            for frame, _, _ in self._pending:
                self._reject(frame, "grid_too_large", str(e))
            self._pending = []
            return
        log.info("compounding grid %s voxels at %.2f mm, origin %s mm", grid.dims, self._compound.spacing_mm,
                 np.round(grid.origin_mm, 1).tolist())
        self._make_reconstructor(grid)
        pending, self._pending = self._pending, []
        for frame, m, channels in pending:
            try:
                self._paste(frame, m, channels)
            except (ValueError, ArithmeticError, IndexError, MemoryError) as e:
                self._failed(frame, e)
                continue
            self._note(m, time.monotonic(), frame.timestamp)

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the compounding kernels this stage will run, on a tiny
        throw-away grid and frame, so that the first real frame costs what the others cost."""
        real = self.reconstructor
        self._make_reconstructor(OutputGeometry(np.zeros(3), np.ones(3), (8, 8, 8)))
        try:
            # B-mode-like: uint8 pixels smaller than a voxel, so the same kernels as a real sweep are picked
            dummy = np.full((16, 16), 100, np.uint8)
            m = np.diag([0.3, 0.3, 0.3, 1.0])
            m[:3, 3] = 1.0
            channels = {name: np.full((16, 16), 0.5, np.float32) for name in self.reconstructor.channel_modes}
            self.reconstructor.add(TrackedFrame(pixels=dummy, timestamp=0.0), image_to_reference=m, channels=channels)
            fill = self.recon_config.fill_holes  # the hole-filling kernels too, when snapshots will use them
            if channels:
                self.reconstructor.channel_volume(next(iter(channels)), fill_holes=fill)
            else:
                self.reconstructor.snapshot(fill_holes=fill)
        finally:
            self.reconstructor = real

    def _make_reconstructor(self, grid: OutputGeometry) -> None:
        channels = {"bone": "MAXIMUM"} if (self._bone.enabled and self._compound.bone_channel) else {}
        backend, device = self._compound.backend, self._compound.device
        if "auto" in (backend, device):  # a node built by assemble.build_node has these resolved (compute.py)
            cuda = cuda_available()
            backend = backend if backend != "auto" else ("torch" if cuda else "numba")
            device = device if device != "auto" else ("cuda" if cuda else "cpu")
        self.reconstructor = Reconstructor(self.recon_config, grid, semantics="exact", backend=backend,
                                           channels=channels, device=device)
        # Decided with the reconstructor, not per snapshot: compute.py's rule (auto: the device path on CUDA).
        self._points_on_device = backend == "torch" and \
            choose_bone_points(self._bone.points_device, backend, device) == "compound"

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
        """The current volume and what it contains: ``arrival_s``, ``timestamp``, ``beam_direction``.

        With a bone channel, the volume holds that channel alone. Compounded with the torch backend, with
        ``bone.points_device`` resolved to ``compound`` and no hole filling (``compound.fill_holes``, host
        kernels), the channel stays on the compounding device (a torch tensor,
        :meth:`Reconstructor.device_channel_volume`): the bone points are extracted there and only they come
        back to the host."""
        with self._lock:
            info = {"arrival_s": self.newest_arrival_s, "timestamp": self.newest_timestamp,
                    "beam_direction": self._beam_sum / max(np.linalg.norm(self._beam_sum), 1e-12),
                    "frames": self.frames_pasted}
        if self.reconstructor is None:
            return None, info
        fill = self.recon_config.fill_holes  # compound.fill_holes: the launch table's hole-filling element
        with self.telemetry.time("snapshot"):
            if "bone" in self.reconstructor.channel_modes:
                on_device = None if fill or not self._points_on_device else \
                    self.reconstructor.device_channel_volume("bone")
                if on_device is not None:
                    return on_device, info
                return self.reconstructor.channel_volume("bone", fill_holes=fill), info
            return self.reconstructor.snapshot(fill_holes=fill), info
