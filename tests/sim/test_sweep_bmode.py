"""Sweep planning and B-mode synthesis on a coarse spine."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.cli import main
from usx_stream.sim.anatomy import make_spine
from usx_stream.sim.bmode import BModeSettings, BModeSimulator, TissueTexture
from usx_stream.sim.session import DEFAULT_DEVICE_SET, IMAGE_SHAPE, load_probe_calibration
from usx_stream.sim.sweep import ProbeGeometry, plan_sweep, probe_to_reference, skin_line


@pytest.fixture(scope="module")
def spine():
    return make_spine(21, spacing_mm=1.5)


@pytest.fixture(scope="module")
def probe():
    return ProbeGeometry(load_probe_calibration(DEFAULT_DEVICE_SET).get("ImageToProbe"), IMAGE_SHAPE)


def test_probe_geometry_from_the_device_set(probe):
    assert probe.spacing_mm == pytest.approx((0.3, 0.3), rel=1e-4)
    m = probe.image_to_transducer()
    # The middle of the first row is the centre of the transducer face.
    np.testing.assert_allclose(m @ [127.5, 0, 0, 1], [0, 0, 0, 1], atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        ProbeGeometry(probe.image_to_probe, (4, 4))


def test_sweep_rides_the_skin_and_looks_anterior(spine, probe):
    poses, stamps = plan_sweep(spine, probe, np.random.default_rng(0), n_frames=60, passes=3)
    assert poses.shape == (60, 4, 4) and np.all(np.diff(stamps) > 0)
    for m in poses:
        np.testing.assert_allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-9)
        assert m[1, 1] < -0.8  # beam (transducer y) points anterior
    z_knots, y_knots = skin_line(spine, skin_depth_mm=15.0)
    np.testing.assert_allclose(poses[:, 1, 3], np.interp(poses[:, 2, 3], z_knots, y_knots), atol=1e-9)
    # Passes alternate: the first runs cranial -> caudal, the second back up.
    assert poses[0, 2, 3] > poses[19, 2, 3] and poses[20, 2, 3] < poses[39, 2, 3]
    # Every bone lies below the skin line.
    bone = spine.surface().vertices_mm
    assert np.all(bone[:, 1] < np.interp(bone[:, 2], z_knots, y_knots))
    chained = probe_to_reference(poses, probe) @ probe.image_to_probe
    np.testing.assert_allclose(chained, poses @ probe.image_to_transducer(), atol=1e-9)


def test_bone_mask_marks_the_first_bone_pixel_of_each_beam(spine, probe):
    poses, _ = plan_sweep(spine, probe, np.random.default_rng(1), n_frames=9, passes=1)
    texture = TissueTexture(np.full(3, -150.0), np.full(3, 150.0), np.random.default_rng(2), spacing_mm=3.0)
    sim = BModeSimulator(spine, probe.shape, 0.3, texture)
    rows, cols = probe.shape
    seen = 0
    for pose in poses:
        m = pose @ probe.image_to_transducer()
        pixels, mask = sim.render(m, np.random.default_rng(3))
        assert pixels.shape == (rows, cols) and pixels.dtype == np.uint8
        assert np.all(mask.sum(axis=0) <= 1)
        for col in np.flatnonzero(mask.any(axis=0))[::16]:
            row = int(np.argmax(mask[:, col]))
            beam = (m @ np.stack([np.full(rows, col), np.arange(rows), np.zeros(rows), np.ones(rows)]))[:3].T
            inside = spine.sample(beam)[0] < 0
            assert inside[row] and not inside[:row].any()
            seen += 1
    assert seen > 10


def test_no_bone_in_view_gives_no_echo_and_no_shadow(spine, probe):
    texture = TissueTexture(np.full(3, -50.0), np.full(3, 50.0), np.random.default_rng(2), spacing_mm=3.0)
    sim = BModeSimulator(spine, probe.shape, 0.3, texture)
    far = np.eye(4)
    far[:3, :3] = np.diag([1.0, -1.0, -1.0])
    far[:3, 3] = [0.0, 400.0, 0.0]  # 300 mm behind the back
    pixels, mask = sim.render(far @ probe.image_to_transducer(), np.random.default_rng(0))
    assert not mask.any()
    # Deep tissue is visible across the whole width: nothing casts a shadow.
    assert np.all(pixels[150:].reshape(74, 8, 32).mean(axis=(0, 2)) > 8)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="shadow_level"):
        BModeSettings(shadow_level=1.5)
    with pytest.raises(ValueError, match="dynamic_range_db"):
        BModeSettings(dynamic_range_db=0.0)


def test_simulate_command_writes_and_lists_the_session(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), "--seed", "5", "--frames", "4", "--passes", "1", "--no-xray"]) == 0
    printed = capsys.readouterr().out
    for name in ("sim_session.igs.mha", "sim_probe_deviceset.xml", "meshes/L5_body.ply", "ground_truth.json"):
        assert (out / name).is_file()
        assert name.split("/")[-1] in printed
    assert not (out / "xray.mha").exists()


def test_missing_calibration_file_is_named(tmp_path):
    from usx_stream.sim.session import simulate_session

    with pytest.raises(FileNotFoundError, match="device_set"):
        simulate_session(0, n_frames=3, passes=1, device_set=tmp_path / "absent.xml")
