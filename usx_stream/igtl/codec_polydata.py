"""POLYDATA content codec, big-endian throughout (pyigtl writes cell indices little-endian; we do not).

Content layout::

    NPOINTS u32 | NVERTICES u32 | SIZE_VERTICES u32 | NLINES u32 | SIZE_LINES u32 | NPOLYGONS u32
    | SIZE_POLYGONS u32 | NTRIANGLE_STRIPS u32 | SIZE_TRIANGLE_STRIPS u32 | NATTRIBUTES u32
    | POINTS f32[NPOINTS][3] | VERTICES, LINES, POLYGONS, STRIPS: u32 cell arrays (n, i0 .. in-1)...
    | per attribute: TYPE u8 (low nibble 0 scalar, 1 vector, 2 normal, 3 tensor, 4 RGBA; 0x10 = cell data)
      NCOMPONENTS u8, N u32 | attribute names, each NUL-terminated, padded to an even length
    | per attribute: f32[N][NCOMPONENTS]
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from . import codec

POLY_HEAD = struct.Struct(">10I")
ATTR_HEAD = struct.Struct(">BBI")
ATTR_KINDS = {"scalar": 0, "vector": 1, "normal": 2, "tensor": 3, "rgba": 4}
_KIND_NAMES = {v: k for k, v in ATTR_KINDS.items()}
_FIXED_COMPONENTS = {"vector": 3, "normal": 3, "tensor": 9, "rgba": 4}
CELL_KINDS = ("vertices", "lines", "polygons", "strips")


@dataclass
class PolyAttribute:
    """Per-point or per-cell data: ``data`` (N, C) float32, ``kind`` scalar|vector|normal|tensor|rgba."""

    name: str
    data: np.ndarray
    kind: str = "scalar"
    on_cells: bool = False


@dataclass
class PolyData:
    """A VTK-style poly data.

    Attributes
    ----------
    points : (N, 3) float32 ndarray
        Point coordinates, mm.
    vertices, lines, polygons, strips : (L,) uint32 ndarray
        VTK legacy cell arrays: for each cell its point count then its point indices.
    attributes : list[PolyAttribute]
    """

    points: np.ndarray
    vertices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    polygons: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    strips: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    attributes: list[PolyAttribute] = field(default_factory=list)

    @classmethod
    def from_triangles(cls, points, triangles, *, normals=None, scalars=None) -> "PolyData":
        """Triangle mesh: ``points`` (N, 3) mm, ``triangles`` (T, 3) indices, optional per-point
        ``normals`` (N, 3) and ``scalars`` (N,) or (N, C)."""
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        tri = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
        if tri.size and (tri.min() < 0 or tri.max() >= len(pts)):
            raise ValueError(f"triangles: indices must lie in [0, {len(pts)}), got [{tri.min()}, {tri.max()}]")
        cells = np.empty((len(tri), 4), dtype=np.uint32)
        cells[:, 0] = 3
        cells[:, 1:] = tri
        attrs = []
        if normals is not None:
            attrs.append(PolyAttribute("Normals", np.asarray(normals, np.float32).reshape(len(pts), 3), "normal"))
        if scalars is not None:
            s = np.asarray(scalars, np.float32)
            attrs.append(PolyAttribute("Scalars", s.reshape(len(pts), -1), "scalar"))
        return cls(pts, polygons=cells.reshape(-1), attributes=attrs)

    def triangles(self) -> np.ndarray:
        """``(T, 3)`` int64 triangle indices; raises ValueError when a polygon is not a triangle."""
        p = np.asarray(self.polygons, dtype=np.int64)
        if p.size % 4 or (p.size and np.any(p[::4] != 3)):
            raise ValueError("PolyData.polygons: not all polygons are triangles")
        return p.reshape(-1, 4)[:, 1:]

    def attribute(self, name: str) -> PolyAttribute | None:
        return next((a for a in self.attributes if a.name == name), None)


def count_cells(cells: np.ndarray, n_points: int, *, label: str) -> int:
    """Number of cells in a VTK legacy cell array; raises ValueError when it is malformed."""
    cells = np.asarray(cells, dtype=np.int64)
    if cells.size == 0:
        return 0
    if cells.size % 4 == 0 and np.all(cells[::4] == 3):  # all triangles: the common case, vectorised
        _check_indices(cells.reshape(-1, 4)[:, 1:], n_points, label)
        return cells.size // 4
    starts, pos = [], 0
    while pos < cells.size:
        if cells[pos] < 1:
            raise ValueError(f"{label}: cell {len(starts)} has {cells[pos]} points")
        starts.append(pos)
        pos += int(cells[pos]) + 1
    if pos != cells.size:
        raise ValueError(f"{label}: last cell runs past the end of the array")
    mask = np.ones(cells.size, bool)
    mask[starts] = False
    _check_indices(cells[mask], n_points, label)
    return len(starts)


def _check_indices(idx: np.ndarray, n_points: int, label: str) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= n_points):
        raise ValueError(f"{label}: point index out of range [0, {n_points}): [{idx.min()}, {idx.max()}]")


def _attr_layout(attr: PolyAttribute, n_expected: int) -> tuple[int, np.ndarray]:
    if attr.kind not in ATTR_KINDS:
        raise ValueError(f"PolyAttribute.kind: expected one of {sorted(ATTR_KINDS)}, got {attr.kind!r}")
    data = np.asarray(attr.data, dtype=np.float32)
    data = data.reshape(len(data), -1) if data.ndim else data.reshape(1, 1)
    comps = data.shape[1]
    want = _FIXED_COMPONENTS.get(attr.kind)
    if (want and comps != want) or not 1 <= comps <= (want or 4):
        raise ValueError(f"PolyAttribute {attr.name!r}: {attr.kind} with {comps} components")
    if len(data) != n_expected:
        raise ValueError(f"PolyAttribute {attr.name!r}: {len(data)} values, expected {n_expected}")
    return comps, data


def encode_polydata(poly: PolyData) -> list:
    pts = np.asarray(poly.points, dtype=np.float32).reshape(-1, 3)
    arrays = [np.asarray(getattr(poly, k), dtype=np.uint32).reshape(-1) for k in CELL_KINDS]
    counts = [count_cells(a, len(pts), label=f"PolyData.{k}") for a, k in zip(arrays, CELL_KINDS)]
    n_cells = sum(counts)
    head = [len(pts)]
    for a, n in zip(arrays, counts):
        head += [n, a.size * 4]
    head.append(len(poly.attributes))
    parts = [POLY_HEAD.pack(*head), pts.astype(">f4").tobytes()] + [a.astype(">u4").tobytes() for a in arrays]
    attr_heads, names, datas = [], b"", []
    for attr in poly.attributes:
        comps, data = _attr_layout(attr, n_cells if attr.on_cells else len(pts))
        attr_heads.append(ATTR_HEAD.pack(ATTR_KINDS[attr.kind] | (0x10 if attr.on_cells else 0), comps, len(data)))
        names += attr.name.encode("ascii") + b"\0"
        datas.append(data.astype(">f4").tobytes())
    if len(names) % 2:
        names += b"\0"
    return parts + attr_heads + ([names] if poly.attributes else []) + datas


def _take(view: memoryview, pos: int, n: int, what: str) -> tuple[memoryview, int]:
    if n < 0 or pos + n > len(view):
        raise codec.DecodeError("bad_content", f"POLYDATA {what}: needs {n} bytes at {pos}, content is {len(view)}")
    return view[pos:pos + n], pos + n


def decode_polydata(view: memoryview) -> PolyData:
    if len(view) < POLY_HEAD.size:
        raise codec.DecodeError("bad_content", f"POLYDATA content of {len(view)} bytes < 40")
    h = POLY_HEAD.unpack_from(view)
    n_points, n_attr = h[0], h[9]
    raw, pos = _take(view, POLY_HEAD.size, n_points * 12, "points")
    points = np.frombuffer(raw, ">f4").astype(np.float32).reshape(-1, 3)
    cells = {}
    for k, (n, size) in zip(CELL_KINDS, (h[1:3], h[3:5], h[5:7], h[7:9])):
        raw, pos = _take(view, pos, size, k)
        if size % 4:
            raise codec.DecodeError("bad_content", f"POLYDATA {k}: size {size} is not a multiple of 4")
        cells[k] = np.frombuffer(raw, ">u4").astype(np.uint32)
        try:
            found = count_cells(cells[k], n_points, label=f"POLYDATA {k}")
        except ValueError as e:
            raise codec.DecodeError("bad_content", str(e)) from e
        if found != n:
            raise codec.DecodeError("bad_content", f"POLYDATA {k}: header says {n} cells, array holds {found}")
    heads = []
    for _ in range(n_attr):
        raw, pos = _take(view, pos, ATTR_HEAD.size, "attribute header")
        heads.append(ATTR_HEAD.unpack(raw))
    attrs = _decode_attributes(view, pos, heads)
    return PolyData(points, attributes=attrs, **cells)


def _decode_attributes(view: memoryview, pos: int, heads: list) -> list[PolyAttribute]:
    names = []
    start = pos
    for _ in heads:
        end = bytes(view[pos:pos + 256]).find(b"\0")  # names are at most 255 bytes
        if end < 0:
            raise codec.DecodeError("bad_content", "POLYDATA attribute name is not NUL-terminated")
        names.append(bytes(view[pos:pos + end]).decode("ascii", errors="replace"))
        pos += end + 1
    if (pos - start) % 2:
        pos += 1
    attrs = []
    for (type_, comps, n), name in zip(heads, names):
        if (type_ & 0x0F) not in _KIND_NAMES:
            raise codec.DecodeError("bad_content", f"POLYDATA attribute {name!r}: type {type_:#x}")
        raw, pos = _take(view, pos, n * comps * 4, f"attribute {name!r}")
        data = np.frombuffer(raw, ">f4").astype(np.float32).reshape(n, comps)
        attrs.append(PolyAttribute(name, data, _KIND_NAMES[type_ & 0x0F], bool(type_ & 0x10)))
    if pos != len(view):
        raise codec.DecodeError("bad_content", f"POLYDATA: {len(view) - pos} trailing bytes")
    return attrs


codec.register("POLYDATA", encode_polydata, decode_polydata)
