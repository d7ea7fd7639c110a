"""Parametric lumbar spine L1–L5 with watertight meshes and published per-level dimensions.

Each vertebra is an implicit field (vertebral body, pedicles, laminae, spinous process, transverse
processes, superior and inferior articular processes; :mod:`usx_stream.sim.shape`) sampled on a grid and
triangulated by marching tetrahedra (:mod:`usx_stream.sim.isosurface`), which gives closed manifold meshes.

Frames. Vertebra frame: origin at the centre of the vertebral body, x towards the patient's left,
y posterior, z cranial. Patient frame: the same axis convention (DICOM LPS); its origin is the centre of
the L3 body. The simulated session uses the patient frame as its ``Reference`` frame. ``Vertebra.frame``
is the 4x4 VertebraToPatient transform.

Dimensions: published per-level means with their spread (:mod:`usx_stream.sim.morphometry`, drawn
once per spine with a spine-wide size factor). Lordosis (angle between the L1 and L5 body axes) defaults
to 40° (normal adult range ~30–60°) and is distributed evenly over the four lumbar discs. Where the
processes of neighbours would touch (steep lordosis, tall spinous processes), that disc is lengthened
(by at most 4 mm) until the bones keep 0.5 mm clearance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..frames import LEVELS, Surface
from ..transforms import apply, invert, rotation
from .isosurface import mesh_implicit
from .morphometry import CLIP_SD, SIZE_SD, VertebraParams, level_index
from .parts import FAR_MM, SampledField
from .shape import VertebraShape

log = logging.getLogger(__name__)


@dataclass
class Vertebra:
    """One vertebra: meshes in the patient frame (or its own frame for :func:`make_vertebra`).

    Attributes
    ----------
    level : str
        ``"L1"`` .. ``"L5"``.
    mesh : Surface
        Whole vertebra, closed manifold, mm, CCW outward. ``mesh.frame`` is ``"Reference"`` in a spine
        and the level name (the vertebra's own frame) for a vertebra made alone.
    body_mesh : Surface
        Vertebral body only, closed manifold, mm.
    centroid_mm : (3,) float ndarray
        Volume centroid of the whole vertebra, in the mesh frame.
    frame : (4, 4) float ndarray
        VertebraToPatient (identity for a vertebra made alone).
    field, body_field : SampledField
        Signed-distance-like fields in the vertebra frame (negative inside) the meshes were made from.
    params : VertebraParams
    """

    level: str
    mesh: Surface
    body_mesh: Surface
    centroid_mm: np.ndarray
    frame: np.ndarray
    field: SampledField
    body_field: SampledField
    params: VertebraParams

    @property
    def body_centroid_mm(self) -> np.ndarray:
        """Volume centroid of the body mesh, in the mesh frame."""
        return mesh_volume_centroid(self.body_mesh.vertices_mm, self.body_mesh.triangles)[1]

    def sample(self, points_mm: np.ndarray, *, body_only: bool = False) -> np.ndarray:
        """Field at ``(N, 3)`` points of the mesh frame (patient frame in a spine), ``(N,)`` mm."""
        return (self.body_field if body_only else self.field).sample(apply(self.to_local, points_mm))

    @cached_property
    def to_local(self) -> np.ndarray:
        """``(4, 4)`` PatientToVertebra (inverse of :attr:`frame`)."""
        return invert(self.frame)

    @cached_property
    def field_bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned (lower, upper) box of the field grid in the mesh (patient) frame, mm."""
        lo, hi = self.field.bounds_mm
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        c = apply(self.frame, corners)
        return c.min(axis=0), c.max(axis=0)


@dataclass
class Spine:
    """L1–L5 in the patient frame (x left, y posterior, z cranial; origin at the L3 body centre)."""

    vertebrae: dict[str, Vertebra]
    lordosis_deg: float
    metadata: dict[str, str] = field(default_factory=dict)

    def sample(self, points_mm: np.ndarray, *, body_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Minimum field over all levels at ``(N, 3)`` patient-frame points.

        Returns
        -------
        values : (N,) float ndarray, mm (negative inside bone)
        level_index : (N,) int ndarray
            Index into ``LEVELS`` of the nearest bone (``-1`` where every level is far).
        """
        pts = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
        best = np.full(len(pts), FAR_MM)
        which = np.full(len(pts), -1, dtype=np.int64)
        if len(pts) == 0:
            return best, which
        p_lo, p_hi = pts.min(axis=0), pts.max(axis=0)
        for k, level in enumerate(LEVELS):
            v = self.vertebrae.get(level)
            if v is None:
                continue
            lo, hi = v.field_bounds_mm
            if np.any(p_hi < lo) or np.any(p_lo > hi):
                continue  # the points' box misses this vertebra's field entirely
            fld = v.body_field if body_only else v.field
            local = apply(v.to_local, pts)
            g_lo, g_hi = fld.bounds_mm
            idx = np.flatnonzero(np.all((local >= g_lo) & (local <= g_hi), axis=1))
            if len(idx) == 0:
                continue
            vals = fld.sample(local[idx])
            better = vals < best[idx]
            best[idx[better]] = vals[better]
            which[idx[better]] = k
        return best, which

    def surface(self, *, body_only: bool = False) -> Surface:
        """All levels merged into one mesh (patient frame)."""
        verts, tris, n = [], [], 0
        for v in self.vertebrae.values():
            m = v.body_mesh if body_only else v.mesh
            verts.append(m.vertices_mm)
            tris.append(m.triangles + n)
            n += len(m.vertices_mm)
        return Surface(np.concatenate(verts), np.concatenate(tris), frame="Reference", name="Spine")


def mesh_volume_centroid(vertices: np.ndarray, triangles: np.ndarray) -> tuple[float, np.ndarray]:
    """(volume mm³, centroid (3,) mm) of a closed, outward-oriented triangle mesh."""
    v = np.asarray(vertices, dtype=np.float64)[np.asarray(triangles)]
    vol6 = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2]))
    total = vol6.sum()
    if abs(total) < 1e-12:
        return 0.0, v.reshape(-1, 3).mean(axis=0)
    centroid = (vol6[:, None] * v.sum(axis=1)).sum(axis=0) / (4.0 * total)
    return total / 6.0, centroid


def _surface(vertices, triangles, *, frame: str, name: str) -> Surface:
    return Surface(vertices_mm=vertices, triangles=triangles, frame=frame, name=name)


def make_vertebra(level: str, rng: int | np.random.Generator, *, variation: float = 1.0,
                  size_factor: float = 1.0, spacing_mm: float = 1.0,
                  params: VertebraParams | None = None) -> Vertebra:
    """One vertebra in its own frame (origin at the body centre; x left, y posterior, z cranial).

    Parameters
    ----------
    level : {"L1", ..., "L5"}
    rng : int or numpy.random.Generator
        Seed or generator for the dimensions (ignored when ``params`` is given).
    variation : float
        Scales every random deviation from the published means (0 = the mean vertebra).
    size_factor : float
        Multiplies every length (a whole-spine size draw).
    spacing_mm : float
        Grid spacing of the implicit field and thus of the mesh (0.5–1 mm is sensible).
    params : VertebraParams, optional
        Use these dimensions instead of drawing them.
    """
    level_index(level)
    if not 0.2 <= spacing_mm <= 2.0:
        raise ValueError(f"spacing_mm: expected 0.2..2.0 mm, got {spacing_mm}")
    if not 0.0 <= variation <= 3.0:
        raise ValueError(f"variation: expected 0..3, got {variation}")
    if not 0.5 <= size_factor <= 2.0:
        raise ValueError(f"size_factor: expected 0.5..2, got {size_factor}")
    if params is None:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        params = VertebraParams.sample(level, gen, variation=variation, size_factor=size_factor)
    shape = VertebraShape(params)
    whole, body = shape.sample(spacing_mm)
    v, t = mesh_implicit(whole.values, origin_mm=whole.origin_mm, spacing_mm=spacing_mm)
    bv, bt = mesh_implicit(body.values, origin_mm=body.origin_mm, spacing_mm=spacing_mm)
    _, centroid = mesh_volume_centroid(v, t)
    log.debug("%s: %d triangles (body %d) at %.2f mm", level, len(t), len(bt), spacing_mm)
    return Vertebra(level=level, mesh=_surface(v, t, frame=level, name=level),
                    body_mesh=_surface(bv, bt, frame=level, name=f"{level}_body"), centroid_mm=centroid,
                    frame=np.eye(4), field=whole, body_field=body, params=params)


def _place(vertebra: Vertebra, to_patient: np.ndarray) -> Vertebra:
    """The same vertebra with meshes and centroid mapped into the patient frame."""
    def moved(s: Surface) -> Surface:
        return _surface(apply(to_patient, s.vertices_mm), s.triangles.copy(), frame="Reference", name=s.name)
    return Vertebra(level=vertebra.level, mesh=moved(vertebra.mesh), body_mesh=moved(vertebra.body_mesh),
                    centroid_mm=apply(to_patient, vertebra.centroid_mm[None])[0], frame=to_patient,
                    field=vertebra.field, body_field=vertebra.body_field, params=vertebra.params)


def _stack_frames(params: dict[str, VertebraParams], lordosis_deg: float,
                  discs: dict[str, float]) -> dict[str, np.ndarray]:
    """VertebraToPatient per level: bodies stacked on an arc, L3 at the origin, lordosis about x.

    ``discs[level]`` is the disc height below ``level``, mm.
    """
    n = len(LEVELS)
    step = np.radians(lordosis_deg) / (n - 1)
    # Tilt about x: L1's cranial axis leans posterior, L5's anterior (lumbar curve convex anteriorly).
    tilt = {lv: (k - 2) * step for k, lv in enumerate(LEVELS)}
    centre = {"L3": np.zeros(3)}

    def axis(lv: str) -> np.ndarray:
        return rotation([1, 0, 0], tilt[lv])[:3, 2]

    def half_h(lv: str) -> float:
        return 0.25 * (params[lv].body_height_ant + params[lv].body_height_post)

    for k in range(2, 0, -1):  # upwards from L3
        lo, up = LEVELS[k], LEVELS[k - 1]
        d = half_h(lo) + discs[up] + half_h(up)
        direction = axis(lo) + axis(up)
        centre[up] = centre[lo] + d * direction / np.linalg.norm(direction)
    for k in range(2, n - 1):  # downwards from L3
        up, lo = LEVELS[k], LEVELS[k + 1]
        d = half_h(up) + discs[up] + half_h(lo)
        direction = axis(lo) + axis(up)
        centre[lo] = centre[up] - d * direction / np.linalg.norm(direction)
    frames = {}
    for lv in LEVELS:
        m = rotation([1, 0, 0], tilt[lv])
        m[:3, 3] = centre[lv]
        frames[lv] = m
    return frames


def make_spine(seed: int | np.random.Generator, *, variation: float = 1.0, lordosis_deg: float = 40.0,
               lordosis_sd_deg: float = 6.0, spacing_mm: float = 1.0) -> Spine:
    """A lumbar spine L1–L5 in the patient frame.

    Parameters
    ----------
    seed : int or numpy.random.Generator
        Same seed, same spine (byte-identical meshes).
    variation : float
        Scales all random deviations (0 = mean anatomy with exactly ``lordosis_deg``).
    lordosis_deg : float
        Mean L1–L5 lordosis, degrees; the drawn value has SD ``lordosis_sd_deg * variation``.
    spacing_mm : float
        Mesh / field grid spacing, mm.
    """
    if not -10.0 <= lordosis_deg <= 80.0:
        raise ValueError(f"lordosis_deg: expected -10..80 degrees, got {lordosis_deg}")
    if not 0.0 <= variation <= 3.0:
        raise ValueError(f"variation: expected 0..3, got {variation}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    size = 1.0 + SIZE_SD * variation * float(np.clip(rng.standard_normal(), -CLIP_SD, CLIP_SD))
    lordosis = lordosis_deg + lordosis_sd_deg * variation * float(np.clip(rng.standard_normal(), -2, 2))
    params = {lv: VertebraParams.sample(lv, rng, variation=variation, size_factor=size) for lv in LEVELS}
    local = {lv: make_vertebra(lv, rng, spacing_mm=spacing_mm, params=params[lv]) for lv in LEVELS}
    discs = {lv: params[lv].disc_height_below for lv in LEVELS}
    frames = _stack_without_contact(local, params, lordosis, discs)
    vertebrae = {lv: _place(local[lv], frames[lv]) for lv in LEVELS}
    meta = {"size_factor": f"{size:.4f}", "variation": f"{variation:g}",
            "disc_heights_mm": " ".join(f"{discs[lv]:.2f}" for lv in LEVELS[:-1])}
    return Spine(vertebrae=vertebrae, lordosis_deg=lordosis, metadata=meta)


_MIN_GAP_MM = 0.5  # clearance kept between neighbouring bones (facet joint space, interspinous gap)
_MAX_DISC_GROWTH_MM = 4.0  # beyond this a disc would look pathological: accept the contact instead


def _penetration(a: Vertebra, a_to_patient: np.ndarray, b: Vertebra, b_to_patient: np.ndarray) -> float:
    """How deep (mm) the vertices of ``b`` reach into ``a`` (``<= 0``: they keep that much clearance)."""
    pts = apply(invert(a_to_patient) @ b_to_patient, b.mesh.vertices_mm[::3])
    return -float(a.field.sample(pts).min(initial=FAR_MM))


def _stack_without_contact(local: dict[str, Vertebra], params: dict[str, VertebraParams], lordosis: float,
                           discs: dict[str, float]) -> dict[str, np.ndarray]:
    """Stack the levels; where neighbours' processes would touch (steep lordosis, tall spinous processes),
    lengthen that disc until they keep :data:`_MIN_GAP_MM` clearance. ``discs`` is updated in place."""
    frames = _stack_frames(params, lordosis, discs)
    for _ in range(5):
        moved = False
        for up, lo in zip(LEVELS, LEVELS[1:]):
            depth = max(_penetration(local[up], frames[up], local[lo], frames[lo]),
                        _penetration(local[lo], frames[lo], local[up], frames[up]))
            if depth > -_MIN_GAP_MM and discs[up] < params[up].disc_height_below + _MAX_DISC_GROWTH_MM:
                discs[up] = min(discs[up] + depth + _MIN_GAP_MM + 0.1,
                                params[up].disc_height_below + _MAX_DISC_GROWTH_MM)
                moved = True
        if not moved:
            break
        frames = _stack_frames(params, lordosis, discs)
    return frames
