"""OR-to-OR variation of simulated sessions: identity, reproducibility, each kind of variation, validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from usx_stream.node.frame_check import image_reason, pose_reason
from usx_stream.sim.bmode import BModeSettings
from usx_stream.sim.or_variation import ORVariation, SessionVariation, corrupt_labelmap
from usx_stream.sim.session import IMAGE_SHAPE, simulate_session
from usx_stream.sim.sweep import ProbeGeometry, plan_sweep


def _probe_to_tracker(frames):
    return np.array([f.transforms["ProbeToTracker"] for f in frames])


def test_none_draws_the_identity_and_changes_nothing(sim_session):
    var = ORVariation.none().draw(np.random.default_rng(3))
    assert var == SessionVariation()
    assert var.simulate_kwargs(n_frames=45) == {"bmode": BModeSettings(), "passes": 3, "n_frames": 45,
                                                "skin_depth_mm": 15.0, "sweep_extent": (0.0, 1.0)}
    frames, cache = var.apply(sim_session, np.random.default_rng(3))
    assert len(frames) == len(sim_session.frames)
    for got, orig in zip(frames, sim_session.frames):
        np.testing.assert_array_equal(got.pixels, orig.pixels)
        for name, m in orig.transforms.items():
            np.testing.assert_array_equal(got.transforms[name], m)
    snap = cache.snapshot()
    np.testing.assert_array_equal(snap.labelmap, sim_session.xray.labelmap)
    np.testing.assert_array_equal(snap.pixels, sim_session.xray.pixels)
    np.testing.assert_array_equal(snap.geometry.xray_to_reference, sim_session.xray.geometry.xray_to_reference)


def test_identity_keywords_simulate_the_unvaried_session(sim_session):
    kwargs = ORVariation.none().draw(np.random.default_rng(0)).simulate_kwargs(n_frames=len(sim_session.frames))
    again = simulate_session(sim_session.seed, with_xray=False, **kwargs)  # the conftest session, 3 passes
    for got, orig in zip(again.frames, sim_session.frames):
        np.testing.assert_array_equal(got.pixels, orig.pixels)


def test_draws_replay_from_the_seed(sim_session):
    ov = ORVariation()
    a, b = ov.draw(np.random.default_rng(11)), ov.draw(np.random.default_rng(11))
    assert a == b and a.describe() == b.describe()
    assert a != ov.draw(np.random.default_rng(12))
    fa, ca = a.apply(sim_session, np.random.default_rng(5))
    fb, cb = b.apply(sim_session, np.random.default_rng(5))
    np.testing.assert_array_equal(_probe_to_tracker(fa), _probe_to_tracker(fb))
    np.testing.assert_array_equal(ca.snapshot().labelmap, cb.snapshot().labelmap)


def test_default_draws_stay_in_their_ranges():
    ov = ORVariation()
    for k in range(200):
        v = ov.draw(np.random.default_rng(k))
        assert ov.gain_db[0] <= v.bmode.gain_db <= ov.gain_db[1]
        assert ov.skin_depth_mm[0] <= v.skin_depth_mm <= ov.skin_depth_mm[1]
        assert v.passes in ov.passes and ov.labelmap_px[0] <= v.labelmap_px <= ov.labelmap_px[1]
        start, stop = v.sweep_extent
        assert (start, stop) == (0.0, 1.0) or ov.coverage[0] - 1e-9 <= stop - start <= ov.coverage[1] + 1e-9
        assert np.linalg.norm(v.carm_translation_mm) <= ov.carm_error_mm + 1e-9
        assert np.linalg.norm(v.carm_rotation_deg) <= ov.carm_error_deg + 1e-9


def test_jitter_moves_the_probe_by_about_the_requested_sd(sim_session):
    orig = _probe_to_tracker(sim_session.frames)
    frames, _ = SessionVariation(jitter_mm=0.5).apply(sim_session, np.random.default_rng(1))
    moved = _probe_to_tracker(frames)
    np.testing.assert_allclose(moved[:, :3, :3], orig[:, :3, :3], atol=1e-12)
    assert np.std(moved[:, :3, 3] - orig[:, :3, 3]) == pytest.approx(0.5, rel=0.25)
    frames, _ = SessionVariation(jitter_deg=0.3).apply(sim_session, np.random.default_rng(2))
    rel = np.einsum("nji,njk->nik", orig[:, :3, :3], _probe_to_tracker(frames)[:, :3, :3])
    angles = np.degrees(Rotation.from_matrix(rel).magnitude())
    # a rotation vector with SD 0.3 deg per axis: RMS angle sqrt(3) * 0.3 deg
    assert np.sqrt(np.mean(angles ** 2)) == pytest.approx(np.sqrt(3) * 0.3, rel=0.25)
    assert sim_session.frames[0].transforms["ProbeToTracker"] is not frames[0].transforms["ProbeToTracker"]
    np.testing.assert_array_equal(_probe_to_tracker(sim_session.frames), orig)  # session untouched


def test_narrow_probe_crops_centred_columns_and_keeps_every_pixel_in_place(sim_session):
    frames, _ = SessionVariation(probe_width=0.75).apply(sim_session, np.random.default_rng(0))
    rows, cols = IMAGE_SHAPE
    keep, first = 192, 32
    for got, orig in zip(frames[::10], sim_session.frames[::10]):
        assert got.pixels.shape == (rows, keep)
        np.testing.assert_array_equal(got.pixels, orig.pixels[:, first:first + keep])
        m_got = got.transform("ImageToReference", sim_session.calibration)
        m_orig = orig.transform("ImageToReference", sim_session.calibration)
        for i, j in ((0, 0), (keep - 1, rows - 1), (50, 100)):
            np.testing.assert_allclose(m_got @ [i, j, 0, 1], m_orig @ [i + first, j, 0, 1], atol=1e-6)
        # the node's edge checks accept a frame narrower than the calibration's clip rectangle
        assert image_reason(got.pixels) == (None, "") and pose_reason(m_got, got.pixels.shape) == (None, "")
    assert sim_session.frames[0].pixels.shape == IMAGE_SHAPE


def test_dilation_grows_and_erosion_shrinks_every_label(sim_session):
    lm = sim_session.xray.labelmap
    grown = SessionVariation(labelmap_px=3).apply(sim_session, np.random.default_rng(0))[1].snapshot().labelmap
    shrunk = SessionVariation(labelmap_px=-3).apply(sim_session, np.random.default_rng(0))[1].snapshot().labelmap
    for label in range(1, 6):
        area = np.count_nonzero(lm == label)
        assert np.count_nonzero(grown == label) > area > np.count_nonzero(shrunk == label) > 0
    np.testing.assert_array_equal(grown[lm > 0], lm[lm > 0])  # grows only into the background
    assert np.all(lm[shrunk > 0] == shrunk[shrunk > 0])       # erodes only
    np.testing.assert_array_equal(corrupt_labelmap(np.zeros((4, 4), np.uint8), grow_px=2), np.zeros((4, 4)))


def test_missing_level_removes_exactly_that_level(sim_session):
    lm = sim_session.xray.labelmap
    got = SessionVariation(drop_level="L3").apply(sim_session, np.random.default_rng(0))[1]
    out = got.snapshot().labelmap
    assert not np.any(out == 3) and np.any(lm == 3)
    np.testing.assert_array_equal(out[lm != 3], lm[lm != 3])
    assert got.snapshot().levels == ("L1", "L2", "L4", "L5")


def test_carm_error_moves_the_told_geometry_within_bounds(sim_session):
    true = sim_session.xray.geometry
    var = ORVariation(carm_error_mm=2.0, carm_error_deg=1.0).draw(np.random.default_rng(4))
    told = var.apply(sim_session, np.random.default_rng(0))[1].snapshot().geometry
    shift = told.isocenter_ref_mm - true.isocenter_ref_mm
    np.testing.assert_allclose(shift, var.carm_translation_mm, atol=1e-9)
    assert 0 < np.linalg.norm(shift) <= 2.0
    rel = true.xray_to_reference[:3, :3].T @ told.xray_to_reference[:3, :3]
    angle = np.degrees(Rotation.from_matrix(rel).magnitude())
    assert angle == pytest.approx(np.linalg.norm(var.carm_rotation_deg), abs=1e-9) and 0 < angle <= 1.0
    assert told.detector_shape == true.detector_shape and told.source_to_detector_mm == true.source_to_detector_mm


def test_partial_coverage_and_skin_depth_reach_the_sweep(sim_session):
    probe = ProbeGeometry(sim_session.calibration.get("ImageToProbe"), IMAGE_SHAPE)
    spine = sim_session.spine
    full, _ = plan_sweep(spine, probe, np.random.default_rng(0), n_frames=30, passes=1)
    half, _ = plan_sweep(spine, probe, np.random.default_rng(0), n_frames=30, passes=1, extent=(0.25, 0.75))
    span = lambda p: np.ptp(p[:, 2, 3])  # noqa: E731
    assert span(half) == pytest.approx(0.5 * span(full), rel=0.05)
    assert full[0, 2, 3] > half[0, 2, 3] > half[-1, 2, 3] > full[-1, 2, 3]
    deep, _ = plan_sweep(spine, probe, np.random.default_rng(0), n_frames=30, passes=1, skin_depth_mm=25.0)
    np.testing.assert_allclose(deep[:, 1, 3] - full[:, 1, 3], 10.0, atol=1e-9)


def test_describe_is_flat_strings():
    d = ORVariation().draw(np.random.default_rng(1)).describe()
    assert all(isinstance(k, str) and k.startswith("or_") and isinstance(v, str) for k, v in d.items())
    assert SessionVariation().describe()["or_drop_level"] == "none"
    assert SessionVariation(drop_level="L2").describe()["or_drop_level"] == "L2"


@pytest.mark.parametrize("kwargs, match", [
    ({"gain_db": (5.0, -5.0)}, r"ORVariation\.gain_db.*\(5\.0, -5\.0\)"),
    ({"probe_width": (0.5, 1.2)}, r"ORVariation\.probe_width.*1\.2"),
    ({"missing_level_prob": 1.5}, r"ORVariation\.missing_level_prob.*1\.5"),
    ({"carm_error_deg": -1.0}, r"ORVariation\.carm_error_deg.*-1\.0"),
    ({"jitter_mm": (0.1, float("nan"))}, r"ORVariation\.jitter_mm.*nan"),
    ({"labelmap_px": (0.5, 2)}, r"ORVariation\.labelmap_px.*0\.5"),
    ({"passes": (0, 2)}, r"ORVariation\.passes.*\(0, 2\)"),
    ({"dynamic_range_db": 40.0}, r"ORVariation\.dynamic_range_db.*40\.0"),
])
def test_or_variation_rejects_bad_ranges_naming_field_and_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ORVariation(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"probe_width": 0.0}, r"SessionVariation\.probe_width.*0\.0"),
    ({"passes": 0}, r"SessionVariation\.passes.*0"),
    ({"sweep_extent": (0.6, 0.4)}, r"SessionVariation\.sweep_extent.*\(0\.6, 0\.4\)"),
    ({"drop_level": "L9"}, r"SessionVariation\.drop_level.*'L9'"),
    ({"jitter_mm": -0.1}, r"SessionVariation\.jitter_mm.*-0\.1"),
])
def test_session_variation_rejects_bad_values_naming_field_and_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SessionVariation(**kwargs)


def test_new_simulator_knobs_are_validated(sim_session):
    probe = ProbeGeometry(sim_session.calibration.get("ImageToProbe"), IMAGE_SHAPE)
    with pytest.raises(ValueError, match=r"extent.*\(0\.5, 0\.5\)"):
        plan_sweep(sim_session.spine, probe, np.random.default_rng(0), extent=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"skin_depth_mm.*-1"):
        plan_sweep(sim_session.spine, probe, np.random.default_rng(0), skin_depth_mm=-1.0)
    with pytest.raises(ValueError, match=r"gain_db.*nan"):
        BModeSettings(gain_db=float("nan"))
    assert dataclasses.replace(BModeSettings(), gain_db=3.0).gain_db == 3.0
