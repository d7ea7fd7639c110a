"""Point cloud -> watertight mesh: analytic shapes, a real vertebra, the budget, the checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from surface_shapes import signed_volume, sphere_points, torus_points

from usx_stream.frames import Surface
from usx_stream.surface.mesh import is_watertight, mesh_points, sample_surface, vertex_normals

TETRA = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)


def test_sphere_is_closed_accurate_and_outward():
    rng = np.random.default_rng(0)
    s = mesh_points(sphere_points(3000, 20.0, rng) + [5, -3, 100], frame="Reference", name="L3")
    assert is_watertight(s.triangles) and len(s.triangles) <= 10000
    r = np.linalg.norm(s.vertices_mm - [5, -3, 100], axis=1)
    assert np.abs(r - 20).max() < 0.3
    assert signed_volume(s) == pytest.approx(4 / 3 * np.pi * 20 ** 3, rel=0.03)     # > 0: wound outwards
    assert np.all(np.einsum("ij,ij->i", s.normals, s.vertices_mm - [5, -3, 100]) > 0)
    assert (s.frame, s.name) == ("Reference", "L3")


def test_torus_keeps_its_hole():
    rng = np.random.default_rng(1)
    pts = torus_points(6000, 20.0, 7.0, rng)
    s = mesh_points(pts)
    assert is_watertight(s.triangles)
    edges = np.unique(np.sort(np.concatenate([s.triangles[:, [0, 1]], s.triangles[:, [1, 2]],
                                              s.triangles[:, [2, 0]]]), axis=1), axis=0)
    assert len(s.vertices_mm) - len(edges) + len(s.triangles) == 0          # Euler characteristic of a torus
    d, _ = cKDTree(pts).query(s.vertices_mm)
    assert np.percentile(d, 95) < 1.5


def test_budget_is_met_by_coarsening():
    rng = np.random.default_rng(2)
    s = mesh_points(sphere_points(3000, 20.0, rng), triangle_budget=600, grid_mm=1.0)
    assert 0 < len(s.triangles) <= 600 and is_watertight(s.triangles)


def test_real_vertebra_surface(vertebrae_data):
    from usx_stream._deps import import_open3d

    o3d = import_open3d()
    m = o3d.io.read_triangle_mesh(str(vertebrae_data / "verse_L1" / "sub-verse013_segment_20.ply"))
    gt = Surface(np.asarray(m.vertices), np.asarray(m.triangles))
    cloud = sample_surface(gt, 4096, seed=3)
    s = mesh_points(cloud)
    assert is_watertight(s.triangles) and len(s.triangles) <= 10000

    def to_surface(src: Surface, dst: Surface) -> np.ndarray:
        """Exact distances from points sampled on ``src`` to the triangles of ``dst``, mm."""
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(dst.vertices_mm.astype(np.float32), dst.triangles.astype(np.uint32))
        pts = sample_surface(src, 20000, seed=4).astype(np.float32)
        return scene.compute_distance(o3d.core.Tensor(pts)).numpy()

    d1, d2 = to_surface(s, gt), to_surface(gt, s)
    assd = np.concatenate([d1, d2]).mean()
    hd95 = max(np.percentile(d1, 95), np.percentile(d2, 95))
    assert assd < 0.3 and hd95 < 1.0, (assd, hd95)


def test_open3d_methods_run():
    rng = np.random.default_rng(3)
    pts = sphere_points(2000, 15.0, rng)
    poisson = mesh_points(pts, method="poisson", poisson_depth=5, triangle_budget=2000)
    assert 0 < len(poisson.triangles) <= 2000
    assert np.abs(np.linalg.norm(poisson.vertices_mm, axis=1) - 15).mean() < 0.5
    bp = mesh_points(pts, method="ball_pivoting")
    assert len(bp.triangles) > 1000


def test_empty_and_degenerate_inputs():
    for pts in (np.zeros((0, 3)), np.ones((3, 3)), np.full((10, 3), np.nan)):
        s = mesh_points(pts)
        assert s.vertices_mm.shape == (0, 3) and s.triangles.shape == (0, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="marching"), "surface.method: must be one of"),
    (dict(triangle_budget=50), "surface.triangle_budget: must be an integer >= 100, got 50"),
    (dict(grid_mm=0), "surface.grid_mm: must be > 0, got 0"),
    (dict(offset_mm=-1), "surface.offset_mm: must be >= 0"),
    (dict(project_k=-1), "surface.project_k: must be an integer >= 0"),
    (dict(poisson_depth=13), "surface.poisson_depth: must be in \\[4, 12\\], got 13"),
])
def test_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mesh_points(np.zeros((10, 3)), **kwargs)


def test_is_watertight():
    assert is_watertight(TETRA)
    assert not is_watertight(TETRA[:3])                                      # a hole
    flipped = TETRA.copy()
    flipped[0] = flipped[0, ::-1]
    assert not is_watertight(flipped)                                        # inconsistent winding
    assert not is_watertight(np.zeros((0, 3), int))
    assert not is_watertight(np.array([[0, 0, 1]]))                          # degenerate


def test_normals_and_sampling_on_a_tetrahedron():
    n = vertex_normals(TETRA_V, TETRA)
    assert np.allclose(np.linalg.norm(n, axis=1), 1)
    assert n[1] @ np.array([1, -1, -1]) > 0                                   # outward at (1, 0, 0)
    s = Surface(TETRA_V, TETRA)
    pts = sample_surface(s, 5000, seed=0)
    on_face = (np.isclose(pts, 0, atol=1e-12).any(axis=1)) | np.isclose(pts.sum(axis=1), 1)
    assert on_face.all()
    # The slanted face has sqrt(3) times the area of each axis face: it gets that share of samples.
    slanted = np.isclose(pts.sum(axis=1), 1) & ~np.isclose(pts, 0, atol=1e-12).any(axis=1)
    assert slanted.mean() == pytest.approx(np.sqrt(3) / (3 + np.sqrt(3)), abs=0.03)
    assert sample_surface(s, 0).shape == (0, 3)


def test_outliers_are_dropped_and_a_far_point_does_not_blow_up_the_grid():
    rng = np.random.default_rng(4)
    pts = np.vstack([sphere_points(3000, 20.0, rng), [[60.0, 0, 0], [0, -70.0, 5]], [[5000.0, 0, 0]]])
    s = mesh_points(pts)
    assert is_watertight(s.triangles)
    r = np.linalg.norm(s.vertices_mm, axis=1)
    assert np.abs(r - 20).max() < 1.0                   # only the sphere is left


def test_grid_is_capped(caplog):
    from usx_stream.surface import distance_field

    rng = np.random.default_rng(5)
    a = sphere_points(1500, 10.0, rng)
    pts = np.vstack([a, a + [400.0, 0, 0]])        # two dense balls far apart: no outliers
    with caplog.at_level("WARNING"):
        verts, tris = distance_field.distance_field_mesh(pts, grid_mm=0.5, max_cells=200_000)
    assert "coarsened" in caplog.text and is_watertight(tris)
