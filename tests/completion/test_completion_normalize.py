"""Canonical per-vertebra frame and fixed-size resampling."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.completion import normalize as nz


def _rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_round_trip_with_and_without_rotation():
    pts = np.random.default_rng(0).normal(100.0, 20.0, (500, 3))
    center = nz.canonical_center(pts)
    for rot in (None, _rotation(1)):
        unit = nz.normalize(pts, center_mm=center, rotation=rot)
        assert unit.dtype == np.float32
        back = nz.denormalize(unit, center_mm=center, rotation=rot)
        np.testing.assert_allclose(back, pts, atol=1e-3)  # float32 in the unit frame: ~1e-5 mm per unit


def test_scale_is_fixed_millimetres_per_unit():
    pts = np.array([[10.0, 20.0, 30.0], [60.0, 20.0, 30.0]])
    unit = nz.normalize(pts, center_mm=pts[0])
    np.testing.assert_allclose(unit, [[0, 0, 0], [50.0 / nz.SCALE_MM, 0, 0]], atol=1e-7)
    assert nz.SCALE_MM == 50.0


def test_canonical_center_is_bbox_middle_of_both_inputs():
    partial = np.array([[0.0, 0, 0], [10, 4, 2]])
    labelmap = np.array([[-10.0, -4, 8]])
    np.testing.assert_allclose(nz.canonical_center(partial), [5, 2, 1])
    np.testing.assert_allclose(nz.canonical_center(partial, labelmap), [0, 0, 4])
    with pytest.raises(ValueError, match="at least one point"):
        nz.canonical_center(np.zeros((0, 3)))


def test_validation_names_the_field():
    pts = np.zeros((4, 3))
    with pytest.raises(ValueError, match="center_mm"):
        nz.normalize(pts, center_mm=[0, 0])
    with pytest.raises(ValueError, match="scale_mm"):
        nz.normalize(pts, center_mm=[0, 0, 0], scale_mm=0)
    with pytest.raises(ValueError, match="rotation"):
        nz.normalize(pts, center_mm=[0, 0, 0], rotation=np.ones((3, 3)))
    with pytest.raises(ValueError, match="points_mm"):
        nz.normalize(np.zeros((4, 2)), center_mm=[0, 0, 0])


def test_resample_down_is_furthest_point_order():
    pts = np.random.default_rng(2).uniform(-1, 1, (400, 3))
    out = nz.resample(pts, 50)
    assert out.shape == (50, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], pts[0], atol=1e-7)
    # Furthest-point order: every point is at least as far from its predecessors as any later point.
    d_prev = [np.min(np.linalg.norm(out[:i] - out[i], axis=1)) for i in range(1, 50)]
    assert all(a >= b - 1e-6 for a, b in zip(d_prev, d_prev[1:]))


def test_resample_up_repeats_in_order_and_thins_large_clouds():
    pts = np.random.default_rng(3).uniform(-1, 1, (7, 3))
    out = nz.resample(pts, 20)
    assert out.shape == (20, 3)
    assert len(np.unique(out[:7], axis=0)) == 7
    np.testing.assert_array_equal(out[7:14], out[:7])
    big = np.random.default_rng(4).uniform(-1, 1, (5000, 3))
    a, b = nz.resample(big, 32, seed=1), nz.resample(big, 32, seed=1)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="at least one point"):
        nz.resample(np.zeros((0, 3)), 5)
    with pytest.raises(ValueError, match="count"):
        nz.resample(pts, 0)


def test_resample_batch_equals_one_by_one():
    rng = np.random.default_rng(5)
    clouds = [rng.uniform(-1, 1, (n, 3)) for n in (300, 40, 5, 1000)]
    batch = nz.resample_batch(clouds, 64)
    assert batch.shape == (4, 64, 3)
    for cloud, got in zip(clouds, batch):
        np.testing.assert_array_equal(got, nz.resample(cloud, 64))
    assert nz.resample_batch([], 8).shape == (0, 8, 3)
    with pytest.raises(ValueError, match=r"clouds\[1\]"):
        nz.resample_batch([clouds[0], np.zeros((0, 3))], 8)


def test_canonical_center_with_rotation_boxes_along_vertebra_axes():
    rng = np.random.default_rng(6)
    rot = _rotation(7)
    pts = rng.normal(30.0, 12.0, (200, 3))
    centre = nz.canonical_center(pts, rotation=rot)
    along = pts @ rot.T
    # Same as boxing the points once they are expressed in the vertebra axes.
    np.testing.assert_allclose(centre @ rot.T, nz.canonical_center(along), atol=1e-9)
    unit = nz.normalize(pts, center_mm=centre, rotation=rot)
    np.testing.assert_allclose(unit.min(0) + unit.max(0), 0.0, atol=1e-5)
