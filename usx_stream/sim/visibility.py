"""Which bone surfaces an ultrasound sweep can see: ray casting from posterior probe positions.

A transverse linear probe is swept cranio-caudally over the back (plus paramedian passes), tilted at
random; every element casts one ray anteriorly. Only the first bone surface a ray meets is seen
(acoustic shadowing: bone reflects or absorbs almost all the energy), so neighbouring vertebrae occlude
each other because all of them are in one scene. A hit is kept only if the beam meets the surface within
``max_incidence_deg`` of its normal (bone is a specular reflector: oblique surfaces send the echo away
from the probe). Optional Gaussian noise moves each point along its beam (speckle / depth jitter).

The geometry is in any patient frame in mm; the caller gives the posterior and cranial directions.
open3d's Embree ray caster does the intersection (imported lazily through ``usx_stream._deps``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..frames import Surface

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepConfig:
    """Probe sweep and echo model.

    Attributes
    ----------
    probe_width_mm : float
        Aperture of the linear array (elements spread left-right).
    elements : int
        Rays per probe position (scan lines).
    step_mm : float
        Cranio-caudal distance between probe positions.
    lateral_offsets_mm : tuple of float
        Left-right offsets of the passes (0 = midline; ± = paramedian passes).
    tilt_deg : float
        Maximum random probe tilt about each of the left-right and cranial axes (uniform ±).
    max_incidence_deg : float
        Largest angle between the beam and the surface normal that still returns an echo.
    noise_mm : float
        Standard deviation of the displacement of each point along its beam (0 = none).
    standoff_mm : float
        Distance of the skin (probe face) posterior to the most posterior bone point.
    margin_mm : float
        The sweep extends this far beyond the bone cranially and caudally.
    """

    probe_width_mm: float = 40.0
    elements: int = 64
    step_mm: float = 1.5
    lateral_offsets_mm: tuple[float, ...] = (-22.0, 0.0, 22.0)
    tilt_deg: float = 20.0
    max_incidence_deg: float = 70.0
    noise_mm: float = 0.0
    standoff_mm: float = 20.0
    margin_mm: float = 10.0

    def __post_init__(self) -> None:
        for name in ("probe_width_mm", "step_mm", "standoff_mm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SweepConfig.{name}: must be > 0, got {getattr(self, name)!r}")
        if self.elements < 1:
            raise ValueError(f"SweepConfig.elements: must be >= 1, got {self.elements!r}")
        if not 0 < self.max_incidence_deg <= 90:
            raise ValueError(f"SweepConfig.max_incidence_deg: must be in (0, 90], got {self.max_incidence_deg!r}")
        if self.noise_mm < 0 or self.tilt_deg < 0 or self.margin_mm < 0:
            raise ValueError(
                f"SweepConfig: noise_mm, tilt_deg, margin_mm must be >= 0, got "
                f"{self.noise_mm!r}, {self.tilt_deg!r}, {self.margin_mm!r}")


@dataclass
class RayHits:
    """First hits of a ray bundle.

    Attributes
    ----------
    points_mm : (K, 3) float64 ndarray
        Hit positions, scene frame, mm.
    normals : (K, 3) float64 ndarray
        Unit normals of the hit triangles (orientation as the mesh winding gives it).
    mesh_index : (K,) int ndarray
        Index of the mesh that was hit, into the list given to :func:`cast_first_hits`.
    directions : (K, 3) float64 ndarray
        Unit direction of the ray that produced each hit.
    """

    points_mm: np.ndarray
    normals: np.ndarray
    mesh_index: np.ndarray
    directions: np.ndarray


def _unit(v, name: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(3)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        raise ValueError(f"{name}: must be a non-zero finite 3-vector, got {v.tolist()}")
    return v / n


def cast_first_hits(meshes: Sequence[Surface], origins_mm: np.ndarray, directions: np.ndarray) -> RayHits:
    """Cast rays into one scene made of all ``meshes``; keep the first surface each ray meets.

    Parameters
    ----------
    meshes : sequence of Surface
        Triangle meshes in one frame (mm).
    origins_mm : (R, 3) ndarray
        Ray origins, same frame.
    directions : (R, 3) ndarray
        Unit ray directions.

    Returns
    -------
    RayHits
        One entry per ray that hit something.
    """
    from .._deps import import_open3d

    o3d = import_open3d()
    origins_mm = np.asarray(origins_mm, dtype=np.float64).reshape(-1, 3)
    directions = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    if len(origins_mm) != len(directions):
        raise ValueError(f"origins_mm/directions: lengths differ ({len(origins_mm)} vs {len(directions)})")
    scene = o3d.t.geometry.RaycastingScene()
    ids = []
    for m in meshes:
        ids.append(scene.add_triangles(
            o3d.core.Tensor(np.ascontiguousarray(m.vertices_mm, dtype=np.float32)),
            o3d.core.Tensor(np.ascontiguousarray(m.triangles, dtype=np.uint32))))
    if len(origins_mm) == 0:
        empty = np.zeros((0, 3))
        return RayHits(empty, empty, np.zeros(0, dtype=int), empty)
    rays = o3d.core.Tensor(np.hstack([origins_mm, directions]).astype(np.float32))
    ans = scene.cast_rays(rays)
    t_hit = ans["t_hit"].numpy().astype(np.float64)
    geom = ans["geometry_ids"].numpy().astype(np.int64)
    hit = np.isfinite(t_hit)
    lookup = {gid: i for i, gid in enumerate(ids)}
    return RayHits(
        points_mm=origins_mm[hit] + directions[hit] * t_hit[hit, None],
        normals=ans["primitive_normals"].numpy()[hit].astype(np.float64),
        mesh_index=np.array([lookup[g] for g in geom[hit]], dtype=np.int64),
        directions=directions[hit],
    )


def _tilt(directions: np.ndarray, axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotate ``directions`` (R, 3) about unit ``axis`` by ``angle_rad`` (Rodrigues)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    cross = np.cross(axis, directions)
    dot = directions @ axis
    return directions * c + cross * s + np.outer(dot, axis) * (1 - c)


def sweep_rays(vertices_mm: np.ndarray, *, posterior, cranial, config: SweepConfig,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rays of a posterior sweep over the bone whose vertices are ``vertices_mm``.

    Parameters
    ----------
    vertices_mm : (V, 3) ndarray
        All bone vertices of the scene (sets the extent of the sweep and the skin position).
    posterior, cranial : (3,) array_like, keyword-only
        Patient directions in the scene frame (made orthonormal, posterior kept).
    config : SweepConfig, keyword-only
    rng : numpy Generator, keyword-only
        Draws the tilts.

    Returns
    -------
    origins_mm, directions : (R, 3) ndarrays
    """
    p = _unit(posterior, "posterior")
    c = _unit(np.asarray(cranial, dtype=np.float64) - (np.asarray(cranial) @ p) * p, "cranial")
    lr = np.cross(c, p)
    v = np.asarray(vertices_mm, dtype=np.float64)
    centre = v.mean(axis=0)
    rel = v - centre
    skin = rel @ p
    cc = rel @ c
    lr_centre = 0.5 * ((rel @ lr).max() + (rel @ lr).min())
    stations = np.arange(cc.min() - config.margin_mm, cc.max() + config.margin_mm + 1e-9, config.step_mm)
    elems = np.linspace(-0.5, 0.5, config.elements) * config.probe_width_mm
    origins, dirs = [], []
    for offset in config.lateral_offsets_mm:
        for s in stations:
            face = centre + p * (skin.max() + config.standoff_mm) + c * s + lr * (lr_centre + offset)
            d = np.tile(-p, (config.elements, 1))
            tilt = np.radians(config.tilt_deg)
            d = _tilt(d, lr, rng.uniform(-tilt, tilt))
            d = _tilt(d, c, rng.uniform(-tilt, tilt))
            origins.append(face + np.outer(elems, lr))
            dirs.append(d)
    return np.concatenate(origins), np.concatenate(dirs)


def simulate_us_visibility(meshes: Sequence[Surface], *, posterior, cranial, config: SweepConfig | None = None,
                           rng: np.random.Generator | int | None = None) -> list[np.ndarray]:
    """Bone points an ultrasound sweep sees on each mesh of a spine (all meshes occlude each other).

    Parameters
    ----------
    meshes : sequence of Surface
        The vertebrae (or any bones) in one patient frame, mm.
    posterior, cranial : (3,) array_like, keyword-only
        Posterior (towards the probe) and cranial directions in that frame.
    config : SweepConfig, keyword-only
        Probe sweep and echo model; defaults to ``SweepConfig()``.
    rng : numpy Generator or int or None, keyword-only
        Random source for tilts and noise (an int seeds a new generator).

    Returns
    -------
    list of (K_i, 3) float64 ndarrays
        Visible points per mesh, same frame, mm (possibly empty).
    """
    config = config or SweepConfig()
    rng = np.random.default_rng(rng)
    if len(meshes) == 0:
        return []
    verts = np.concatenate([np.asarray(m.vertices_mm, dtype=np.float64) for m in meshes])
    origins, dirs = sweep_rays(verts, posterior=posterior, cranial=cranial, config=config, rng=rng)
    hits = cast_first_hits(meshes, origins, dirs)
    cos_inc = np.abs(np.einsum("ij,ij->i", hits.normals, hits.directions))
    keep = cos_inc >= np.cos(np.radians(config.max_incidence_deg))
    pts = hits.points_mm[keep]
    if config.noise_mm > 0:
        pts = pts + hits.directions[keep] * rng.normal(0.0, config.noise_mm, size=(len(pts), 1))
    index = hits.mesh_index[keep]
    log.debug("visibility: %d rays, %d hits, %d kept by incidence", len(origins), len(hits.points_mm), len(pts))
    return [pts[index == i] for i in range(len(meshes))]
