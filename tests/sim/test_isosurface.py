"""Marching tetrahedra: closed, consistently oriented meshes that follow the field's zero level."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.sim.isosurface import edge_use_counts, mesh_implicit


def _grid(spacing: float, half: float = 12.0):
    g = np.arange(-half, half + 1e-9, spacing)
    return np.meshgrid(g, g, g, indexing="ij"), (-half,) * 3


def test_sphere_is_closed_outward_and_accurate():
    (x, y, z), origin = _grid(0.5)
    field = np.sqrt(x * x + y * y + z * z) - 10.0
    verts, tris = mesh_implicit(field, origin_mm=origin, spacing_mm=0.5)
    assert np.all(edge_use_counts(tris) == 2)
    directed = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed)
    np.testing.assert_allclose(np.linalg.norm(verts, axis=1), 10.0, atol=0.02)
    v = verts[tris]
    volume = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0
    assert volume == pytest.approx(4.0 / 3.0 * np.pi * 1000.0, rel=0.01)


def test_touching_blobs_and_grid_zeros_stay_manifold():
    (x, y, z), origin = _grid(1.0)
    # Two spheres that touch at one grid point, and exact zeros on grid points.
    a = np.sqrt((x - 5) ** 2 + y * y + z * z) - 5.0
    b = np.sqrt((x + 5) ** 2 + y * y + z * z) - 5.0
    field = np.minimum(a, b)
    assert np.any(field == 0.0)
    _, tris = mesh_implicit(field, origin_mm=origin, spacing_mm=1.0)
    assert len(tris) > 0 and np.all(edge_use_counts(tris) == 2)


def test_field_without_a_sign_change_gives_an_empty_mesh():
    verts, tris = mesh_implicit(np.ones((4, 4, 4)), origin_mm=(0, 0, 0), spacing_mm=1.0)
    assert verts.shape == (0, 3) and tris.shape == (0, 3)


def test_invalid_input_names_the_argument():
    with pytest.raises(ValueError, match="field"):
        mesh_implicit(np.ones((4, 4)), origin_mm=(0, 0, 0), spacing_mm=1.0)
    with pytest.raises(ValueError, match="spacing_mm"):
        mesh_implicit(np.ones((4, 4, 4)), origin_mm=(0, 0, 0), spacing_mm=0.0)
