import numpy as np
import pytest

from usx_stream.completion import normalize as nz
from usx_stream.completion.prepare import cranial_axes, prepare_vertebra, to_reference, vertebra_rotation
from usx_stream.transforms import rotation


def test_rotation_is_right_handed_with_posterior_and_cranial_axes():
    r = vertebra_rotation(cranial=[0, 0.1, 1], posterior=[0, 1, 0])
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    # rows are the canonical axes in Reference: z follows cranial, y is the posterior part orthogonal to it
    np.testing.assert_allclose(r[2], np.array([0, 0.1, 1]) / np.linalg.norm([0, 0.1, 1]))
    assert r[1] @ np.array([0, 1, 0]) > 0.99
    np.testing.assert_allclose(r[0], [1, 0, 0], atol=1e-12)  # y x z = x: the patient's left in LPS
    with pytest.raises(ValueError, match="posterior"):
        vertebra_rotation(cranial=[0, 0, 1], posterior=[0, 0, 2])


def test_cranial_axes_follow_the_level_curve():
    centres = {"L1": np.array([0, 0, 80.0]), "L2": np.array([0, 5, 40.0]), "L3": np.array([0, 7, 0.0])}
    axes = cranial_axes(centres)
    assert set(axes) == {"L1", "L2", "L3"}
    for lv in axes:
        assert axes[lv] @ [0, 0, 1] > 0.98                      # cranial: towards L1
    assert axes["L1"][1] < axes["L2"][1] < axes["L3"][1] < 0     # the curve bends: tilt grows caudally
    two = cranial_axes({"L4": np.array([0, 0, 40.0]), "L5": np.zeros(3)})
    np.testing.assert_allclose(two["L4"], [0, 0, 1])
    np.testing.assert_allclose(two["L5"], [0, 0, 1])
    with pytest.raises(ValueError, match="fallback_cranial"):
        cranial_axes({"L3": np.zeros(3)})
    np.testing.assert_allclose(cranial_axes({"L3": np.zeros(3)}, fallback_cranial=[0, 0, 2])["L3"], [0, 0, 1])
    with pytest.raises(ValueError, match="L2 and L3 coincide"):
        cranial_axes({"L2": np.zeros(3), "L3": np.zeros(3), "L4": np.ones(3)})


def test_cranial_axes_are_tangent_at_the_ends_of_a_lordotic_arc():
    # Five centres about 36 mm apart on a 200 mm-radius arc (about 40 degrees of lordosis from L1 to L5),
    # not evenly spaced, rotated arbitrarily: the end levels' axes must be the arc's tangents, which
    # one-sided differences miss by half a segment's angle (about 5 degrees here).
    radius, angles = 200.0, np.radians([-21.0, -10.0, 0.0, 11.0, 20.0])
    r = rotation([0.3, -0.2, 1.0], 0.8)[:3, :3]
    centres = {lv: r @ [0.0, radius * (1 - np.cos(a)), radius * np.sin(a)]
               for lv, a in zip(("L5", "L4", "L3", "L2", "L1"), angles)}
    axes = cranial_axes(centres)
    for lv, a in zip(("L5", "L4", "L3", "L2", "L1"), angles):
        tangent = r @ [0.0, np.sin(a), np.cos(a)]
        assert np.degrees(np.arccos(np.clip(axes[lv] @ tangent, -1, 1))) < 1.0, lv
    one_sided = centres["L1"] - centres["L2"]
    one_sided /= np.linalg.norm(one_sided)
    assert np.degrees(np.arccos(one_sided @ (r @ [0.0, np.sin(angles[4]), np.cos(angles[4])]))) > 4.0


def test_prepare_then_to_reference_round_trips_exactly():
    rng = np.random.default_rng(0)
    r_true = rotation([0.2, 0.5, 1.0], 0.7)
    partial = rng.normal(size=(700, 3)) * [20, 10, 15] + [5, -40, 100]
    labelmap = rng.normal(size=(300, 3)) * [1, 12, 12] + [5, -70, 100]
    rot = vertebra_rotation(cranial=r_true[:3, 2], posterior=r_true[:3, 1])
    cloud = prepare_vertebra("L3", partial, labelmap, rotation=rot, num_partial=256, num_labelmap=128)
    assert cloud.partial.shape == (256, 3) and cloud.labelmap_points.shape == (128, 3)
    assert cloud.partial.dtype == np.float32
    # Unit scale: a 50 mm-scale cloud spans about +-1 and the box of all inputs is centred at 0.
    inv = np.linalg.inv(cloud.model_to_reference)
    both = np.vstack([partial, labelmap]) @ inv[:3, :3].T + inv[:3, 3]
    np.testing.assert_allclose((both.min(0) + both.max(0)) / 2, 0, atol=1e-9)
    assert 0.5 < np.abs(both).max() < 3
    back = to_reference(cloud, cloud.partial)
    # every resampled point is one of the inputs, recovered to float32 precision
    d = np.min(np.linalg.norm(back[:, None, :] - partial[None, :, :], axis=2), axis=1)
    assert d.max() < 1e-4 * nz.SCALE_MM


def test_us_only_and_empty_inputs():
    cloud = prepare_vertebra("L1", np.random.default_rng(1).normal(size=(50, 3)), None, rotation=np.eye(3),
                             num_partial=64, num_labelmap=32)
    assert cloud.labelmap_points is None and cloud.partial.shape == (64, 3)
    with pytest.raises(ValueError, match="L2 has no bone points"):
        prepare_vertebra("L2", np.zeros((0, 3)), None, rotation=np.eye(3), num_partial=64, num_labelmap=32)


def test_batched_resampling_before_the_rotation_gives_the_same_inputs():
    from usx_stream.completion.prepare import resample_levels

    rng = np.random.default_rng(3)
    rot = vertebra_rotation(cranial=[0.1, 0.2, 1.0], posterior=[0, 1, 0.1])
    partials = {lv: rng.normal(size=(n, 3)) * [20, 10, 15] + [0, -40, z]
                for lv, n, z in (("L1", 900, 120), ("L2", 300, 80), ("L3", 1500, 40))}
    labelmaps = {lv: rng.normal(size=(400, 3)) * [1, 12, 12] + [0, -70, p[:, 2].mean()] for lv, p in partials.items()}
    p_rs, l_rs = resample_levels(partials, 512), resample_levels(labelmaps, 128)
    assert {k: v.shape for k, v in p_rs.items()} == {"L1": (512, 3), "L2": (512, 3), "L3": (512, 3)}
    for lv in partials:
        one = prepare_vertebra(lv, partials[lv], labelmaps[lv], rotation=rot, num_partial=512, num_labelmap=128)
        batched = prepare_vertebra(lv, partials[lv], labelmaps[lv], rotation=rot, num_partial=512, num_labelmap=128,
                                   resampled=(p_rs[lv], l_rs[lv]))
        np.testing.assert_array_equal(one.model_to_reference, batched.model_to_reference)
        # Same furthest-point order; rounding of the rotated distances may only swap near-equal choices.
        assert np.mean(np.all(np.abs(one.partial - batched.partial) < 1e-5, axis=1)) > 0.95
        assert np.mean(np.all(np.abs(one.labelmap_points - batched.labelmap_points) < 1e-5, axis=1)) > 0.95
    with pytest.raises(ValueError, match="resampled partial of L1 has 512 points, expected 256"):
        prepare_vertebra("L1", partials["L1"], None, rotation=rot, num_partial=256, num_labelmap=128,
                         resampled=(p_rs["L1"], None))
