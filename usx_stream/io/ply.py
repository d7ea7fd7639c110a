"""PLY (Stanford polygon format) reading and writing with numpy only.

Reads ASCII, binary little- and big-endian files with any elements and properties (unknown ones are
skipped): vertex ``x y z`` (+ ``nx ny nz`` when present) and face ``vertex_indices``/``vertex_index``
lists, polygons fanned into triangles. Writes binary little-endian (default) or ASCII.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
          "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
          "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_FACE_LISTS = ("vertex_indices", "vertex_index")


@dataclass
class _Element:
    name: str
    count: int
    props: list[tuple[str, str, str | None]] = field(default_factory=list)  # (name, type, list count type)


def _parse_header(f, path: Path) -> tuple[str, list[_Element]]:
    if f.readline().strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (first line is not 'ply')")
    fmt, elements = None, []
    for lineno, raw in enumerate(iter(f.readline, b""), start=2):
        words = raw.decode("latin-1").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append(_Element(words[1], int(words[2])))
            elif words[0] == "property" and words[1] == "list":
                elements[-1].props.append((words[4], _TYPES[words[3]], _TYPES[words[2]]))
            elif words[0] == "property":
                elements[-1].props.append((words[2], _TYPES[words[1]], None))
            else:
                raise ValueError(words[0])
        except (IndexError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: malformed PLY header line {lineno}: {raw.decode('latin-1').strip()!r}") from e
    else:
        raise ValueError(f"{path}: PLY header has no 'end_header'")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    return fmt, elements


def _read_binary_element(buf: memoryview, pos: int, el: _Element, endian: str) -> tuple[dict, int]:
    """One element's columns from ``buf`` at ``pos``; returns ``({prop: array}, new_pos)``."""
    if not any(lt for _, _, lt in el.props):
        dt = np.dtype([(n, endian + t) for n, t, _ in el.props])
        arr = np.frombuffer(buf, dtype=dt, count=el.count, offset=pos)
        return {n: arr[n] for n, _, _ in el.props}, pos + dt.itemsize * el.count
    if el.count == 0:
        return {n: np.zeros((0, 3) if lt else 0) for n, _, lt in el.props}, pos
    # Fast path: every list of this element has the length of the first row's lists.
    fields, off = [], pos
    for n, t, lt in el.props:
        if lt:
            k = int(np.frombuffer(buf, dtype=endian + lt, count=1, offset=off)[0])
            fields += [(n + "#n", endian + lt), (n, endian + t, (k,))]
            off += np.dtype(lt).itemsize + k * np.dtype(t).itemsize
        else:
            fields.append((n, endian + t))
            off += np.dtype(t).itemsize
    dt = np.dtype(fields)
    end = pos + dt.itemsize * el.count
    if end <= len(buf):
        arr = np.frombuffer(buf, dtype=dt, count=el.count, offset=pos)
        if all(np.all(arr[n + "#n"] == dt[n].shape[0]) for n, _, lt in el.props if lt):
            return {n: arr[n] for n, _, _ in el.props}, end
    return _read_binary_rows(buf, pos, el, endian)


def _read_binary_rows(buf: memoryview, pos: int, el: _Element, endian: str) -> tuple[dict, int]:
    """Row-by-row reading for elements whose lists vary in length (mixed polygons)."""
    cols: dict[str, list] = {n: [] for n, _, _ in el.props}
    for _ in range(el.count):
        for n, t, lt in el.props:
            if lt:
                k = int(np.frombuffer(buf, dtype=endian + lt, count=1, offset=pos)[0])
                pos += np.dtype(lt).itemsize
                cols[n].append(np.frombuffer(buf, dtype=endian + t, count=k, offset=pos))
                pos += k * np.dtype(t).itemsize
            else:
                cols[n].append(np.frombuffer(buf, dtype=endian + t, count=1, offset=pos)[0])
                pos += np.dtype(t).itemsize
    return {n: (v if lt else np.array(v)) for (n, _, lt), v in zip(el.props, cols.values())}, pos


def _read_ascii_element(tokens: list[bytes], pos: int, el: _Element) -> tuple[dict, int]:
    if not any(lt for _, _, lt in el.props):
        n = len(el.props)
        block = np.array(tokens[pos:pos + n * el.count], dtype=np.float64).reshape(el.count, n)
        return {name: block[:, i] for i, (name, _, _) in enumerate(el.props)}, pos + n * el.count
    cols: dict[str, list] = {n: [] for n, _, _ in el.props}
    for _ in range(el.count):
        for n, _, lt in el.props:
            if lt:
                k = int(tokens[pos])
                cols[n].append(np.array(tokens[pos + 1:pos + 1 + k], dtype=np.int64))
                pos += 1 + k
            else:
                cols[n].append(float(tokens[pos]))
                pos += 1
    return {n: (v if lt else np.array(v)) for (n, _, lt), v in zip(el.props, cols.values())}, pos


def _triangles(faces, path: Path) -> np.ndarray:
    """Face index lists (an ``(F, k)`` array or a list of arrays) -> ``(T, 3)`` triangle fans."""
    if isinstance(faces, np.ndarray) and faces.ndim == 2:
        k = faces.shape[1]
        if k < 3:
            raise ValueError(f"{path}: faces with {k} vertices")
        return np.concatenate([faces[:, [0, i, i + 1]] for i in range(1, k - 1)]).astype(np.int64) if k > 3 \
            else faces.astype(np.int64)
    tris = [np.stack([f[np.zeros(len(f) - 2, int)], f[1:-1], f[2:]], axis=1) for f in faces if len(f) >= 3]
    return np.concatenate(tris).astype(np.int64) if tris else np.zeros((0, 3), np.int64)


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(vertices (V, 3) float64, triangles (T, 3) int64, normals (V, 3) or None)`` of a PLY file."""
    with open(path, "rb") as f:
        fmt, elements = _parse_header(f, path)
        body = f.read()
    data: dict[str, dict] = {}
    try:
        if fmt == "ascii":
            tokens, pos = body.split(), 0
            for el in elements:
                data[el.name], pos = _read_ascii_element(tokens, pos, el)
        else:
            buf, pos = memoryview(body), 0
            endian = "<" if fmt == "binary_little_endian" else ">"
            for el in elements:
                data[el.name], pos = _read_binary_element(buf, pos, el, endian)
    except (ValueError, IndexError) as e:
        raise ValueError(f"{path}: PLY body does not match its header ({type(e).__name__}: {e})") from e
    vertex = data.get("vertex")
    if vertex is None or not {"x", "y", "z"} <= set(vertex):
        raise ValueError(f"{path}: PLY has no 'vertex' element with x, y, z properties")
    verts = np.stack([vertex[c] for c in "xyz"], axis=1).astype(np.float64)
    normals = np.stack([vertex[c] for c in ("nx", "ny", "nz")], axis=1).astype(np.float64) \
        if {"nx", "ny", "nz"} <= set(vertex) else None
    face = data.get("face", {})
    key = next((k for k in _FACE_LISTS if k in face), None)
    tris = _triangles(face[key], path) if key else np.zeros((0, 3), np.int64)
    return verts, tris, normals


def write_ply(path: Path, vertices: np.ndarray, triangles: np.ndarray, normals: np.ndarray | None,
              *, binary: bool = True, comment: str = "") -> bytes:
    """PLY bytes: float (float32 input) or double vertices, optional normals, uchar/int triangle lists."""
    vtype = "float" if vertices.dtype == np.float32 else "double"
    props = ["x", "y", "z"] + (["nx", "ny", "nz"] if normals is not None else [])
    head = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0"]
    head += [f"comment {c}" for c in comment.splitlines() if c]
    head += [f"element vertex {len(vertices)}"] + [f"property {vtype} {p}" for p in props]
    head += [f"element face {len(triangles)}", "property list uchar int vertex_indices", "end_header"]
    header = ("\n".join(head) + "\n").encode("ascii")
    cols = np.hstack([vertices, normals]) if normals is not None else vertices
    if not binary:
        rows = [" ".join(repr(float(v)) for v in row) for row in cols]
        rows += [f"3 {a} {b} {c}" for a, b, c in triangles]
        return header + ("\n".join(rows) + "\n").encode("ascii")
    vdt = np.dtype([(p, "<f4" if vtype == "float" else "<f8") for p in props])
    vrec = np.empty(len(vertices), vdt)
    for i, p in enumerate(props):
        vrec[p] = cols[:, i]
    fdt = np.dtype([("n", "u1"), ("idx", "<i4", (3,))])
    frec = np.empty(len(triangles), fdt)
    frec["n"], frec["idx"] = 3, triangles
    return header + vrec.tobytes() + frec.tobytes()
