"""Edge validation of tracked frames: what the numeric stages need, checked once, before any stage runs.

A frame that fails is not an error of the node: it is skipped, counted by reason and logged once per
reason (:class:`FrameGate`). Stages behind the gate may assume what is checked here:

=====================  =============================================================================
reason                 rule
=====================  =============================================================================
``not_2d``             ``pixels`` is ``(H, W)`` (a single slice; ``(H, W, 1)`` is accepted and squeezed;
                       a multi-slice IMAGE arrives as ``(K, H, W)``)
``multi_component``    one component per pixel (an RGB or vector image is rejected, not converted)
``empty_image``        ``H >= MIN_SIDE`` and ``W >= MIN_SIDE``
``too_large``          ``H * W <= MAX_PIXELS`` (16 Mpixel: 4096 x 4096; a B-mode frame is ~0.5 Mpixel)
``unsupported_dtype``  uint8, int8, uint16, int16 or float32 (what PLUS and the simulator send)
``nonfinite_pixels``   float32 pixels are all finite
``nonfinite_pose``     ImageToReference is finite
``not_rigid``          ImageToReference's last row is (0, 0, 0, 1); its i and j columns are orthogonal
                       (|cos| <= ORTHOGONALITY_TOL) with lengths (the pixel size) in [MIN_PIXEL_MM,
                       MAX_PIXEL_MM] mm — a singular or shearing matrix would paste a frame into a point
``pose_out_of_range``  every image corner within MAX_POSITION_MM of the Reference origin (10 m: any
                       real operating room; 1e30 mm is a tracking fault)
=====================  =============================================================================
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

import numpy as np

log = logging.getLogger(__name__)

MIN_SIDE = 2
MAX_COMPONENTS = 4       # (H, W, C) with C up to RGBA; a longer last axis means (K, H, W) slices
MAX_PIXELS = 4096 * 4096
SUPPORTED_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.float32))
MIN_PIXEL_MM, MAX_PIXEL_MM = 1e-3, 10.0
# Real spatial calibrations shear a little (PLUS's spine phantom: |cos| = 0.048 between i and j); a
# degenerate matrix (every pixel on one line or point) does not get near 0.2 without far larger errors.
ORTHOGONALITY_TOL = 0.2
MAX_POSITION_MM = 1e4

REASONS = ("not_2d", "multi_component", "empty_image", "too_large", "unsupported_dtype", "nonfinite_pixels",
           "nonfinite_pose", "not_rigid", "pose_out_of_range")


def image_reason(pixels) -> tuple[str | None, str]:
    """``(reason, detail)`` when ``pixels`` cannot be compounded, else ``(None, "")``.

    Parameters
    ----------
    pixels : ndarray
        The frame's image, ``(H, W)`` or ``(H, W, 1)``.
    """
    a = np.asarray(pixels)
    if a.ndim == 3 and 1 < a.shape[2] <= MAX_COMPONENTS:
        return "multi_component", f"pixels shape {a.shape}: {a.shape[2]} components per pixel, expected 1"
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2:
        return "not_2d", f"pixels shape {a.shape}: expected (H, W)"
    h, w = a.shape
    if h < MIN_SIDE or w < MIN_SIDE:
        return "empty_image", f"pixels shape {a.shape}: fewer than {MIN_SIDE} rows or columns"
    if h * w > MAX_PIXELS:
        return "too_large", f"pixels shape {a.shape}: {h * w} pixels > {MAX_PIXELS}"
    if a.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        return "unsupported_dtype", f"pixels dtype {a.dtype}: expected one of {[str(d) for d in SUPPORTED_DTYPES]}"
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return "nonfinite_pixels", f"pixels: {int(np.count_nonzero(~np.isfinite(a)))} NaN or infinite values"
    return None, ""


def pose_reason(image_to_reference, shape_hw: tuple[int, int]) -> tuple[str | None, str]:
    """``(reason, detail)`` when ``image_to_reference`` cannot place a ``shape_hw`` frame, else ``(None, "")``.

    Parameters
    ----------
    image_to_reference : (4, 4) array_like
        Pixel ``(i, j, 0, 1)`` -> Reference, mm (pixel size included).
    shape_hw : (int, int)
        Rows and columns of the frame.
    """
    m = np.asarray(image_to_reference, dtype=np.float64)
    if m.shape != (4, 4):
        return "not_rigid", f"ImageToReference shape {m.shape}: expected (4, 4)"
    if not np.isfinite(m).all():
        return "nonfinite_pose", f"ImageToReference has NaN or infinite elements: {m[:3].round(3).tolist()}"
    if not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0), atol=1e-6):
        return "not_rigid", f"ImageToReference last row {m[3].tolist()}: expected [0, 0, 0, 1]"
    ci, cj = m[:3, 0], m[:3, 1]
    si, sj = float(np.linalg.norm(ci)), float(np.linalg.norm(cj))
    for axis, s in (("i", si), ("j", sj)):
        if not MIN_PIXEL_MM <= s <= MAX_PIXEL_MM:
            return "not_rigid", (f"ImageToReference {axis} column has length {s:.3g} mm (the pixel size): "
                                 f"expected {MIN_PIXEL_MM:g}..{MAX_PIXEL_MM:g} mm")
    cos = abs(float(ci @ cj)) / (si * sj)
    if cos > ORTHOGONALITY_TOL:
        return "not_rigid", f"ImageToReference i and j columns are not orthogonal (|cos| = {cos:.3f})"
    h, w = shape_hw
    corners = m[:3, 3][:, None] + m[:3, :2] @ np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1]], dtype=np.float64)
    reach = float(np.abs(corners).max())
    if reach > MAX_POSITION_MM:
        return "pose_out_of_range", f"ImageToReference places the frame {reach:.3g} mm from the origin (> {MAX_POSITION_MM:g})"
    return None, ""


class FrameGate:
    """Counts and logs rejected frames: each reason is logged once (with the first frame's detail) and then
    only counted; :meth:`counts` gives the totals for telemetry and the final report. Thread-safe."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def reject(self, reason: str, detail: str, *, index: int | None = None) -> None:
        with self._lock:
            first = self._counts[reason] == 0
            self._counts[reason] += 1
        if first:
            where = "" if index is None else f"frame {index}: "
            log.warning("%s%s; frame skipped (reason %r; later frames with this reason are only counted)",
                        where, detail, reason)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
