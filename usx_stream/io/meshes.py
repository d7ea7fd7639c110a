"""Read and write triangle meshes (PLY, STL, OBJ) as :class:`~usx_stream.frames.Surface`, numpy only.

- PLY: ASCII and binary (either endianness) in, binary little-endian (default) or ASCII out
  (see :mod:`usx_stream.io.ply`);
- STL: ASCII and binary in (coincident facet corners are merged into shared vertices), binary out;
- OBJ: ``v``/``vn``/``f`` in (``f`` corners as ``i``, ``i/t``, ``i/t/n``, ``i//n``; negative indices;
  polygons fanned into triangles), ``v``/``vn``/``f`` out.

``scale`` multiplies the coordinates on read (e.g. ``scale=1000`` for meshes stored in metres), so
``Surface.vertices_mm`` is in millimetres.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from ..frames import Surface
from .ply import read_ply, write_ply

log = logging.getLogger(__name__)

__all__ = ["read_mesh", "write_mesh", "level_mesh_files", "check_vertebra_size"]

_STL_FACET = np.dtype([("normal", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])
_FLOAT = rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STL_VERTEX = re.compile(rb"vertex\s+(" + _FLOAT + rb")\s+(" + _FLOAT + rb")\s+(" + _FLOAT + rb")")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".ply", ".stl", ".obj"):
        raise ValueError(f"mesh file name {path.name!r}: expected a .ply, .stl or .obj suffix")
    return suffix


def read_mesh(path: str | Path, scale: float = 1.0, *, frame: str = "Reference") -> Surface:
    """Read a PLY, STL or OBJ triangle mesh.

    Parameters
    ----------
    path : str or Path
    scale : float
        Factor applied to the coordinates (positive; 1000 converts metres to mm).
    frame : str
        Frame name given to the surface.

    Returns
    -------
    Surface
        ``vertices_mm`` ``(V, 3) float64``, ``triangles`` ``(T, 3) int64``, ``normals`` ``(V, 3)`` or None,
        ``name`` = file stem.
    """
    path = Path(path)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"read_mesh: scale must be a positive number, got {scale!r}")
    suffix = _suffix(path)
    reader = {".ply": read_ply, ".stl": _read_stl, ".obj": _read_obj}[suffix]
    verts, tris, normals = reader(path)
    if tris.size and (tris.min() < 0 or tris.max() >= len(verts)):
        raise ValueError(f"{path}: triangle vertex index out of range [0, {len(verts)}): "
                         f"min {tris.min()}, max {tris.max()}")
    if not np.all(np.isfinite(verts)):
        raise ValueError(f"{path}: non-finite vertex coordinates")
    log.debug("%s: %d vertices, %d triangles", path, len(verts), len(tris))
    return Surface(vertices_mm=verts * float(scale), triangles=tris, normals=normals, frame=frame, name=path.stem)


def _read_stl(path: Path):
    data = path.read_bytes()
    if len(data) >= 84:
        n = int(np.frombuffer(data, "<u4", count=1, offset=80)[0])
        if len(data) == 84 + 50 * n:
            corners = np.frombuffer(data, _STL_FACET, count=n, offset=84)["v"].reshape(-1, 3)
            return (*_merge_corners(corners.astype(np.float64)), None)
    if not data.lstrip().startswith(b"solid"):
        raise ValueError(f"{path}: neither a binary STL (size {len(data)} != 84 + 50 * facets) nor an ASCII STL")
    corners = np.array(_STL_VERTEX.findall(data), dtype=np.float64).reshape(-1, 3)
    if len(corners) % 3 or data.count(b"facet normal") * 3 != len(corners):
        raise ValueError(f"{path}: ASCII STL with {len(corners)} vertex lines for "
                         f"{data.count(b'facet normal')} facets (expected 3 per facet)")
    return (*_merge_corners(corners), None)


def _merge_corners(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """STL stores 3 corners per facet: identical positions become one shared vertex (first-seen order)."""
    if not len(corners):
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    uniq, first, inverse = np.unique(corners, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[inverse.ravel()].reshape(-1, 3).astype(np.int64)


def _obj_indices(raw: list[int], count: list[int], what: str, path: Path) -> np.ndarray:
    """1-based (or negative, relative to the ``count`` elements defined so far) OBJ indices -> 0-based."""
    idx, n = np.asarray(raw, dtype=np.int64), np.asarray(count, dtype=np.int64)
    if np.any(idx == 0):
        raise ValueError(f"{path}: {what} index 0 in a face (OBJ indices start at 1)")
    return np.where(idx > 0, idx - 1, n + idx)


def _read_obj(path: Path):
    """OBJ -> ``(vertices, triangles, normals or None)``; polygons are fanned around their first corner."""
    verts, vnormals, corners = [], [], []  # corners: (vertex token, normal token, #v, #vn) per face corner
    face_sizes = []
    with open(path, "r", encoding="latin-1") as f:
        for lineno, line in enumerate(f, start=1):
            words = line.split()
            if not words or words[0] not in ("v", "vn", "f"):
                continue
            try:
                if words[0] == "f":
                    parts = [w.split("/") for w in words[1:]]
                    corners += [(int(p[0]), int(p[2]) if len(p) > 2 and p[2] else 0, len(verts), len(vnormals))
                                for p in parts]
                    face_sizes.append(len(parts))
                    if len(parts) < 3:
                        raise ValueError(f"face with {len(parts)} corners")
                else:
                    xyz = [float(w) for w in words[1:4]]
                    if len(xyz) != 3:
                        raise ValueError("fewer than 3 coordinates")
                    (verts if words[0] == "v" else vnormals).append(xyz)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: malformed {words[0]!r} line {line.strip()!r}: {e}") from e
    c = np.array(corners, dtype=np.int64).reshape(-1, 4)
    vi = _obj_indices(c[:, 0], c[:, 2], "vertex", path)
    ni = np.where(c[:, 1] == 0, -1, _obj_indices(np.where(c[:, 1] == 0, 1, c[:, 1]), c[:, 3], "normal", path))
    tris, tri_normals = _fan(vi, face_sizes), _fan(ni, face_sizes)
    v = np.array(verts, dtype=np.float64).reshape(-1, 3)
    return v, tris, _obj_vertex_normals(len(v), tris, tri_normals, vnormals)


def _fan(corner_values: np.ndarray, face_sizes: list[int]) -> np.ndarray:
    """Per-corner values of faces with ``face_sizes`` corners -> ``(T, 3)`` triangle fans."""
    sizes = np.asarray(face_sizes, dtype=np.int64)
    if not len(sizes):
        return np.zeros((0, 3), np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    face = np.repeat(np.arange(len(sizes)), sizes - 2)  # one triangle per corner beyond the second
    k = np.arange(len(face)) - np.repeat(np.cumsum(sizes - 2) - (sizes - 2), sizes - 2) + 1
    first, b = starts[face], starts[face] + k
    return np.stack([corner_values[first], corner_values[b], corner_values[b + 1]], axis=1)


def _obj_vertex_normals(n: int, tris: np.ndarray, corner_normals: np.ndarray, vnormals: list) -> np.ndarray | None:
    """Per-vertex normals when every vertex is given exactly one normal (else None: OBJ files often
    carry one normal per face, which is not a vertex normal)."""
    if not vnormals or not len(tris) or np.any(corner_normals < 0) or corner_normals.max() >= len(vnormals):
        return None
    key = np.unique(tris.ravel() * len(vnormals) + corner_normals.ravel())  # (vertex, normal) pairs
    vertex, normal = np.divmod(key, len(vnormals))
    if len(key) != n or len(np.unique(vertex)) != n:
        return None
    out = np.zeros((n, 3))
    out[vertex] = np.asarray(vnormals, dtype=np.float64)[normal]
    return out


def write_mesh(path: str | Path, surface: Surface, *, binary: bool = True) -> Path:
    """Write ``surface`` as PLY (binary unless ``binary=False``), STL (binary unless ``binary=False``) or OBJ.

    Coordinates are written as stored (mm). PLY keeps float32 vertices as ``float`` and anything else
    as ``double``; STL is float32 by definition; OBJ prints shortest round-trip decimals.
    """
    path = Path(path)
    suffix = _suffix(path)
    verts = np.asarray(surface.vertices_mm)
    verts = verts if verts.dtype in (np.float32, np.float64) else verts.astype(np.float64)
    tris = np.asarray(surface.triangles, dtype=np.int64).reshape(-1, 3)
    normals = None if surface.normals is None else np.asarray(surface.normals, dtype=verts.dtype)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"write_mesh: vertices_mm must be (V, 3), got {verts.shape}")
    if tris.size and (tris.min() < 0 or tris.max() >= len(verts)):
        raise ValueError(f"write_mesh: triangle index out of range [0, {len(verts)}): {tris.min()}..{tris.max()}")
    if normals is not None and normals.shape != verts.shape:
        raise ValueError(f"write_mesh: normals {normals.shape} do not match vertices {verts.shape}")
    if suffix == ".ply":
        data = write_ply(path, verts, tris, normals, binary=binary, comment=f"usx-stream {surface.name}".strip())
    elif suffix == ".stl":
        data = _stl_bytes(verts, tris, surface.name, binary)
    else:
        data = _obj_bytes(verts, tris, normals, surface.name)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _facet_normals(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    a, b, c = (verts[tris[:, k]].astype(np.float64) for k in range(3))
    n = np.cross(b - a, c - a)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0)


def _stl_bytes(verts: np.ndarray, tris: np.ndarray, name: str, binary: bool) -> bytes:
    normals = _facet_normals(verts, tris)
    if not binary:
        lines = [f"solid {name}"]
        for n, t in zip(normals, tris):
            lines.append(f"  facet normal {n[0]:.7g} {n[1]:.7g} {n[2]:.7g}\n    outer loop")
            lines += [f"      vertex {v[0]!r} {v[1]!r} {v[2]!r}" for v in verts[t].astype(np.float32).tolist()]
            lines.append("    endloop\n  endfacet")
        return ("\n".join(lines + [f"endsolid {name}"]) + "\n").encode("ascii")
    rec = np.zeros(len(tris), _STL_FACET)
    rec["normal"], rec["v"] = normals, verts[tris]
    head = f"binary STL usx-stream {name}".encode("ascii", "replace")[:80].ljust(80, b" ")
    return head + np.uint32(len(tris)).tobytes() + rec.tobytes()


def _obj_bytes(verts: np.ndarray, tris: np.ndarray, normals: np.ndarray | None, name: str) -> bytes:
    lines = [f"# usx-stream mesh {name}".rstrip(), f"o {name or 'mesh'}"]
    lines += [f"v {x!r} {y!r} {z!r}" for x, y, z in verts.astype(np.float64).tolist()]
    if normals is not None:
        lines += [f"vn {x!r} {y!r} {z!r}" for x, y, z in normals.astype(np.float64).tolist()]
        lines += [f"f {a}//{a} {b}//{b} {c}//{c}" for a, b, c in (tris + 1).tolist()]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in (tris + 1).tolist()]
    return ("\n".join(lines) + "\n").encode("ascii")


LEVEL_MESH_SUFFIXES = (".ply", ".stl", ".obj")


def level_mesh_files(folder: str | Path, *, what: str = "folder") -> dict[str, Path]:
    """``{level: file}`` of a folder of per-vertebra meshes, in L1..L5 order.

    A file belongs to a level when its stem is the level (``L3.ply``) or holds it as a token
    (``verse561_L3.stl``, ``L3-seg.obj``); an exact name wins over a token match.

    Parameters
    ----------
    folder : str or Path
    what : str, keyword-only
        How errors name the folder (e.g. ``"--spine"``, ``"--truth"``).

    Raises
    ------
    InputError
        Two files for one level, or no file for any level.
    """
    from ..errors import InputError
    from ..frames import LEVELS

    folder = Path(folder)
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if not (p.is_file() and p.suffix.lower() in LEVEL_MESH_SUFFIXES):
            continue
        stem = p.stem.upper()
        levels = [lv for lv in LEVELS if stem == lv] or [
            lv for lv in LEVELS if re.search(rf"(?:^|[^A-Z0-9]){lv}(?:[^0-9]|$)", stem)]
        if len(levels) == 1:
            found.setdefault(levels[0], []).append(p)
    out = {}
    for level in LEVELS:
        files = found.get(level, [])
        exact = [p for p in files if p.stem.upper() == level]
        if len(exact) == 1 or len(files) == 1:
            out[level] = (exact or files)[0]
        elif files:
            raise InputError(f"{what} {folder}: several meshes for {level}: {[p.name for p in files]}")
    if not out:
        raise InputError(f"{what} {folder}: no mesh named L1..L5 ({', '.join(LEVEL_MESH_SUFFIXES)}) in the folder")
    return out


# the largest extent of one lumbar vertebra (adult bodies with the arch: ~45-100 mm), with a wide margin
VERTEBRA_SPAN_MM = (20.0, 200.0)
_UNIT_NAMES = {1000.0: "like metres", 10.0: "like centimetres"}


def check_vertebra_size(file: str | Path, vertices_mm: np.ndarray, *, what: str, scale: float | None = None) -> None:
    """Refuse a vertebra mesh whose size is no lumbar vertebra's in mm.

    Meshes in metres or centimetres are common (the Visible Human set is in metres); read as mm, a
    vertebra 1000 times too small has no body to find and registers to nothing.

    Parameters
    ----------
    file : str or Path
        Named in the error, after ``what`` (e.g. ``"--spine"``).
    vertices_mm : (V, 3) array_like
    scale : float, keyword-only
        The ``--scale`` the mesh was read with; the error then suggests the one that fits. None: the
        command has no such option, and the error asks for the mesh in mm.

    Raises
    ------
    InputError
    """
    from ..errors import InputError

    span = float(np.ptp(np.asarray(vertices_mm, dtype=np.float64), axis=0).max())
    if VERTEBRA_SPAN_MM[0] <= span <= VERTEBRA_SPAN_MM[1]:
        return
    factor = 10.0 ** round(np.log10(60.0 / span)) if span > 0 else 1.0
    hint = ""
    if factor != 1.0:
        unit = _UNIT_NAMES.get(factor, f"{factor:g} times too small" if factor > 1 else "too large")
        fix = f"try --scale {scale * factor:g}" if scale is not None else "write the mesh in mm"
        hint = f"; the coordinates look {unit} ({fix})"
    read = f" with --scale {scale:g}" if scale is not None else ""
    raise InputError(f"{what} {file}: the mesh spans {span:.3g} mm{read}, but a lumbar vertebra spans "
                     f"{VERTEBRA_SPAN_MM[0]:g}-{VERTEBRA_SPAN_MM[1]:g} mm{hint}")
