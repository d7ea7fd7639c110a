"""Output-volume geometry and per-frame pixel geometry, as PLUS derives them.

* The output extent comes from the four clip-rectangle corners of every valid frame (the far corner
  clamped to the last pixel), transformed to Reference. PLUS's origin is the minimum corner and the
  extent is ``(max - min) / spacing`` rounded (``extent_rounding="round"``); older PLUS truncated it
  (``"truncate"``); the newest IGSIO snaps the origin to a multiple of the spacing and rounds the far
  side up (``"lattice"``).
* The clip rectangle is inclusive: ``origin + size`` is the last pasted column/row (one extra), clamped
  to the image.
* Fan clipping narrows each row to the pixels inside the fan (angles, start and stop radii) with PLUS's
  own floor/ceil (which round to 2**-16 first, see :func:`plus_floor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .config import EXTENT_ROUNDINGS, ReconstructionConfig

# The node's compounding grid never exceeds this many voxels, from the launch file or from the first frames
# (2 GiB of float32 accumulators at its two channels): neither a typo nor a tracking glitch may allocate
# the machine away.
MAX_GRID_VOXELS = 256 * 1024 * 1024


def grid_dims(extent_mm, spacing_mm: float) -> list[int]:
    """Voxels per axis of the node's grid spanning ``extent_mm`` at ``spacing_mm`` (both ends included)."""
    return [int(math.ceil(e / spacing_mm)) + 1 for e in extent_mm]
# PLUS fixed point has 14 fractional bits (IGSIO fixed.h).
FIXED_BITS = 14
FIXED_ONE = 1 << FIXED_BITS
# Adding 1.5 * 2**36 rounds a double to a multiple of 2**-16 (PLUS's fast floor/round trick).
_FLOOR_MAGIC = 103079215104.0


@dataclass(frozen=True)
class OutputGeometry:
    """Regular voxel grid, axis-aligned in the reference frame.

    Attributes
    ----------
    origin_mm : (3,) float ndarray
        Centre of voxel (0, 0, 0) in Reference, mm.
    spacing_mm : (3,) float ndarray
        Voxel size along x, y, z, mm.
    dims : (int, int, int)
        Number of voxels along x, y, z.
    """

    origin_mm: np.ndarray
    spacing_mm: np.ndarray
    dims: tuple[int, int, int]

    def __post_init__(self) -> None:
        origin = np.asarray(self.origin_mm, dtype=np.float64).reshape(3)
        spacing = np.asarray(self.spacing_mm, dtype=np.float64).reshape(3)
        dims = tuple(int(d) for d in self.dims)
        if len(dims) != 3 or min(dims) < 1:
            raise ValueError(f"OutputGeometry.dims: expected 3 positive integers, got {self.dims!r}")
        if np.any(spacing <= 0) or not np.all(np.isfinite(origin)):
            raise ValueError(f"OutputGeometry: bad spacing {spacing.tolist()} or origin {origin.tolist()}")
        object.__setattr__(self, "origin_mm", origin)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "dims", dims)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.dims[2], self.dims[1], self.dims[0])

    @property
    def n_voxels(self) -> int:
        return self.dims[0] * self.dims[1] * self.dims[2]

    @classmethod
    def from_extent(cls, origin_mm, spacing_mm, extent) -> "OutputGeometry":
        """From a PLUS ``OutputOrigin`` and inclusive ``OutputExtent`` (x0 x1 y0 y1 z0 z1)."""
        extent = np.asarray(extent, dtype=np.int64).reshape(6)
        spacing = np.asarray(spacing_mm, dtype=np.float64)
        # A non-zero extent start shifts voxel 0 (vtkImageData keeps index 0 at the origin).
        origin = np.asarray(origin_mm, dtype=np.float64) + extent[0::2] * spacing
        return cls(origin, spacing, tuple(int(d) for d in extent[1::2] - extent[0::2] + 1))

    def reference_to_index(self) -> np.ndarray:
        """``(4, 4)`` matrix mapping Reference mm to continuous voxel indices (i, j, k)."""
        m = np.diag([*(1.0 / self.spacing_mm), 1.0])
        m[:3, 3] = -self.origin_mm / self.spacing_mm
        return m


def clip_corners(config: ReconstructionConfig, frame_shape: tuple[int, int]) -> np.ndarray:
    """The four clip-rectangle corners PLUS uses for the extent, ``(4, 2)`` pixels (column, row)."""
    height, width = frame_shape
    x0, x1, y0, y1 = 0.0, float(width - 1), 0.0, float(height - 1)
    size = config.clip_rectangle_size
    if size is not None and size[0] > 0 and size[1] > 0:
        origin = config.clip_rectangle_origin if config.clip_rectangle_origin is not None else np.zeros(2)
        x0, x1 = max(x0, float(origin[0])), min(x1, float(origin[0] + size[0]))
        y0, y1 = max(y0, float(origin[1])), min(y1, float(origin[1] + size[1]))
    return np.array([[x0, y0], [x0, y1], [x1, y0], [x1, y1]])


def geometry_from_frames(image_to_reference: Iterable[np.ndarray], frame_shape: tuple[int, int],
                         config: ReconstructionConfig, *, extent_rounding: str = "round") -> OutputGeometry:
    """Output grid enclosing every frame's clip rectangle, as PLUS computes it.

    Parameters
    ----------
    image_to_reference : iterable of (4, 4) ndarray
        ImageToReference of each valid frame (pixels -> mm).
    frame_shape : (H, W)
        Frame size in pixels.
    config : ReconstructionConfig
        Spacing and clip rectangle.
    extent_rounding : {"round", "truncate", "lattice"}
        See the module docstring.
    """
    if extent_rounding not in EXTENT_ROUNDINGS:
        raise ValueError(f"extent_rounding: expected one of {EXTENT_ROUNDINGS}, got {extent_rounding!r}")
    corners = clip_corners(config, frame_shape)
    corners_h = np.column_stack([corners, np.zeros(4), np.ones(4)])
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    n = 0
    for m in image_to_reference:
        pts = (np.asarray(m, dtype=np.float64) @ corners_h.T)[:3].T
        lo = np.minimum(lo, pts.min(axis=0))
        hi = np.maximum(hi, pts.max(axis=0))
        n += 1
    if n == 0:
        raise ValueError("geometry_from_frames: no valid frame to derive the output extent from")
    spacing = config.output_spacing
    if extent_rounding == "lattice":
        origin = np.floor(lo / spacing) * spacing
        upper = np.ceil((hi - origin) / spacing).astype(np.int64)
    else:
        origin = lo
        span = (hi - lo) / spacing
        # int(x + 0.5) is how C rounds a positive extent; int(x) truncates.
        upper = (span + 0.5).astype(np.int64) if extent_rounding == "round" else span.astype(np.int64)
    return OutputGeometry(origin, spacing, tuple(int(u) + 1 for u in upper))


def image_to_index(image_to_reference: np.ndarray, geometry: OutputGeometry) -> np.ndarray:
    """``(4, 4)``: pixel (i, j, 0, 1) -> continuous voxel index (x, y, z, 1) of ``geometry``."""
    return geometry.reference_to_index() @ np.asarray(image_to_reference, dtype=np.float64)


def to_fixed(matrix: np.ndarray) -> np.ndarray:
    """PLUS fixed point: round-half-even to multiples of 2**-14, as int64 counts of 2**-14."""
    return np.rint(np.asarray(matrix, dtype=np.float64) * FIXED_ONE).astype(np.int64)


def plus_floor(x):
    """PLUS's fast floor: rounds to a multiple of 2**-16 first (values within 2**-17 below an integer
    floor to that integer)."""
    return (np.asarray(x, dtype=np.float64) + _FLOOR_MAGIC).astype(np.int64) - int(_FLOOR_MAGIC)


def clip_extent(config: ReconstructionConfig, frame_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Inclusive pixel range ``(x0, x1, y0, y1)`` pasted by PLUS (``origin + size`` included).

    An empty range is returned as ``x1 < x0`` (or ``y1 < y0``).
    """
    height, width = frame_shape
    size = config.clip_rectangle_size
    if size is not None and size[0] > 0 and size[1] > 0:
        origin = config.clip_rectangle_origin if config.clip_rectangle_origin is not None else np.zeros(2)
        ox, oy, sx, sy = float(origin[0]), float(origin[1]), float(size[0]), float(size[1])
    else:
        # PLUS passes the image extent as origin and its last index as "size" here.
        ox, oy, sx, sy = 0.0, 0.0, float(width - 1), float(height - 1)
    x0, x1 = sorted((math.ceil(ox), math.floor(ox + sx)))
    y0, y1 = sorted((math.ceil(oy), math.floor(oy + sy)))
    x0, x1 = max(x0, 0), min(x1, width - 1)
    y0, y1 = max(y0, 0), min(y1, height - 1)
    if x0 > x1:
        x0, x1 = 0, -1
    if y0 > y1:
        y0, y1 = 0, -1
    return x0, x1, y0, y1


def _fan_row(config: ReconstructionConfig, y: float, start: int, end: int, tan_lr):
    """Fan limits for one row: ``(start, end, skip_start, skip_end)``; skip is None when no hole."""
    fo_x = float(config.fan_origin_pixel[0])
    left, right = tan_lr
    start = max(start, -int(plus_floor(-(left * y + fo_x + 1))))
    end = min(end, int(plus_floor(right * y + fo_x - 1)))
    depth2 = y * y
    stop2 = config.fan_radius_stop_pixel ** 2 - depth2
    if stop2 < 0:
        return 0, -1, None
    dx = math.sqrt(stop2)
    start = max(start, -int(plus_floor(-(fo_x - dx + 1))))
    end = min(end, int(plus_floor(fo_x + dx - 1)))
    start2 = config.fan_radius_start_pixel ** 2 - depth2
    if start2 > 0:
        d = math.sqrt(start2)
        return start, end, (-int(plus_floor(-(fo_x - d + 1))), int(plus_floor(fo_x + d - 1)))
    return start, end, None


def row_segments(config: ReconstructionConfig, frame_shape: tuple[int, int]) -> np.ndarray:
    """Pixel ranges PLUS pastes in each row: ``(H, 4) int64`` rows ``[a0, b0, a1, b1]``.

    Columns ``a0..b0`` and ``a1..b1`` (inclusive; empty when ``b < a``) of row ``j`` are pasted: the
    clip rectangle, intersected with the fan, minus the fan's near-field hole. Same logic and order
    as PLUS's optimised paste (where a row's two pieces are pasted one after the other).
    """
    height, width = frame_shape
    x0, x1, y0, y1 = clip_extent(config, frame_shape)
    segs = np.zeros((height, 4), dtype=np.int64)
    segs[:, 1] = segs[:, 3] = -1
    left = math.tan(math.radians(config.fan_angles_deg[0]))
    right = math.tan(math.radians(config.fan_angles_deg[1]))
    tan_lr = (min(left, right), max(left, right))
    fan = tan_lr[0] != 0 or tan_lr[1] != 0
    for j in range(height):
        start, end, skip = 0, width - 1, None
        if fan:
            start, end, skip = _fan_row(config, j - float(config.fan_origin_pixel[1]), start, end, tan_lr)
        start, end = max(start, x0), min(end, x1)
        if start > end or j < y0 or j > y1:
            start, end = 0, -1
        if skip is not None:
            s0, s1 = skip
            if s0 < start:
                start = max(start, s1 + 1) if start < s1 + 1 else start
                end = max(end, start - 1)
                skip = None
            elif s1 > end:
                end = min(end, s0 - 1) if end > s0 - 1 else end
                end = max(end, start - 1)
                skip = None
        if skip is None:
            segs[j] = (start, end, 0, -1)
        else:
            segs[j] = (start, skip[0] - 1, skip[1] + 1, end)
    return segs


def segment_mask(segments: np.ndarray, width: int) -> np.ndarray:
    """``(H, W) bool``: pixels covered by :func:`row_segments` (a pixel in both pieces counts once)."""
    cols = np.arange(width)[None, :]
    a0, b0, a1, b1 = (segments[:, k:k + 1] for k in range(4))
    return ((cols >= a0) & (cols <= b0)) | ((cols >= a1) & (cols <= b1))
