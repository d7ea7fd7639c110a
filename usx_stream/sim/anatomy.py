"""Parametric lumbar spine L1–L5 with watertight meshes and published per-level dimensions.

Each vertebra is an implicit field (vertebral body, pedicles, laminae, spinous process, transverse
processes, superior and inferior articular processes; :mod:`usx_stream.sim.shape`) sampled on a grid and
triangulated by marching tetrahedra (:mod:`usx_stream.sim.isosurface`), which gives closed manifold meshes.

Frames. Vertebra frame: origin at the centre of the vertebral body, x towards the patient's left,
y posterior, z cranial. Patient frame: the same axis convention (DICOM LPS); its origin is the centre of
the L3 body. The simulated session uses the patient frame as its ``Reference`` frame. ``Vertebra.frame``
is the 4x4 VertebraToPatient transform.

Per-level means (mm) below are rounded approximations of the means these studies report (adult cadaveric
and CT morphometry), not verbatim transcriptions; check the papers before relying on a single number:

===================  ====  ====  ====  ====  ====  ==================================================
dimension            L1    L2    L3    L4    L5    source
===================  ====  ====  ====  ====  ====  ==================================================
body width (EPW)     40.9  42.7  44.8  46.7  49.2  Panjabi et al. 1992, Spine 17(3):299–306, upper EPW
body depth (EPD)     33.5  34.5  35.5  35.5  35.0  Panjabi et al. 1992, upper EPD; Zhou et al. 2000
body height ant.     25.0  26.0  26.5  26.5  27.5  Zhou et al. 2000, Eur Spine J 9:242–248
body height post.    26.2  26.6  26.1  25.4  24.0  Panjabi et al. 1992, VBHp
canal width (SCW)    22.5  23.0  23.5  24.0  26.0  Panjabi et al. 1992
canal depth (SCD)    17.5  17.0  16.5  16.5  16.0  Panjabi et al. 1992
pedicle width        8.7   8.9   10.3  12.9  18.0  Zindrick et al. 1987, Spine 12(2):160–166
pedicle height       15.4  15.0  14.9  14.8  14.0  Zindrick et al. 1987
transverse span      72    80    88    86    90    Panjabi et al. 1992, TPW (tip to tip)
spinous length       30    31    31    29    25    Panjabi et al. 1992, SPL (from the laminar junction)
spinous height       20    22    23    22    18    Panjabi et al. 1992, SPH
disc height below    9.5   10.5  11.0  11.5  12.0  Zhou et al. 2000 (mean of anterior and posterior)
===================  ====  ====  ====  ====  ====  ==================================================

Shape values that these studies do not tabulate are modelling choices (``lamina_height``,
``spinous_inclination_deg``, ``transverse_tilt_deg`` in :data:`MORPHOMETRY`; lamina thickness, process
cross-sections and blend radii in :mod:`usx_stream.sim.shape`), chosen to look like CT renderings.

Variation: a spine-wide size factor (SD 5 % x ``variation``) times an independent factor per dimension
(coefficients of variation in ``_CV``, about the published SDs; draws clipped at 2.5 SD). Lordosis
(angle between the L1 and L5 body axes) defaults to 40° (normal adult range ~30–60°) and is distributed evenly
over the four lumbar discs. Where the processes of neighbours would touch (steep lordosis, tall spinous
processes), that disc is lengthened (by at most 4 mm) until the bones keep 0.5 mm clearance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..frames import LEVELS, Surface
from ..transforms import apply, invert, rotation
from .isosurface import mesh_implicit
from .parts import FAR_MM, SampledField
from .shape import VertebraShape

log = logging.getLogger(__name__)

# Per-level means, mm (degrees for angles), in LEVELS order. See the module docstring for sources.
MORPHOMETRY: dict[str, tuple[float, ...]] = {
    "body_width": (40.9, 42.7, 44.8, 46.7, 49.2),
    "body_depth": (33.5, 34.5, 35.5, 35.5, 35.0),
    "body_height_ant": (25.0, 26.0, 26.5, 26.5, 27.5),
    "body_height_post": (26.2, 26.6, 26.1, 25.4, 24.0),
    "canal_width": (22.5, 23.0, 23.5, 24.0, 26.0),
    "canal_depth": (17.5, 17.0, 16.5, 16.5, 16.0),
    "pedicle_width": (8.7, 8.9, 10.3, 12.9, 18.0),
    "pedicle_height": (15.4, 15.0, 14.9, 14.8, 14.0),
    "transverse_span": (72.0, 80.0, 88.0, 86.0, 90.0),
    "spinous_length": (30.0, 31.0, 31.0, 29.0, 25.0),
    "spinous_height": (20.0, 22.0, 23.0, 22.0, 18.0),
    "lamina_height": (22.0, 23.0, 23.0, 22.0, 20.0),
    "disc_height_below": (9.5, 10.5, 11.0, 11.5, 12.0),
    "spinous_inclination_deg": (8.0, 8.0, 10.0, 12.0, 15.0),
    "transverse_tilt_deg": (5.0, 5.0, 3.0, 3.0, 8.0),
}
# Coefficient of variation per dimension (angles: SD in degrees), about the published spread.
_CV = {"body_width": 0.07, "body_depth": 0.07, "body_height_ant": 0.07, "body_height_post": 0.07,
       "canal_width": 0.08, "canal_depth": 0.10, "pedicle_width": 0.15, "pedicle_height": 0.09,
       "transverse_span": 0.07, "spinous_length": 0.10, "spinous_height": 0.10, "lamina_height": 0.08,
       "disc_height_below": 0.10, "spinous_inclination_deg": 4.0, "transverse_tilt_deg": 3.0}
_SIZE_SD = 0.05
_CLIP_SD = 2.5


@dataclass(frozen=True)
class VertebraParams:
    """Sampled dimensions of one vertebra (mm; angles in degrees). Field names match :data:`MORPHOMETRY`."""

    body_width: float
    body_depth: float
    body_height_ant: float
    body_height_post: float
    canal_width: float
    canal_depth: float
    pedicle_width: float
    pedicle_height: float
    transverse_span: float
    spinous_length: float
    spinous_height: float
    lamina_height: float
    disc_height_below: float
    spinous_inclination_deg: float
    transverse_tilt_deg: float
    # Distance of the facet joint planes from the midline (mm), above and below this vertebra. Derived from
    # the mean canal widths of both vertebrae of each joint, so that neighbours' facets always meet.
    facet_superior_x: float
    facet_inferior_x: float

    @classmethod
    def mean(cls, level: str) -> "VertebraParams":
        k = _level_index(level)
        return cls(**{name: MORPHOMETRY[name][k] for name in MORPHOMETRY}, **_facets(k, 1.0))

    @classmethod
    def sample(cls, level: str, rng: np.random.Generator, *, variation: float = 1.0,
               size_factor: float = 1.0) -> "VertebraParams":
        """Draw dimensions for ``level``: ``mean * size_factor * (1 + cv * z)``, ``z`` ~ N(0, variation)."""
        k = _level_index(level)
        values = {}
        for name, means in MORPHOMETRY.items():
            z = float(np.clip(rng.standard_normal(), -_CLIP_SD, _CLIP_SD)) * variation
            if name.endswith("_deg"):
                values[name] = means[k] + _CV[name] * z
            else:
                # Floor at half the mean so that large variations never give degenerate parts.
                values[name] = means[k] * size_factor * max(1.0 + _CV[name] * z, 0.5)
        return cls(**values, **_facets(k, size_factor))


def _facets(k: int, size_factor: float) -> dict[str, float]:
    """Facet-plane offsets for level index ``k``: half the mean canal width of the joint's pair + 4.5 mm."""
    cw = MORPHOMETRY["canal_width"]
    above = 0.5 * (cw[max(k - 1, 0)] + cw[k])
    below = 0.5 * (cw[k] + cw[min(k + 1, len(cw) - 1)])
    return {"facet_superior_x": size_factor * (0.5 * above + 4.5),
            "facet_inferior_x": size_factor * (0.5 * below + 4.5)}


def _level_index(level: str) -> int:
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {LEVELS}, got {level!r}")
    return LEVELS.index(level)


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
    _level_index(level)
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
    size = 1.0 + _SIZE_SD * variation * float(np.clip(rng.standard_normal(), -_CLIP_SD, _CLIP_SD))
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
