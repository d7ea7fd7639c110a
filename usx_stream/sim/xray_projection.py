"""Simulated lateral X-ray of a procedural spine and its vertebral-body labelmap.

Each detector pixel's ray (:meth:`usx_stream.xray.geometry.CArmGeometry.pixel_rays`) is sampled every
``step_mm`` inside each vertebra's field box; bone thickness along the ray is the sum of the samples'
partial-volume occupancy ``clip(0.5 - f / step, 0, 1) * step`` (``f`` the signed field, mm), so edges are
anti-aliased. The attenuation line integral is

    A = mu_soft * L_soft + (mu_bone - mu_soft) * T_bone

with ``L_soft`` the chord through an elliptic-cylinder torso and ``T_bone`` the bone thickness; quantum
noise is applied to ``exp(-A)`` with ``photons_per_pixel`` and the stored image is ``-log`` of it (bone is
bright, as on a radiograph). The labelmap marks, per pixel, the level whose vertebral body (body field
only) the ray crosses most, where the samples inside that body add up to at least ``label_min_mm``.
"""

from __future__ import annotations

import logging

import numpy as np

from ..frames import LEVELS, XrayImage
from ..transforms import apply, invert
from ..xray.geometry import CArmGeometry
from .anatomy import Spine, Vertebra
from .parts import SampledField

log = logging.getLogger(__name__)

MU_SOFT_PER_MM = 0.020   # water-equivalent tissue at ~60 keV effective energy
MU_BONE_PER_MM = 0.050   # vertebral bone (cortical shell + trabecular core), same energy
_TORSO_CENTRE_Y_MM = -25.0
_TORSO_SEMI_AXES_MM = (165.0, 120.0)  # left-right, antero-posterior


def _box_pixels(geometry: CArmGeometry, v: Vertebra) -> np.ndarray:
    """(N, 2) detector pixels whose rays can meet the vertebra's field box."""
    lo, hi = v.field.bounds_mm
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    uv = geometry.project(apply(v.frame, corners))
    rows, cols = geometry.detector_shape
    u0, v0 = np.clip(np.floor(np.nanmin(uv, axis=0)), 0, [cols - 1, rows - 1]).astype(int)
    u1, v1 = np.clip(np.ceil(np.nanmax(uv, axis=0)), 0, [cols - 1, rows - 1]).astype(int)
    vv, uu = np.mgrid[v0:v1 + 1, u0:u1 + 1]
    return np.stack([uu.ravel(), vv.ravel()], axis=1)


def _ray_thickness(field: SampledField, lo: np.ndarray, hi: np.ndarray, to_local: np.ndarray,
                   origins: np.ndarray, dirs: np.ndarray, step_mm: float, *, soft: bool,
                   chunk: int = 4096) -> np.ndarray:
    """Thickness (mm) of ``field < 0`` along rays (Reference), sampled inside the local box [lo, hi].

    ``soft`` counts partial-volume occupancy (anti-aliased image); otherwise only samples inside count
    (a grazing ray then never gathers thickness from samples just outside the surface).
    """
    o = apply(to_local, origins)
    d = dirs @ to_local[:3, :3].T
    with np.errstate(divide="ignore", invalid="ignore"):
        t_a = (lo - o) / d
        t_b = (hi - o) / d
    t0 = np.nanmax(np.minimum(t_a, t_b), axis=1)
    t1 = np.nanmin(np.maximum(t_a, t_b), axis=1)
    out = np.zeros(len(o))
    hits = np.flatnonzero(t1 > t0)
    if len(hits) == 0:
        return out
    n_steps = int(np.ceil(np.max(t1[hits] - t0[hits]) / step_mm)) + 1
    ts = (np.arange(n_steps) + 0.5) * step_mm
    for s in range(0, len(hits), chunk):
        idx = hits[s:s + chunk]
        t = t0[idx, None] + ts[None, :]
        valid = t <= t1[idx, None]
        pts = (o[idx, None, :] + t[..., None] * d[idx, None, :]).reshape(-1, 3)
        f = field.sample(pts).reshape(len(idx), n_steps)
        occ = (np.clip(0.5 - f / step_mm, 0.0, 1.0) if soft else (f < 0)) * valid
        out[idx] = occ.sum(axis=1) * step_mm
    return out


def _vertebra_thickness(v: Vertebra, origins: np.ndarray, dirs: np.ndarray,
                        step_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(bone, body) thickness along rays through one vertebra, mm, ``(N,)`` each."""
    to_local = invert(v.frame)
    lo, hi = v.field.bounds_mm
    bone = _ray_thickness(v.field, lo, hi, to_local, origins, dirs, step_mm, soft=True)
    q = v.params
    half = 0.5 * np.array([q.body_width, q.body_depth, max(q.body_height_ant, q.body_height_post)]) + 1.0
    body = _ray_thickness(v.body_field, -half, half, to_local, origins, dirs, step_mm, soft=False)
    return bone, body


def _torso_chords(origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Chord length (mm) of each ray through the elliptic-cylinder torso (axis along z)."""
    a, b = _TORSO_SEMI_AXES_MM
    ox, oy = origins[:, 0] / a, (origins[:, 1] - _TORSO_CENTRE_Y_MM) / b
    dx, dy = dirs[:, 0] / a, dirs[:, 1] / b
    qa = dx * dx + dy * dy
    qb = 2 * (ox * dx + oy * dy)
    qc = ox * ox + oy * oy - 1.0
    disc = np.clip(qb * qb - 4 * qa * qc, 0.0, None)
    return np.sqrt(disc) / np.maximum(qa, 1e-12)


def render_lateral_xray(spine: Spine, geometry: CArmGeometry, rng: np.random.Generator, *,
                        step_mm: float = 1.0, photons_per_pixel: float = 2.0e4, label_min_mm: float = 1.0,
                        timestamp: float = 0.0) -> XrayImage:
    """Project the spine through ``geometry``.

    Returns
    -------
    XrayImage
        ``pixels``: (rows, cols) float32 attenuation line integrals ``-log(I / I0)`` (dimensionless);
        ``labelmap``: (rows, cols) uint8, 0 background, 1..5 = L1..L5 vertebral bodies;
        ``geometry``: ``geometry``.
    """
    if not step_mm > 0:
        raise ValueError(f"step_mm: must be positive, got {step_mm}")
    if not photons_per_pixel > 0:
        raise ValueError(f"photons_per_pixel: must be positive, got {photons_per_pixel}")
    rows, cols = geometry.detector_shape
    bone_total = np.zeros(rows * cols)
    best_body = np.zeros(rows * cols)
    labels = np.zeros(rows * cols, dtype=np.uint8)
    for k, level in enumerate(LEVELS):
        v = spine.vertebrae.get(level)
        if v is None:
            continue
        pix = _box_pixels(geometry, v)
        origins, dirs = geometry.pixel_rays(pix)
        bone, body = _vertebra_thickness(v, origins, dirs, step_mm)
        flat = pix[:, 1] * cols + pix[:, 0]
        bone_total[flat] += bone
        wins = (body >= label_min_mm) & (body > best_body[flat])
        best_body[flat[wins]] = body[wins]
        labels[flat[wins]] = k + 1
        log.debug("%s: %d rays, max bone %.1f mm", level, len(pix), bone.max(initial=0.0))
    origins, dirs = geometry.pixel_rays()
    soft = _torso_chords(origins, dirs)
    attenuation = MU_SOFT_PER_MM * soft + (MU_BONE_PER_MM - MU_SOFT_PER_MM) * bone_total
    counts = rng.poisson(photons_per_pixel * np.exp(-attenuation))
    measured = -np.log(np.maximum(counts, 1) / photons_per_pixel)
    return XrayImage(pixels=measured.reshape(rows, cols).astype(np.float32), labelmap=labels.reshape(rows, cols),
                     pixel_spacing_mm=geometry.pixel_spacing_mm.copy(), timestamp=timestamp, geometry=geometry)
