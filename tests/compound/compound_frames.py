"""Synthetic tracked frames for the compounding tests: a small probe swept along z.

(A uniquely named module, not conftest.py: several test folders have a conftest.)
"""

from __future__ import annotations

import numpy as np

from usx_stream.frames import TrackedFrame


def sweep_frames(n: int, *, shape=(48, 64), pixel_mm=0.2, step_mm=0.15, seed=0, tilt_deg=7.0):
    """``n`` frames with random uint8 pixels and an ImageToReference transform each.

    Pixel (i, j) sits at x = i * pixel_mm, y = j * pixel_mm (tilted about x by ``tilt_deg``),
    z = k * step_mm for frame k. Transforms are stored as ``ImageToReference``.
    """
    rng = np.random.default_rng(seed)
    t = np.radians(tilt_deg)
    frames = []
    for k in range(n):
        m = np.eye(4)
        m[:3, :3] = np.array([[pixel_mm, 0, 0], [0, pixel_mm * np.cos(t), 0], [0, pixel_mm * np.sin(t), pixel_mm]])
        m[:3, 3] = (0.3, 0.2, k * step_mm + 0.05)
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        frames.append(TrackedFrame(pixels=pixels, timestamp=float(k), transforms={"ImageToReference": m}, index=k))
    return frames
