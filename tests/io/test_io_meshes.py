"""Meshes: real vertebra surfaces (PLY, OBJ in metres), round trips through PLY/STL/OBJ, hand-written files."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from usx_stream.frames import Surface
from usx_stream.io.meshes import read_mesh, write_mesh


def _ply_counts(path):
    head = path.read_bytes()[:2000].split(b"end_header")[0].decode("latin-1")
    counts = dict(line.split()[1:3] for line in head.splitlines() if line.startswith("element"))
    return int(counts["vertex"]), int(counts["face"])


def _closed(surface: Surface) -> bool:
    """Every edge is shared by exactly two triangles."""
    t = surface.triangles
    edges = np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return bool(np.all(counts == 2))


def test_reads_every_real_ply(vertebrae_data):
    paths = sorted(vertebrae_data.glob("*/*.ply"))
    assert len(paths) == 9
    for path in paths:
        s = read_mesh(path)
        assert (len(s.vertices_mm), len(s.triangles)) == _ply_counts(path)
        extent = np.ptp(s.vertices_mm, axis=0)
        assert np.all((extent > 30) & (extent < 120)), (path.name, extent)  # a lumbar vertebra, in mm
        assert s.name == path.stem and s.triangles.dtype == np.int64
    verse = read_mesh(vertebrae_data / "verse_L1" / "sub-verse010_segment_20.ply")
    assert verse.normals is not None
    np.testing.assert_allclose(np.linalg.norm(verse.normals, axis=1), 1.0, atol=1e-3)


def test_reads_obj_in_metres_with_scale(vertebrae_data):
    path = vertebrae_data / "visible_human_male_L1-L5" / "L3_Schrumpfverpacken.obj"
    lines = path.read_text(encoding="latin-1").splitlines()
    n_v = sum(line.startswith("v ") for line in lines)
    n_f = sum(line.startswith("f ") for line in lines)
    metres = read_mesh(path)
    mm = read_mesh(path, scale=1000.0)
    assert (len(mm.vertices_mm), len(mm.triangles)) == (n_v, n_f)
    first_v = [float(v) for v in next(line for line in lines if line.startswith("v ")).split()[1:4]]
    np.testing.assert_array_equal(metres.vertices_mm[0], first_v)
    np.testing.assert_allclose(mm.vertices_mm, metres.vertices_mm * 1000.0)
    assert np.all((np.ptp(mm.vertices_mm, axis=0) > 30) & (np.ptp(mm.vertices_mm, axis=0) < 120))
    assert mm.normals is None  # the file's normals are per face, not per vertex
    assert _closed(mm)  # shrink-wrapped surfaces are watertight


def _tetra(dtype=np.float64, normals=True) -> Surface:
    v = np.array([[0, 0, 0], [10.5, 0, 0], [0, 7.25, 0], [0, 0, 3.125]], dtype=dtype) + np.array([1 / 3, 0, -2], dtype)
    t = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    n = (v - v.mean(axis=0)) / np.linalg.norm(v - v.mean(axis=0), axis=1, keepdims=True) if normals else None
    return Surface(vertices_mm=v, triangles=t, normals=n, name="tetra")


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("normals", [True, False])
def test_ply_obj_round_trip_is_exact(tmp_path, suffix, binary, normals):
    s = _tetra(normals=normals)
    back = read_mesh(write_mesh(tmp_path / f"m{suffix}", s, binary=binary))
    assert np.array_equal(back.vertices_mm, s.vertices_mm) and np.array_equal(back.triangles, s.triangles)
    if normals:
        np.testing.assert_array_equal(back.normals, s.normals)
    else:
        assert back.normals is None


def test_ply_float32_vertices_stay_float32_sized(tmp_path):
    s = _tetra(dtype=np.float32, normals=False)
    path = write_mesh(tmp_path / "f.ply", s)
    assert b"property float x" in path.read_bytes()[:400]
    assert np.array_equal(read_mesh(path).vertices_mm, s.vertices_mm.astype(np.float64))


@pytest.mark.parametrize("binary", [True, False])
def test_stl_round_trip_keeps_triangle_geometry(tmp_path, vertebrae_data, binary):
    s = read_mesh(vertebrae_data / "clouthier_mean_L2-L5" / "mean_L2.ply")
    back = read_mesh(write_mesh(tmp_path / "m.stl", s, binary=binary))
    assert len(back.triangles) == len(s.triangles)
    assert len(back.vertices_mm) == len(s.vertices_mm)  # shared corners merged back into vertices
    corners = s.vertices_mm[s.triangles].astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(back.vertices_mm[back.triangles], corners)
    assert _closed(back) == _closed(s)


def test_hand_written_binary_big_endian_ply_with_quads_and_extra_elements(tmp_path):
    head = (b"ply\nformat binary_big_endian 1.0\ncomment made by hand\nelement vertex 5\n"
            b"property double x\nproperty double y\nproperty double z\nproperty uchar red\n"
            b"element face 2\nproperty uchar flags\nproperty list uchar uint vertex_index\n"
            b"element edge 1\nproperty int vertex1\nproperty int vertex2\nend_header\n")
    verts = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0.5, 0.5, 1)]
    body = b"".join(struct.pack(">dddB", *v, 200) for v in verts)
    body += struct.pack(">BBIIII", 7, 4, 0, 1, 2, 3) + struct.pack(">BBIII", 7, 3, 0, 1, 4)
    body += struct.pack(">ii", 0, 4)
    (tmp_path / "q.ply").write_bytes(head + body)
    s = read_mesh(tmp_path / "q.ply")
    np.testing.assert_array_equal(s.vertices_mm, np.array(verts, float))
    np.testing.assert_array_equal(s.triangles, [[0, 1, 2], [0, 2, 3], [0, 1, 4]])


def test_hand_written_ascii_ply_and_obj_polygons(tmp_path):
    (tmp_path / "a.ply").write_text("ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
                                    "property float z\nelement face 1\nproperty list uchar int vertex_indices\n"
                                    "end_header\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    s = read_mesh(tmp_path / "a.ply", scale=2.0)
    np.testing.assert_array_equal(s.vertices_mm[2], [2, 2, 0])
    np.testing.assert_array_equal(s.triangles, [[0, 1, 2], [0, 2, 3]])
    (tmp_path / "a.obj").write_text("# quad + negative indices\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n"
                                    "vt 0 0\nf 1/1 2/1 3/1 4/1\nf -4 -2 -1\nv 2 2 2\nf 5 1 2 3 4\n")
    o = read_mesh(tmp_path / "a.obj")
    np.testing.assert_array_equal(o.triangles, [[0, 1, 2], [0, 2, 3], [0, 2, 3], [4, 0, 1], [4, 1, 2], [4, 2, 3]])


@pytest.mark.parametrize("name, content, match", [
    ("bad.ply", b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nend_header\n1\n", "PLY"),
    ("bad2.ply", b"ply\nformat ascii 1.0\nelement vertex one\nend_header\n", "malformed PLY header line 3"),
    ("bad.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", "out of range"),
    ("bad2.obj", b"v 0 0 zero\n", "bad2.obj:1"),
    ("bad.stl", b"this is not an stl file at all", "STL"),
])
def test_malformed_meshes_are_reported(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_mesh(tmp_path / name)


def test_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        read_mesh(tmp_path / "x.ply", scale=0)
    with pytest.raises(ValueError, match="suffix"):
        write_mesh(tmp_path / "x.vtk", _tetra())
    bad = _tetra()
    bad.triangles = np.array([[0, 1, 7]])
    with pytest.raises(ValueError, match="out of range"):
        write_mesh(tmp_path / "x.ply", bad)
