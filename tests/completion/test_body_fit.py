"""The X-ray body fit: a completed body misplaced along the cranial axis is moved and stretched onto its
silhouette, a body too deep or too shallow is scaled about its posterior wall until its anterior surface meets
the silhouette's, the arch stays where it is, and a fit the silhouette cannot support leaves the cloud alone."""

import numpy as np
import pytest

from usx_stream.completion.body_fit import fit_body_to_silhouette


def _box_surface(rng, lo, hi, n):
    """``n`` points on the surface of the axis-aligned box [lo, hi] (unit frame)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    p = rng.uniform(lo, hi, size=(n, 3))
    axis = rng.integers(0, 3, n)
    side = rng.integers(0, 2, n)
    p[np.arange(n), axis] = np.where(side == 1, hi[axis], lo[axis])
    return p


@pytest.fixture
def vertebra():
    """A box body (y < 0: anterior) and a box arch well behind it; the silhouette is the body's (y, z)
    region on the mid-sagittal plane x = 0, as the back-projected labelmap is."""
    rng = np.random.default_rng(0)
    body = _box_surface(rng, [-0.4, -0.7, -0.25], [0.4, 0.0, 0.25], 3000)
    arch = _box_surface(rng, [-0.5, 0.35, -0.3], [0.5, 0.6, 0.3], 1000)
    sil = np.column_stack([np.zeros(256), rng.uniform(-0.7, 0.0, 256), rng.uniform(-0.25, 0.25, 256)])
    sil[:4, 1:] = [[-0.7, -0.25], [0.0, 0.25], [-0.7, 0.25], [0.0, -0.25]]      # corners are in a FPS sample
    return body, arch, sil


def test_a_caudally_misplaced_short_body_goes_back_onto_its_silhouette(vertebra):
    body, arch, sil = vertebra
    wrong = body.copy()
    wrong[:, 2] = wrong[:, 2] * 0.9 - 0.04                      # 2 mm caudal, 10 % short
    out, fit = fit_body_to_silhouette(np.vstack([wrong, arch]), sil, percentile=0.0)
    assert fit.applied
    assert fit.shift == pytest.approx(0.04, abs=1e-3) and fit.scale == pytest.approx(1 / 0.9, rel=1e-3)
    # anterior of the posterior wall: exactly the true body again
    np.testing.assert_allclose(out[:len(body)], body, atol=1e-6)
    # behind wall + blend (0.2): untouched
    np.testing.assert_array_equal(out[len(body):], arch)


def test_a_too_deep_body_is_scaled_about_its_posterior_wall_onto_the_silhouette(vertebra):
    body, arch, sil = vertebra
    deep = body * [1, 1.1, 1]                                   # anterior surface 3.5 mm too far forward
    out, fit = fit_body_to_silhouette(np.vstack([deep, arch]), sil, percentile=0.0)
    assert fit.applied and fit.depth_scale == pytest.approx(1 / 1.1, rel=1e-3)
    np.testing.assert_allclose(out[:len(body)], body, atol=1e-6)
    np.testing.assert_array_equal(out[len(body):], arch)
    # without fit_depth only the (already right) height is fitted: the depth error stays
    out, fit = fit_body_to_silhouette(np.vstack([deep, arch]), sil, percentile=0.0, fit_depth=False)
    assert fit.depth_scale == 1.0 and out[:len(body), 1].min() == pytest.approx(-0.77)


def test_the_depth_ratio_is_clamped_like_the_height(vertebra):
    body, arch, sil = vertebra
    _, fit = fit_body_to_silhouette(np.vstack([body * [1, 0.5, 1], arch]), sil, scale_range=(0.8, 1.25))
    assert fit.applied and fit.depth_scale == 1.25


def test_the_correction_fades_out_behind_the_posterior_wall(vertebra):
    body, arch, sil = vertebra
    pedicle = np.column_stack([np.zeros(5), [0.0, 0.05, 0.1, 0.15, 0.2], np.zeros(5)]) + [0, 0, -0.04]
    wrong = body - [0, 0, 0.04]
    out, fit = fit_body_to_silhouette(np.vstack([wrong, pedicle, arch]), sil, percentile=0.0)
    moved = out[len(body):len(body) + 5, 2] - pedicle[:, 2]
    np.testing.assert_allclose(moved, 0.04 * np.array([1.0, 0.75, 0.5, 0.25, 0.0]), atol=1e-6)


def test_a_shift_beyond_the_limit_leaves_the_cloud_unchanged(vertebra):
    body, arch, sil = vertebra
    cloud = np.vstack([body - [0, 0, 0.15], arch])              # 7.5 mm: not a calibration error
    out, fit = fit_body_to_silhouette(cloud, sil, max_shift=0.1)
    assert not fit.applied and "beyond" in fit.reason and fit.shift == pytest.approx(0.15, abs=0.01)
    np.testing.assert_array_equal(out, cloud)


def test_the_height_ratio_is_clamped(vertebra):
    body, arch, sil = vertebra
    squashed = body * [1, 1, 0.5]
    _, fit = fit_body_to_silhouette(np.vstack([squashed, arch]), sil, scale_range=(0.8, 1.25))
    assert fit.applied and fit.scale == 1.25


def test_too_few_body_points_or_labelmap_points_mean_no_fit(vertebra):
    body, arch, sil = vertebra
    out, fit = fit_body_to_silhouette(arch, sil)
    assert not fit.applied and "anterior of the posterior wall" in fit.reason
    np.testing.assert_array_equal(out, arch)
    _, fit = fit_body_to_silhouette(np.vstack([body, arch]), sil[:1])
    assert not fit.applied and "labelmap points" in fit.reason


@pytest.mark.parametrize("completed, labelmap, match", [
    (np.zeros((10, 2)), np.zeros((10, 3)), r"completed must have shape \(N, 3\), got \(10, 2\)"),
    (np.zeros((10, 3)), np.full((10, 3), np.nan), "labelmap has non-finite"),
])
def test_bad_clouds_are_named(completed, labelmap, match):
    with pytest.raises(ValueError, match=match):
        fit_body_to_silhouette(completed, labelmap)


def test_bad_limits_are_named(vertebra):
    body, arch, sil = vertebra
    with pytest.raises(ValueError, match="blend=0"):
        fit_body_to_silhouette(body, sil, blend=0)
