"""Simulated freehand sweep: probe poses over the back of a procedural spine.

Frames (PLUS names, mm):

- ``Image``: pixel (i, j) at (i, j, 0); ``ImageToProbe`` (spatial calibration, from the device set in
  ``calibration/``) carries the pixel size.
- ``Transducer`` (internal to this module): origin at the centre of the transducer face, x along the array
  (image columns), y along the beam (image rows, into the body), z = x × y.
- ``Probe``: the tracking marker on the probe handle. ``ProbeToReference = TransducerToReference @
  ImageToTransducer @ inv(ImageToProbe)``, so ``ImageToReference`` equals the planned transducer pose exactly.
- ``Reference``: the patient frame of :mod:`usx_stream.sim.anatomy` (x left, y posterior, z cranial).
- ``Tracker``: the optical camera; ``ReferenceToTracker`` is fixed (:data:`REFERENCE_TO_TRACKER`).

The sweep is transverse (image columns along the patient's left-right axis) and runs cranio-caudally in
``passes`` passes (alternating direction, the outer passes shifted laterally and rocked towards the midline
so that they see the transverse processes). The probe rides on a skin line that follows the spinous tips
at ``skin_depth_mm`` and tilts with its slope; hand motion adds smooth random tilt, rock, twist, lateral
drift and speed changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..frames import LEVELS
from ..transforms import invert, rotation, translation
from .anatomy import Spine

# Camera 1.4 m from the patient, looking down at the back at an angle (fixed for the session).
REFERENCE_TO_TRACKER = (translation([85.0, -140.0, -1400.0]) @ rotation([0, 0, 1], np.radians(90.0))
                        @ rotation([1, 0, 0], np.radians(-25.0)))


@dataclass(frozen=True)
class ProbeGeometry:
    """Linear-array image geometry.

    Attributes
    ----------
    image_to_probe : (4, 4) ndarray
        Spatial calibration (includes the pixel size).
    shape : (rows, cols)
        Image size in pixels (rows = depth).
    """

    image_to_probe: np.ndarray
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        rows, cols = self.shape
        if rows < 8 or cols < 8:
            raise ValueError(f"shape: expected at least 8x8 pixels, got {self.shape}")
        sx, sy = self.spacing_mm
        if not np.isclose(sx, sy, rtol=1e-3):
            raise ValueError(f"image_to_probe: expected square pixels, got spacing {sx:.4f} x {sy:.4f} mm")

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """Pixel size (column, row) in mm, from the calibration matrix."""
        m = np.asarray(self.image_to_probe)
        return float(np.linalg.norm(m[:3, 0])), float(np.linalg.norm(m[:3, 1]))

    def image_to_transducer(self) -> np.ndarray:
        """Pixel (i, j) -> transducer frame: columns centred on the array, row 0 on the face."""
        s = self.spacing_mm[0]
        m = np.diag([s, s, s, 1.0])
        m[0, 3] = -0.5 * (self.shape[1] - 1) * s
        return m


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, amplitude: float, *, n_terms: int = 3) -> np.ndarray:
    """Sum of a few slow random sinusoids over ``t`` in [0, 1]: a hand's drift, zero mean."""
    out = np.zeros_like(t)
    for k in range(1, n_terms + 1):
        out += rng.normal(0.0, amplitude / k) * np.sin(2 * np.pi * (k * t * rng.uniform(0.5, 1.5))
                                                      + rng.uniform(0, 2 * np.pi))
    return out


def skin_line(spine: Spine, *, skin_depth_mm: float):
    """Posterior skin position ``y(z)`` (mm) along the midline: the spinous tips plus ``skin_depth_mm``.

    Returns ``(z_knots, y_knots)`` of a piecewise-linear curve, extended flat beyond L1 and L5.
    """
    tips = []
    for level in (lv for lv in LEVELS if lv in spine.vertebrae):  # a real spine may lack a level
        v = spine.vertebrae[level].mesh.vertices_mm
        near_mid = v[np.abs(v[:, 0]) < 4.0]
        tips.append(near_mid[np.argmax(near_mid[:, 1])])
    tips = np.array(tips)[::-1]  # ascending z (L5 first)
    z = np.concatenate([[tips[0, 2] - 200.0], tips[:, 2], [tips[-1, 2] + 200.0]])
    y = np.concatenate([[tips[0, 1]], tips[:, 1], [tips[-1, 1]]]) + skin_depth_mm
    return z, y


def _pass_layout(passes: int) -> list[tuple[float, float]]:
    """(lateral offset mm, rock towards the midline deg) per pass: centre first, then alternating sides."""
    out = [(0.0, 0.0)]
    for k in range(1, passes):
        side = 1.0 if k % 2 else -1.0
        ring = (k + 1) // 2
        out.append((side * 20.0 * ring, side * 8.0 * ring))
    return out


def plan_sweep(spine: Spine, probe: ProbeGeometry, rng: np.random.Generator, *, n_frames: int = 240,
               passes: int = 3, skin_depth_mm: float = 15.0, frame_rate_hz: float = 30.0,
               start_time_s: float = 1.79e9, margin_mm: float = 12.0,
               extent: tuple[float, float] = (0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Transducer poses and timestamps for a transverse freehand sweep.

    ``skin_depth_mm`` is the skin's distance above the spinous tips (mm; thicker in heavier patients).
    ``extent = (start, stop)``, fractions of the cranio-caudal span from its cranial end (``0 <= start <
    stop <= 1``), limits each pass to part of the spine, as a sonographer who stops short does.

    Returns
    -------
    transducer_to_reference : (N, 4, 4) ndarray
    timestamps : (N,) float ndarray, s
    """
    if n_frames < passes or passes < 1:
        raise ValueError(f"n_frames/passes: need passes >= 1 and n_frames >= passes, got {n_frames}/{passes}")
    if frame_rate_hz <= 0:
        raise ValueError(f"frame_rate_hz: must be positive, got {frame_rate_hz}")
    start, stop = (float(e) for e in extent)
    if not 0.0 <= start < stop <= 1.0:
        raise ValueError(f"extent: expected 0 <= start < stop <= 1, got {tuple(extent)}")
    if not skin_depth_mm > 0:
        raise ValueError(f"skin_depth_mm: must be positive, got {skin_depth_mm}")
    z_knots, y_knots = skin_line(spine, skin_depth_mm=skin_depth_mm)
    all_z = spine.surface().vertices_mm[:, 2]
    z_top, z_bottom = all_z.max() + margin_mm, all_z.min() - margin_mm
    if (start, stop) != (0.0, 1.0):  # the full span is left untouched so that old seeds replay exactly
        z_top, z_bottom = z_top + (z_bottom - z_top) * start, z_top + (z_bottom - z_top) * stop
    counts = np.full(passes, n_frames // passes)
    counts[: n_frames % passes] += 1
    poses = []
    for p, ((offset, rock_deg), count) in enumerate(zip(_pass_layout(passes), counts)):
        t = np.linspace(0.0, 1.0, count)
        # Uneven speed: a hand slows and speeds up; keep it monotonic.
        t = np.clip(t + _smooth_noise(rng, t, 0.02), 0.0, 1.0)
        t = np.maximum.accumulate(t)
        z = z_top + (z_bottom - z_top) * (t if p % 2 == 0 else 1.0 - t)
        x = offset + _smooth_noise(rng, t, 2.0)
        tilt = np.radians(_smooth_noise(rng, t, 4.0))   # about the array axis (fanning)
        rock = np.radians(rock_deg + _smooth_noise(rng, t, 2.0))  # about the beam's elevation axis
        twist = np.radians(_smooth_noise(rng, t, 3.0))  # about the beam
        for zi, xi, a, b, c in zip(z, x, tilt, rock, twist):
            poses.append(_pose(zi, xi, z_knots, y_knots, a, b, c))
    timestamps = start_time_s + np.arange(n_frames) / frame_rate_hz
    return np.array(poses), timestamps


def _pose(z: float, x: float, z_knots, y_knots, tilt: float, rock: float, twist: float) -> np.ndarray:
    """TransducerToReference at skin point (x, y_skin(z), z), beam anterior, normal to the skin line."""
    y = float(np.interp(z, z_knots, y_knots))
    dz = 2.0
    slope = (np.interp(z + dz, z_knots, y_knots) - np.interp(z - dz, z_knots, y_knots)) / (2 * dz)
    # Base: array along +x, beam along -y (anterior), elevation along -z; 180 deg about x.
    base = rotation([1, 0, 0], np.pi)
    skin = rotation([1, 0, 0], -np.arctan(slope))  # beam normal to the skin line
    hand = rotation([1, 0, 0], tilt) @ rotation([0, 0, 1], rock) @ rotation([0, 1, 0], twist)
    m = skin @ base @ hand
    m[:3, 3] = [x, y, z]
    return m


def probe_to_reference(transducer_to_reference: np.ndarray, probe: ProbeGeometry) -> np.ndarray:
    """``(N, 4, 4)`` ProbeToReference such that ImageToReference = TransducerToReference @ ImageToTransducer."""
    fixed = probe.image_to_transducer() @ invert(probe.image_to_probe)
    return np.einsum("nij,jk->nik", transducer_to_reference, fixed)
