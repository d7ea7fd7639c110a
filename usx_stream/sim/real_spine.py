"""A :class:`~usx_stream.sim.anatomy.Spine` made from a real one, placed in the simulator's Reference.

Input (:func:`real_spine`):

- a folder of per-level closed meshes, ``L1.ply`` .. ``L5.ply`` (also STL / OBJ; a file stem that names one
  level as a token, ``verse561_L3.stl``, counts for it), mm after ``scale``, the levels in place as in the
  patient. Their axes are LPS unless ``frame="RAS"`` (then x and y are negated) or ``frame="auto"`` (turned
  so that the spine's own axes become LPS: cranial from the lowest level's body to the highest's, posterior
  towards the arches; for meshes in unknown axes such as the Visible Human's);
- a CT label volume (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) with VerSe (20..24 =
  L1..L5) or TotalSegmentator v2 (31..27 = L1..L5) labels, ``auto`` telling them apart
  (:func:`usx_stream.sim.ct_labelmaps.choose_label_set`); each label is meshed in the scan's LPS frame
  (NIfTI's RAS affine converted).

A level that is absent stays absent in the session (no bone there, no label on the X-ray) and is named in
the log and in ``Spine.metadata["missing_levels"]``.

Placement. Reference is the patient frame of the procedural simulator: x left, y posterior, z cranial (LPS
axes), origin at the centre of the L3 vertebral body (of the middle present level when L3 is absent; the
centre of a body is the middle of its bounding box). The spine is translated there and never rotated: if
its axes are not the patient axes, a warning says so (the cranial axis, from the body anchors of the top and
bottom levels, more than 45 degrees from +z; or the arches, whole-vertebra centroid minus body anchor,
more than 45 degrees from +y on average; the body anchor is the deepest inside point, found whatever the
axes) and ``metadata["axes_warning"]`` keeps it.

Per level: ``Vertebra.frame`` (VertebraToReference) is a translation to the body centre (patient axes);
``field`` is the mesh's signed distance (:func:`usx_stream.sim.mesh_field.mesh_signed_distance`) and
``body_field`` the body found by :func:`usx_stream.sim.mesh_field.body_mask`, both in that frame;
``mesh`` is the real mesh itself moved to Reference, ``body_mesh`` the zero level set of ``body_field``;
``params`` is a :class:`MeasuredBody` (what the X-ray simulator reads). The level's anatomical axes of the
body rule: cranial = the sagittal (y-z) part of the direction from the next lower to the next upper
present level's body anchor (deepest inside point), posterior = ``cross(cranial, x)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..frames import LEVELS, Surface
from .anatomy import Spine, Vertebra, mesh_volume_centroid
from .ct_labelmaps import LABELMAP_SUFFIXES, lumbar_label_meshes
from .isosurface import mesh_implicit
from .mesh_field import body_mask, deepest_point, mesh_signed_distance
from .parts import SampledField

log = logging.getLogger(__name__)

__all__ = ["MeasuredBody", "real_spine", "read_level_meshes", "level_mesh_files", "spine_from_meshes"]

FRAME_TO_LPS = {"LPS": np.diag([1.0, 1.0, 1.0]), "RAS": np.diag([-1.0, -1.0, 1.0])}
_AXES_TOLERANCE_DEG = 45.0


@dataclass(frozen=True)
class MeasuredBody:
    """Bounding box of a real vertebral body in its level frame (patient axes), mm.

    The names are those of :class:`~usx_stream.sim.morphometry.VertebraParams` that the X-ray simulator reads
    (it looks for the body within half these extents of the level origin, the box centre); both heights
    are the box's cranio-caudal extent.
    """

    body_width: float
    body_depth: float
    body_height_ant: float
    body_height_post: float


def level_mesh_files(folder: str | Path) -> dict[str, Path]:
    """``{level: file}`` of the meshes of a folder, in L1..L5 order (:func:`usx_stream.io.meshes.level_mesh_files`)."""
    from ..io.meshes import level_mesh_files as files_by_level

    return files_by_level(folder, what="--spine")


def read_level_meshes(path: str | Path, *, labels: str = "auto", scale: float = 1.0,
                      frame: str = "LPS") -> tuple[dict[str, Surface], dict[str, str]]:
    """The real spine's level meshes in LPS, mm, outward-wound, in L1..L5 order.

    Parameters
    ----------
    path : str or Path
        Folder of meshes or a CT label volume.
    labels : {"auto", "verse", "totalsegmentator"}, keyword-only
        Label set of a volume (ignored for meshes).
    scale : float, keyword-only
        Mesh coordinates times ``scale`` are mm (ignored for a volume, whose affine is in mm).
    frame : {"LPS", "RAS", "auto"}, keyword-only
        Axes of the meshes (ignored for a volume); ``auto`` finds them from the spine itself.

    Returns
    -------
    meshes : dict[str, Surface]
        ``(V, 3)`` vertices in LPS mm.
    info : dict[str, str]
        ``source``, ``kind`` and, for a volume, ``label_set`` and ``labels_chosen_by``.
    """
    from ..io.meshes import check_vertebra_size, read_mesh

    path = Path(path)
    if frame not in FRAME_TO_LPS and frame != "auto":
        raise InputError(f"--frame: expected LPS, RAS or auto, got {frame!r}")
    if not path.exists():
        raise InputError(f"--spine {path}: not found")
    if path.is_dir():
        meshes = {}
        for level, file in level_mesh_files(path).items():
            try:
                m = read_mesh(file, scale=scale, frame="LPS")
            except ValueError as e:
                raise InputError(f"--spine {file}: {e}") from e
            if len(m.triangles) == 0:
                raise InputError(f"--spine {file}: the mesh has no triangle")
            meshes[level] = Surface(np.asarray(m.vertices_mm, np.float64) @ FRAME_TO_LPS.get(frame, np.eye(3)).T,
                                    np.asarray(m.triangles, np.int64), frame="LPS", name=level)
            check_vertebra_size(file, meshes[level].vertices_mm, what="--spine", scale=scale)
        info = {"kind": "meshes", "frame": frame, "scale": f"{scale:g}"}
        if frame == "auto":
            meshes, rotation = _rotated_to_patient_axes(meshes, path)
            info["auto_rotation"] = " ".join(f"{v:.4f}" for v in rotation.ravel())
    elif path.name.lower().endswith(LABELMAP_SUFFIXES):
        meshes, found = lumbar_label_meshes(path, labels=labels)
        info = {"kind": "labelmap", "label_set": found["label_set"], "labels_chosen_by": found["chosen_by"]}
    else:
        raise InputError(f"--spine {path}: expected a folder of meshes or a label volume "
                         f"({', '.join(LABELMAP_SUFFIXES)})")
    out = {}
    for level, m in meshes.items():
        volume, _ = mesh_volume_centroid(m.vertices_mm, m.triangles)
        tris = m.triangles[:, ::-1].copy() if volume < 0 else m.triangles
        out[level] = Surface(m.vertices_mm, tris, frame="LPS", name=level)
    return out, {"source": str(path), **info}


def _rotated_to_patient_axes(meshes: dict[str, Surface], path: Path) -> tuple[dict[str, Surface], np.ndarray]:
    """The meshes turned about their common centroid so that the spine's own axes become LPS (``frame="auto"``).

    Cranial: from the lowest present level's volume centroid to the highest's; posterior: the mean direction
    from each body's core (the inside points deeper than 0.6 of the deepest: the thick body, not the thin
    arch) to its vertebra's volume centroid (pulled back by the arch), made orthogonal to cranial; left =
    posterior x cranial. Centroids and cores are averages, so the axes do not jump with the grid as the
    deepest point alone does. A proper rotation: meshes mirrored left for right stay mirrored (no geometry
    of the spine tells). Returns the turned meshes and the (3, 3) rotation (rows: the L, P, S axes in the
    given coordinates)."""
    if len(meshes) < 2:
        raise InputError(f"--spine {path} --frame auto: needs two levels or more to find the cranial axis, got "
                         f"{', '.join(meshes)}")
    centroids, arches = {}, []
    for lv, m in meshes.items():
        fld = mesh_signed_distance(m.vertices_mm, m.triangles, spacing_mm=1.5)
        core = fld.origin_mm + np.argwhere(fld.values <= 0.6 * fld.values.min()).mean(axis=0) * fld.spacing_mm
        centroids[lv] = mesh_volume_centroid(m.vertices_mm, m.triangles)[1]
        arch = centroids[lv] - core
        arches.append(arch / max(np.linalg.norm(arch), 1e-9))
    levels = list(meshes)
    up = centroids[levels[0]] - centroids[levels[-1]]
    up /= np.linalg.norm(up)
    post = np.mean(arches, axis=0)
    post -= (post @ up) * up
    if np.linalg.norm(post) < 1e-6:
        raise InputError(f"--spine {path} --frame auto: the arches do not point one way; give --frame LPS or RAS")
    post /= np.linalg.norm(post)
    rotation = np.stack([np.cross(post, up), post, up])
    centre = np.mean([m.vertices_mm.mean(axis=0) for m in meshes.values()], axis=0)
    turned = {lv: Surface((m.vertices_mm - centre) @ rotation.T + centre, m.triangles, frame="LPS", name=lv)
              for lv, m in meshes.items()}
    log.info("%s: turned to the spine's own axes (--frame auto): cranial was %s, posterior %s", path,
             np.round(up, 2).tolist(), np.round(post, 2).tolist())
    return turned, rotation


def _cranial_axes(anchors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per level, the unit sagittal (y-z) direction from the next lower to the next upper level's anchor."""
    levels = list(anchors)
    out = {}
    for i, lv in enumerate(levels):
        up = anchors[levels[max(i - 1, 0)]] - anchors[levels[min(i + 1, len(levels) - 1)]]
        up[0] = 0.0
        n = np.linalg.norm(up)
        out[lv] = up / n if n > 1e-6 else np.array([0.0, 0.0, 1.0])
    return out


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    c = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _axes_warning(anchors: dict, centroids: dict) -> str:
    """Empty when the spine's axes look like the patient axes; else what looks wrong."""
    problems = []
    levels = list(anchors)
    if len(levels) > 1:
        cranial = anchors[levels[0]] - anchors[levels[-1]]
        angle = _angle_deg(cranial, np.array([0.0, 0.0, 1.0]))
        if angle > _AXES_TOLERANCE_DEG:
            problems.append(f"{levels[0]} is not cranial (+z) of {levels[-1]} ({angle:.0f} deg from +z)")
    # the arch pulls the whole vertebra's centroid posterior of the body's deepest point (axis-free)
    arch = np.mean([(centroids[lv] - anchors[lv]) / max(np.linalg.norm(centroids[lv] - anchors[lv]), 1e-9)
                    for lv in levels], axis=0)
    angle = _angle_deg(arch, np.array([0.0, 1.0, 0.0]))
    if angle > _AXES_TOLERANCE_DEG:
        problems.append(f"the arches are not posterior (+y) of the bodies ({angle:.0f} deg from +y)")
    return "; ".join(problems)


def real_spine(path: str | Path, *, labels: str = "auto", scale: float = 1.0, frame: str = "LPS",
               spacing_mm: float = 1.0) -> Spine:
    """Read a real spine and place it in Reference (see the module docstring).

    Parameters
    ----------
    path : str or Path
        Folder of per-level meshes or a CT label volume.
    labels, scale, frame : keyword-only
        See :func:`read_level_meshes`.
    spacing_mm : float, keyword-only
        Grid spacing of the fields and of the body meshes, mm.

    Returns
    -------
    Spine
        The present levels only; ``lordosis_deg`` is the angle between the top and bottom levels' cranial
        axes; ``metadata`` (str values) holds the source, the label set, the missing levels, the
        placement (``lps_to_reference_mm``: the translation applied) and any axes warning.

    Raises
    ------
    InputError
        Unreadable input, no level found.
    """
    meshes, info = read_level_meshes(path, labels=labels, scale=scale, frame=frame)
    return spine_from_meshes(meshes, info, spacing_mm=spacing_mm)


def spine_from_meshes(meshes: dict[str, Surface], info: dict[str, str], *, spacing_mm: float = 1.0) -> Spine:
    """A spine from level meshes already in LPS mm, in place, outward-wound (what :func:`read_level_meshes`
    returns; also a shape-model draw), placed in Reference as :func:`real_spine` does.

    ``info`` goes into ``Spine.metadata`` (it names the source)."""
    if not meshes:
        raise InputError(f"{info.get('source', 'spine')}: no lumbar level")
    path = info.get("source", "spine")
    fields = {lv: mesh_signed_distance(m.vertices_mm, m.triangles, spacing_mm=spacing_mm)
              for lv, m in meshes.items()}
    anchors = {lv: deepest_point(f) for lv, f in fields.items()}
    cranial = _cranial_axes(anchors)
    x = np.array([1.0, 0.0, 0.0])
    bodies, centres, boxes = {}, {}, {}
    for lv, f in fields.items():
        region = body_mask(f, posterior=np.cross(cranial[lv], x), cranial=cranial[lv])
        idx = np.argwhere(region.mask)
        lo, hi = f.origin_mm + idx.min(axis=0) * f.spacing_mm, f.origin_mm + idx.max(axis=0) * f.spacing_mm
        bodies[lv], centres[lv], boxes[lv] = region, 0.5 * (lo + hi), hi - lo
    present = list(meshes)
    missing = [lv for lv in LEVELS if lv not in meshes]
    origin_level = "L3" if "L3" in meshes else present[len(present) // 2]
    origin = centres[origin_level]
    centroids = {lv: mesh_volume_centroid(m.vertices_mm, m.triangles)[1] for lv, m in meshes.items()}
    warning = _axes_warning(anchors, centroids)
    if warning:
        log.warning("%s: the spine's axes do not look like the patient axes (x left, y posterior, z cranial): "
                    "%s; it is placed as given, not rotated (meshes in RAS? try --frame RAS)", path, warning)
    if missing:
        log.info("%s: levels %s absent; simulated as absent", path, ", ".join(missing))
    vertebrae = {}
    for lv, m in meshes.items():
        shift = centres[lv]
        frame_m = np.eye(4)
        frame_m[:3, 3] = shift - origin
        f, b = fields[lv], bodies[lv].field
        whole = SampledField(f.values, f.origin_mm - shift, f.spacing_mm)
        body = SampledField(b.values, b.origin_mm - shift, b.spacing_mm)
        bv, bt = mesh_implicit(body.values, origin_mm=body.origin_mm, spacing_mm=body.spacing_mm)
        mesh_ref = Surface(m.vertices_mm - origin, m.triangles, frame="Reference", name=lv)
        body_ref = Surface(bv + frame_m[:3, 3], bt, frame="Reference", name=f"{lv}_body")
        w, d, h = boxes[lv]
        vertebrae[lv] = Vertebra(level=lv, mesh=mesh_ref, body_mesh=body_ref, centroid_mm=centroids[lv] - origin,
                                 frame=frame_m, field=whole, body_field=body,
                                 params=MeasuredBody(float(w), float(d), float(h), float(h)))
        log.info("%s %s: body %.0f x %.0f x %.0f mm (width, depth, height)%s", path, lv, w, d, h,
                 "" if bodies[lv].found_wall else ", posterior wall not found (fallback cut)")
    lordosis = _angle_deg(cranial[present[0]], cranial[present[-1]])
    meta = {**info, "levels": " ".join(present), "missing_levels": " ".join(missing),
            "reference_origin": f"{origin_level} body centre",
            "lps_to_reference_mm": " ".join(f"{v:.3f}" for v in -origin),
            "body_rule": "usx_stream.sim.mesh_field.body_mask", "axes_warning": warning}
    return Spine(vertebrae=vertebrae, lordosis_deg=lordosis, metadata=meta)
