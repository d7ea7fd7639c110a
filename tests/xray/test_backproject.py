"""Labelmap back-projection onto mid-sagittal planes, on synthetic C-arm geometries with known planes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from usx_stream.frames import LEVELS
from usx_stream.transforms import rotation, translation
from usx_stream.xray.backproject import (backproject_levels, backproject_to_plane, level_centres,
                                         level_centroids_px, level_pixels, subsample_indices,
                                         viewing_direction)
from usx_stream.xray.geometry import CArmGeometry, load_carm_geometry

SIM_CARM = Path(__file__).resolve().parents[2] / "calibration" / "sim_carm.json"


@pytest.fixture(params=["sim", "oblique"])
def carm(request) -> CArmGeometry:
    g = load_carm_geometry(SIM_CARM)
    if request.param == "sim":
        return g
    # An oblique C-arm far from any axis, with a shifted principal point and non-square pixels.
    pose = translation([30.0, -20.0, 15.0]) @ rotation([0.3, 1.0, -0.4], 1.1) @ translation([0, 0, -650.0])
    return dataclasses.replace(g, xray_to_reference=pose, principal_point_px=np.array([240.0, 270.5]),
                               pixel_spacing_mm=np.array([0.7, 0.8]))


def _disc_labelmap(shape, centres_uv: dict[int, tuple[float, float]], radius_px: float) -> np.ndarray:
    rows, cols = np.indices(shape)
    lm = np.zeros(shape, dtype=np.uint8)
    for label, (u, v) in centres_uv.items():
        lm[(cols - u) ** 2 + (rows - v) ** 2 <= radius_px ** 2] = label
    return lm


def _spine_centres(carm: CArmGeometry) -> np.ndarray:
    """(5, 3) L1..L5 centres on the plane through the isocentre perpendicular to the principal ray."""
    down = carm.xray_to_reference[:3, 1]     # detector rows run along this direction
    offsets = np.array([-2, -1, 0, 1, 2])[:, None] * 37.0
    return carm.isocenter_ref_mm + offsets * down


def test_level_pixels_groups_row_major(carm):
    lm = np.zeros(carm.detector_shape, dtype=np.uint8)
    lm[10:12, 20:23] = 3
    lm[50, 60] = 1
    lm[100, 5] = 7            # not a level: ignored
    got = level_pixels(lm)
    assert list(got) == ["L1", "L3"]
    np.testing.assert_array_equal(got["L1"], [[60, 50]])
    np.testing.assert_array_equal(got["L3"], [[20, 10], [21, 10], [22, 10], [20, 11], [21, 11], [22, 11]])


def test_backprojected_levels_lie_on_their_planes_and_reproject_to_their_pixels(carm):
    centres = _spine_centres(carm)
    # Each vertebra a little off the spine plane (rotated, shifted): its own plane, its own normal.
    centres = centres + np.array([[0, 0, 0], [4, -3, 2], [0, 0, 0], [-5, 2, 6], [0, 0, 0]])
    uv = carm.project(centres)
    lm = _disc_labelmap(carm.detector_shape, {1: uv[0], 2: uv[1], 4: uv[3]}, radius_px=18)
    pts = backproject_levels(lm, carm, centres_mm=centres)
    assert list(pts) == ["L1", "L2", "L4"]
    pixels = level_pixels(lm)
    for level, p in pts.items():
        k = LEVELS.index(level)
        normal = viewing_direction(carm, centres[k])
        np.testing.assert_allclose((p - centres[k]) @ normal, 0.0, atol=1e-8)
        np.testing.assert_allclose(carm.project(p), pixels[level], atol=1e-7)
        assert len(p) == np.count_nonzero(lm == k + 1)


def test_viewing_direction_is_the_ray_through_the_point(carm):
    point = carm.isocenter_ref_mm + [5.0, -7.0, 3.0]
    d = viewing_direction(carm, point)
    origin, ray = carm.pixel_rays(carm.project(point[None]))
    np.testing.assert_allclose(d, ray[0], atol=1e-9)
    assert np.linalg.norm(d) == pytest.approx(1.0)


def test_subsampling_is_deterministic_and_fixed_size(carm):
    centres = _spine_centres(carm)
    uv = carm.project(centres)
    lm = _disc_labelmap(carm.detector_shape, {2: uv[1], 5: uv[4]}, radius_px=12)
    a = backproject_levels(lm, carm, centres_mm=centres, n_points=64)
    b = backproject_levels(lm, carm, centres_mm=centres, n_points=64)
    full = backproject_levels(lm, carm, centres_mm=centres)
    for level in ("L2", "L5"):
        assert a[level].shape == (64, 3)
        np.testing.assert_array_equal(a[level], b[level])
        # A subset of the full back-projection, spread over the silhouette (not its first rows only).
        idx = subsample_indices(len(full[level]), 64)
        np.testing.assert_array_equal(a[level], full[level][idx])
        assert np.ptp(a[level] @ carm.xray_to_reference[:3, 1]) > 0.8 * np.ptp(full[level] @ carm.xray_to_reference[:3, 1])
    many = backproject_levels(lm, carm, centres_mm=centres, n_points=5000)
    assert many["L2"].shape == (5000, 3)
    assert len(np.unique(many["L2"], axis=0)) == len(full["L2"])


def test_subsample_indices_edge_cases():
    assert subsample_indices(0, 10).shape == (0,)
    assert subsample_indices(10, 0).shape == (0,)
    np.testing.assert_array_equal(subsample_indices(10, 5), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(subsample_indices(3, 7), [0, 1, 2, 0, 1, 2, 0])
    with pytest.raises(ValueError, match="n_points: must be >= 0, got -1"):
        subsample_indices(5, -1)


def test_level_centres_recover_centres_on_the_spine_plane(carm):
    centres = _spine_centres(carm)
    uv = carm.project(centres)
    lm = _disc_labelmap(carm.detector_shape, {k + 1: uv[k] for k in (0, 1, 2, 4)}, radius_px=20)
    got = level_centres(lm, carm)   # default plane: isocentre, normal = principal ray
    assert got.shape == (5, 3)
    assert np.all(np.isnan(got[3]))
    present = [0, 1, 2, 4]
    # Disc centroids are the projected centres up to rasterisation (< 0.05 px): sub-0.1 mm in 3D.
    np.testing.assert_allclose(got[present], centres[present], atol=0.1)
    np.testing.assert_allclose((got[present] - carm.isocenter_ref_mm) @ carm.xray_to_reference[:3, 2], 0, atol=1e-8)
    np.testing.assert_allclose(carm.project(got[present]), level_centroids_px(lm)[present], atol=1e-7)


def test_level_centres_on_an_explicit_plane(carm):
    point = carm.isocenter_ref_mm + [10.0, 5.0, -3.0]
    normal = np.array([0.9, 0.1, 0.2])
    lm = np.zeros(carm.detector_shape, dtype=np.uint8)
    lm[200:240, 100:160] = 3
    got = level_centres(lm, carm, plane_point_mm=point, plane_normal=normal)
    assert np.all(np.isnan(np.delete(got, 2, axis=0)))
    assert (got[2] - point) @ normal == pytest.approx(0.0, abs=1e-8)
    np.testing.assert_allclose(carm.project(got[2:3])[0], [129.5, 219.5], atol=1e-7)


def test_centres_given_as_mapping_skip_unknown_levels(carm):
    centres = _spine_centres(carm)
    uv = carm.project(centres)
    lm = _disc_labelmap(carm.detector_shape, {1: uv[0], 3: uv[2]}, radius_px=10)
    got = backproject_levels(lm, carm, centres_mm={"L3": centres[2]})
    assert list(got) == ["L3"]
    nan_rows = centres.copy()
    nan_rows[2] = np.nan
    assert list(backproject_levels(lm, carm, centres_mm=nan_rows)) == ["L1"]


def test_empty_labelmap_gives_empty_results(carm):
    lm = np.zeros(carm.detector_shape, dtype=np.uint8)
    assert backproject_levels(lm, carm, centres_mm=_spine_centres(carm)) == {}
    assert np.all(np.isnan(level_centres(lm, carm)))
    assert backproject_to_plane(carm, np.zeros((0, 2)), plane_point_mm=[0, 0, 0], plane_normal=[1, 0, 0]).shape == (0, 3)


def test_rays_parallel_to_the_plane_or_behind_the_source_are_dropped(carm):
    uv = np.array([[100.0, 100.0], [300.0, 200.0], [250.0, 300.0]])
    _, dirs = carm.pixel_rays(uv)
    # A plane parallel to ray 0 (normal perpendicular to it) through a point 50 mm along ray 1.
    normal = np.cross(dirs[0], [0.0, 0.0, 1.0])
    point = carm.source_ref_mm + 50 * dirs[1]
    out, kept = backproject_to_plane(carm, uv, plane_point_mm=point, plane_normal=normal, return_kept=True)
    assert kept.tolist() == [False, True, True] and out.shape == (2, 3) and np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], point, atol=1e-9)
    np.testing.assert_array_equal(backproject_to_plane(carm, uv, plane_point_mm=point, plane_normal=normal), out)
    behind = backproject_to_plane(carm, uv, plane_point_mm=carm.source_ref_mm - 100 * carm.xray_to_reference[:3, 2],
                                  plane_normal=carm.xray_to_reference[:3, 2])
    assert behind.shape == (0, 3)


def test_a_level_whose_centroid_ray_misses_the_plane_has_no_centre(carm):
    centres = _spine_centres(carm)
    lm = _disc_labelmap(carm.detector_shape, {1: carm.project(centres)[0], 4: carm.project(centres)[3]}, radius_px=6)
    _, dirs = carm.pixel_rays(level_centroids_px(lm)[[0]])
    normal = np.cross(dirs[0], carm.xray_to_reference[:3, 0])  # the L1 centroid's ray is parallel to the plane
    got = level_centres(lm, carm, plane_point_mm=centres[3], plane_normal=normal)
    assert np.all(np.isnan(got[[0, 1, 2, 4]])) and np.all(np.isfinite(got[3]))


def test_validation_names_field_and_value(carm):
    lm = np.zeros((10, 10), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"labelmap: shape \(10, 10\) does not match the detector \(512, 512\)"):
        level_centres(lm, carm)
    full = np.zeros(carm.detector_shape, dtype=np.uint8)
    with pytest.raises(ValueError, match="centres_mm: unknown level 'L6'"):
        backproject_levels(full, carm, centres_mm={"L6": [0, 0, 0]})
    with pytest.raises(ValueError, match=r"centres_mm: expected \(5, 3\)"):
        backproject_levels(full, carm, centres_mm=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="plane_normal: expected a finite non-zero 3-vector"):
        backproject_to_plane(carm, [[1.0, 2.0]], plane_point_mm=[0, 0, 0], plane_normal=[0, 0, 0])
    with pytest.raises(ValueError, match="plane_point_mm: expected a finite 3D point"):
        level_centres(full, carm, plane_point_mm=[0, np.nan, 0])


def test_single_slice_labelmap_is_accepted(carm):
    centres = _spine_centres(carm)
    lm = _disc_labelmap(carm.detector_shape, {2: carm.project(centres)[1]}, radius_px=8)
    np.testing.assert_array_equal(level_centres(lm[None], carm), level_centres(lm, carm))


def test_simulated_xray_levels_land_on_the_vertebral_bodies():
    """End to end with the simulated lateral X-ray of a procedural spine (coarse grid to stay fast)."""
    from usx_stream.sim.anatomy import make_spine
    from usx_stream.sim.xray_projection import render_lateral_xray

    g = load_carm_geometry(SIM_CARM)
    g = dataclasses.replace(g, detector_shape=(256, 256), pixel_spacing_mm=np.array([1.5, 1.5]),
                            principal_point_px=np.array([127.5, 127.5]))
    spine = make_spine(0, spacing_mm=2.0)
    xray = render_lateral_xray(spine, g, np.random.default_rng(0), step_mm=2.0)
    centres = level_centres(xray.labelmap, g)
    points = backproject_levels(xray.labelmap, g, n_points=512)   # default centres: these
    np.testing.assert_array_equal(points["L2"], backproject_levels(xray.labelmap, g, centres_mm=centres,
                                                                   n_points=512)["L2"])
    assert list(points) == list(LEVELS)
    for k, level in enumerate(LEVELS):
        body = spine.vertebrae[level].body_mesh.vertices_mm
        lateral = viewing_direction(g, centres[k])
        # Across the beam the labelmap pins the body down (measured: <= 1.1 mm); along it, the centre
        # sits on the spine plane, which the 1.5 degree off-lateral tilt moves by ~2 mm at L1/L5.
        d = centres[k] - body.mean(axis=0)
        assert np.linalg.norm(d - (d @ lateral) * lateral) < 1.5
        assert abs(d @ lateral) < 3.0
        # The silhouette on the mid-sagittal plane spans the body (measured: within 1.5 mm per side).
        across = np.linalg.svd(np.eye(3) - np.outer(lateral, lateral))[0][:, :2]
        p, b = points[level] @ across, body @ across
        np.testing.assert_allclose(p.min(axis=0), b.min(axis=0), atol=2.5)
        np.testing.assert_allclose(p.max(axis=0), b.max(axis=0), atol=2.5)
