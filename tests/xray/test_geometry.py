"""C-arm geometry: projection and back-projection agree; the calibration file loads; bad values are named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from usx_stream.sim.session import DEFAULT_CARM
from usx_stream.transforms import rotation, translation
from usx_stream.xray.geometry import CArmGeometry, load_carm_geometry, save_carm_geometry


def _geometry(**overrides) -> CArmGeometry:
    pose = translation([-650.0, 30.0, 5.0]) @ rotation([0, 1, 0], np.pi / 2) @ rotation([0, 0, 1], 0.1)
    args = dict(source_to_detector_mm=1000.0, source_to_isocenter_mm=650.0, detector_shape=(300, 400),
                pixel_spacing_mm=(0.8, 0.6), principal_point_px=(210.3, 140.7), xray_to_reference=pose,
                name="test")
    args.update(overrides)
    return CArmGeometry(**args)


def test_project_then_back_project_round_trip():
    g = _geometry()
    rng = np.random.default_rng(0)
    pts = g.isocenter_ref_mm + rng.uniform(-80, 80, size=(500, 3))
    uv = g.project(pts)
    origins, dirs = g.pixel_rays(uv)
    # Each point lies on the ray through its own pixel.
    to_point = pts - origins
    along = np.einsum("ij,ij->i", to_point, dirs)
    off_ray = np.linalg.norm(to_point - along[:, None] * dirs, axis=1)
    assert np.max(off_ray) < 1e-9 and np.all(along > 0)
    # And pixels -> detector points -> pixels is the identity.
    pix = rng.uniform([0, 0], [399, 299], size=(200, 2))
    np.testing.assert_allclose(g.project(g.detector_points(pix)), pix, atol=1e-9)


def test_principal_ray_and_magnification():
    g = _geometry()
    np.testing.assert_allclose(g.project(g.isocenter_ref_mm[None])[0], g.principal_point_px, atol=1e-9)
    assert g.magnification == pytest.approx(1000.0 / 650.0)
    # A 10 mm segment at the isocentre, across the beam along the detector columns, spans 10 * M / su pixels.
    across = g.xray_to_reference[:3, 0]
    uv = g.project(np.stack([g.isocenter_ref_mm, g.isocenter_ref_mm + 10.0 * across]))
    assert uv[1, 0] - uv[0, 0] == pytest.approx(10.0 * g.magnification / 0.8, rel=1e-9)
    # Points behind the source have no pixel.
    behind = g.source_ref_mm - 100.0 * g.xray_to_reference[:3, 2]
    assert np.all(np.isnan(g.project(behind[None])))


def test_every_pixel_ray_starts_at_the_source_and_is_unit_length():
    g = _geometry(detector_shape=(4, 5))
    origins, dirs = g.pixel_rays()
    assert origins.shape == (20, 3) and dirs.shape == (20, 3)
    np.testing.assert_allclose(origins, np.repeat(g.source_ref_mm[None], 20, axis=0))
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0)
    # Row-major order: the second ray is pixel (u=1, v=0).
    np.testing.assert_allclose(g.project(origins[1:2] + 700 * dirs[1:2]), [[1.0, 0.0]], atol=1e-9)


def test_calibration_file_is_a_lateral_view_of_the_simulated_spine():
    g = load_carm_geometry(DEFAULT_CARM)
    assert g.detector_shape == (512, 512)
    # Beam runs left-right (within a few degrees), rows run caudal, columns anterior.
    assert abs(g.xray_to_reference[0, 2]) > 0.99
    assert g.xray_to_reference[2, 1] < -0.99 and g.xray_to_reference[1, 0] < -0.99
    # The L3 body centre (Reference origin) projects near the middle of the detector.
    u, v = g.project(np.zeros((1, 3)))[0]
    assert 150 < u < 362 and 200 < v < 312


def test_save_and_load_round_trip(tmp_path):
    g = _geometry()
    path = save_carm_geometry(g, tmp_path / "carm.json", notes={"description": "test"})
    assert json.loads(path.read_text())["_description"] == "test"
    h = load_carm_geometry(path)
    assert h.detector_shape == g.detector_shape and h.name == "test"
    np.testing.assert_array_equal(h.xray_to_reference, g.xray_to_reference)
    np.testing.assert_array_equal(h.principal_point_px, g.principal_point_px)


@pytest.mark.parametrize("field, value", [
    ("source_to_detector_mm", -1.0),
    ("source_to_isocenter_mm", 2000.0),
    ("pixel_spacing_mm", (0.0, 0.5)),
    ("detector_shape", (0, 10)),
    ("xray_to_reference", np.diag([2.0, 1.0, 1.0, 1.0])),
])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        _geometry(**{field: value})


def test_missing_keys_and_bad_json_are_reported(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"source_to_detector_mm": 1000}')
    with pytest.raises(ValueError, match="missing C-arm geometry keys"):
        load_carm_geometry(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_carm_geometry(bad)


def test_lateral_view_layout():
    lateral, cranial = np.array([0.96, 0.2, 0.1]), np.array([0.05, 0.1, 1.0])
    target = np.array([12.0, -40.0, 7.0])
    g = CArmGeometry.lateral(target, lateral=lateral, cranial=cranial, source_to_target_mm=650.0,
                             source_to_detector_mm=1100.0, pixel_spacing_mm=0.4, shape=(300, 500))
    w = lateral / np.linalg.norm(lateral)
    np.testing.assert_allclose(g.isocenter_ref_mm, target, atol=1e-9)
    np.testing.assert_allclose(g.source_ref_mm, target - 650.0 * w, atol=1e-9)
    np.testing.assert_allclose(g.xray_to_reference[:3, 2], w, atol=1e-12)
    assert g.xray_to_reference[:3, 1] @ cranial < 0 and abs(g.xray_to_reference[:3, 1] @ w) < 1e-12  # rows caudal
    np.testing.assert_array_equal(g.principal_point_px, [249.5, 149.5])
    np.testing.assert_allclose(g.project(target[None])[0], [249.5, 149.5], atol=1e-9)
    # Pixel (i, j) sits i steps along the columns and j along the rows from pixel (0, 0), 0.4 mm each.
    u, v = g.xray_to_reference[:3, 0], g.xray_to_reference[:3, 1]
    corner = g.source_ref_mm + 1100.0 * w - 0.4 * (499 / 2) * u - 0.4 * (299 / 2) * v
    ij = np.array([[0, 0], [499, 0], [17, 251], [499, 299]])
    np.testing.assert_allclose(g.detector_points(ij), corner + 0.4 * (ij[:, :1] * u + ij[:, 1:] * v), atol=1e-9)
    with pytest.raises(ValueError, match="source_to_target_mm"):
        CArmGeometry.lateral(target, lateral=lateral, cranial=cranial, source_to_target_mm=1200.0,
                             source_to_detector_mm=1100.0)
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        CArmGeometry.lateral(target, lateral=lateral, cranial=cranial, pixel_spacing_mm=0.0)
