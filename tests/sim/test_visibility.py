"""Ultrasound visibility ray casting and the X-ray labelmap back-projection."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.frames import Surface
from usx_stream.sim.labelmap_points import render_body_labelmap
from usx_stream.sim.visibility import SweepConfig, cast_first_hits, simulate_us_visibility, sweep_rays
from usx_stream.xray.backproject import backproject_to_plane
from usx_stream.xray.geometry import CArmGeometry


def _box(lo, hi) -> Surface:
    """Closed axis-aligned box mesh, outward CCW triangles."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    v = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    t = [tri for a, b, c, d in quads for tri in ((a, b, c), (a, c, d))]
    return Surface(v, np.array(t))


def _sphere(radius: float, centre=(0, 0, 0), n: int = 40) -> Surface:
    th, ph = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n, endpoint=False), indexing="ij")
    v = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3) * radius
    idx = np.arange(n * 2 * n).reshape(n, 2 * n)
    tris = []
    for i in range(n - 1):
        for j in range(2 * n):
            a, b, c, d = idx[i, j], idx[i, (j + 1) % (2 * n)], idx[i + 1, j], idx[i + 1, (j + 1) % (2 * n)]
            tris += [(a, c, b), (b, c, d)]
    return Surface(v + np.asarray(centre, float), np.array(tris))


def test_first_hit_only_front_box_shadows_back_box():
    front = _box([-10, 20, -10], [10, 25, 10])  # posterior = +y: closer to the probe
    back = _box([-30, 0, -10], [30, 5, 10])
    xs = np.arange(-24.5, 25.0, 1.0)  # 50 rays, none on a box edge
    hits = cast_first_hits([front, back], np.column_stack([xs, np.full(50, 100.0), np.zeros(50)]),
                           np.tile([0.0, -1.0, 0.0], (50, 1)))
    on_back = hits.points_mm[hits.mesh_index == 1]
    on_front = hits.points_mm[hits.mesh_index == 0]
    assert len(on_front) == 20 and np.allclose(on_front[:, 1], 25.0)
    # The back box is seen only outside the front box's shadow, at its posterior face.
    assert len(on_back) == 30 and np.all(np.abs(on_back[:, 0]) > 10) and np.allclose(on_back[:, 1], 5.0)


def test_sweep_sees_posterior_faces_and_respects_incidence():
    box = _box([-15, -15, -15], [15, 15, 15])
    pts = simulate_us_visibility([box], posterior=[0, 1, 0], cranial=[0, 0, 1],
                                 config=SweepConfig(tilt_deg=0.0, max_incidence_deg=30.0), rng=0)[0]
    # Without tilt the beam is normal to the posterior face only; side faces are at 90 degrees.
    assert len(pts) > 100 and np.allclose(pts[:, 1], 15.0)
    tilted = simulate_us_visibility([box], posterior=[0, 1, 0], cranial=[0, 0, 1],
                                    config=SweepConfig(tilt_deg=25.0, max_incidence_deg=10.0), rng=0)[0]
    wide = simulate_us_visibility([box], posterior=[0, 1, 0], cranial=[0, 0, 1],
                                  config=SweepConfig(tilt_deg=25.0, max_incidence_deg=89.0), rng=0)[0]
    assert len(tilted) < len(wide)


def test_noise_moves_points_along_the_beam_and_seed_replays():
    box = _box([-15, -15, -15], [15, 15, 15])
    cfg = SweepConfig(tilt_deg=0.0, noise_mm=0.5)
    a = simulate_us_visibility([box], posterior=[0, 1, 0], cranial=[0, 0, 1], config=cfg, rng=3)[0]
    b = simulate_us_visibility([box], posterior=[0, 1, 0], cranial=[0, 0, 1], config=cfg, rng=3)[0]
    np.testing.assert_array_equal(a, b)
    # Untilted beams run along -y: noise changes y only.
    assert 0.3 < np.std(a[:, 1] - 15.0) < 0.7
    assert np.all(np.abs(a[:, 0]) <= 15.0 + 1e-6) and np.all(np.abs(a[:, 2]) <= 15.0 + 1e-6)


def test_real_spine_neighbours_occlude_and_bodies_are_hidden(vertebrae_data):
    from usx_stream.io.meshes import read_mesh

    folder = vertebrae_data / "visible_human_male_L1-L5"
    meshes = [read_mesh(folder / f"L{k}_Schrumpfverpacken.obj", scale=1000.0) for k in range(1, 6)]
    # This model's frame: -x posterior, +z cranial (spinous processes point to -x).
    spine = simulate_us_visibility(meshes, posterior=[-1, 0, 0], cranial=[0, 0, 1], rng=0)
    for mesh, pts in zip(meshes, spine):
        centre = mesh.vertices_mm.mean(axis=0)
        assert len(pts) > 500
        assert np.mean(pts[:, 0] < centre[0]) > 0.8  # mostly the posterior half
    # Same rays, L3 alone vs inside the spine: the neighbours take some of its hits, never add any.
    origins, dirs = sweep_rays(np.concatenate([m.vertices_mm for m in meshes]), posterior=[-1, 0, 0],
                               cranial=[0, 0, 1], config=SweepConfig(), rng=np.random.default_rng(0))
    in_spine = cast_first_hits(meshes, origins, dirs)
    alone = cast_first_hits(meshes[2:3], origins, dirs)
    l3_in_spine = {tuple(p) for p in np.round(in_spine.points_mm[in_spine.mesh_index == 2], 4)}
    l3_alone = {tuple(p) for p in np.round(alone.points_mm, 4)}
    assert l3_in_spine < l3_alone
    assert len(l3_alone) > 1.1 * len(l3_in_spine)


def test_backprojection_round_trip_and_labelmap_area():
    view = CArmGeometry.lateral([0, 0, 0], lateral=[1, 0, 0], cranial=[0, 0, 1], source_to_target_mm=700,
                                source_to_detector_mm=1000, pixel_spacing_mm=0.5, shape=(512, 512))
    rng = np.random.default_rng(0)
    plane_pts = np.column_stack([np.zeros(50), rng.uniform(-30, 30, 50), rng.uniform(-30, 30, 50)])
    uv = view.project(plane_pts)
    back = backproject_to_plane(view, uv, plane_point_mm=[0, 0, 0], plane_normal=[1, 0, 0])
    np.testing.assert_allclose(back, plane_pts, atol=1e-9)
    crop = render_body_labelmap(_sphere(15.0), view)
    magnification = 1000 / 700
    expected_px = np.pi * (15.0 * magnification / 0.5) ** 2
    assert crop.mask.sum() == pytest.approx(expected_px, rel=0.05)
    on_plane = backproject_to_plane(view, crop.labelled_pixels(), plane_point_mm=[0, 0, 0], plane_normal=[1, 0, 0])
    r = np.linalg.norm(on_plane[:, 1:], axis=1)
    assert np.allclose(on_plane[:, 0], 0.0) and r.max() < 15.0 + 0.6 and r.max() > 14.0


def test_labelmap_off_detector_is_empty_and_config_is_validated():
    view = CArmGeometry.lateral([0, 0, 0], lateral=[1, 0, 0], cranial=[0, 0, 1], shape=(64, 64))
    crop = render_body_labelmap(_sphere(5.0, centre=(0, 500, 0)), view)
    assert crop.mask.size == 0 and len(crop.labelled_pixels()) == 0
    with pytest.raises(ValueError, match="max_incidence_deg"):
        SweepConfig(max_incidence_deg=0.0)
    with pytest.raises(ValueError, match="source_to_target_mm"):
        CArmGeometry.lateral([0, 0, 0], lateral=[1, 0, 0], cranial=[0, 0, 1], source_to_target_mm=2000)
