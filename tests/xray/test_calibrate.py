"""C-arm pose from fiducial pairs: PnP (3D-2D), Kabsch (3D-3D), and the calibrate-xray command."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from usx_stream.cli import main as cli_main
from usx_stream.transforms import rotation, translation
from usx_stream.xray.calibrate import calibrate_3d3d, calibrate_pnp
from usx_stream.xray.geometry import CArmGeometry, load_carm_geometry
from usx_stream.xray.pose_fit import rigid_fit

REPO = Path(__file__).resolve().parents[2]
SIM_CARM = REPO / "calibration" / "sim_carm.json"


@pytest.fixture
def carm() -> CArmGeometry:
    return load_carm_geometry(SIM_CARM)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    r = a[:3, :3].T @ b[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    """An XrayToReference looking at the origin from ~700 mm, in a random direction."""
    axis = rng.normal(size=3)
    r = rotation(axis, rng.uniform(0, np.pi))
    return r @ translation([0.0, 0.0, -700.0])


def _fiducials(rng, geometry: CArmGeometry, n: int, *, half_mm: float = 50.0) -> np.ndarray:
    return rng.uniform(-half_mm, half_mm, (n, 3)) + geometry.isocenter_ref_mm


def _without_prior(geometry: CArmGeometry) -> CArmGeometry:
    return dataclasses.replace(geometry, xray_to_reference=np.eye(4))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [4, 6, 12])
def test_pnp_recovers_exact_pose_from_random_views(seed, n, carm):
    rng = np.random.default_rng(seed)
    truth = dataclasses.replace(carm, xray_to_reference=_random_pose(rng))
    pts = _fiducials(rng, truth, n)
    uv = truth.project(pts)
    result = calibrate_pnp(pts, uv, _without_prior(carm), use_prior=False)
    assert result.method == "pnp"
    np.testing.assert_allclose(result.xray_to_reference, truth.xray_to_reference, atol=1e-4)
    assert result.rms_px < 1e-5
    assert result.residuals_px.shape == (n,) and result.residuals_mm.shape == (n,)


@pytest.mark.parametrize("seed", range(6))
def test_pnp_with_pixel_noise_recovers_pose_within_tolerance(seed, carm):
    rng = np.random.default_rng(100 + seed)
    sigma_px = 0.2
    pts = _fiducials(rng, carm, 20)
    uv = carm.project(pts) + rng.normal(0.0, sigma_px, (20, 2))
    result = calibrate_pnp(pts, uv, _without_prior(carm), use_prior=False)
    assert _angle_deg(result.xray_to_reference, carm.xray_to_reference) < 0.5
    # Depth along the beam is the least constrained direction at 700 mm: a few mm, not tens.
    assert np.linalg.norm(result.xray_to_reference[:3, 3] - carm.xray_to_reference[:3, 3]) < 5.0
    # What matters for back-projection: fresh points near the isocentre land on the same pixels.
    test = _fiducials(rng, carm, 200)
    fitted = result.apply_to(carm)
    assert np.max(np.linalg.norm(fitted.project(test) - carm.project(test), axis=1)) < 1.0
    # The residual reflects the noise: E|r|^2 = 2 sigma^2 (2N - 6) / (2N) for 6 fitted parameters.
    expected = sigma_px * np.sqrt(2 * (40 - 6) / 40)
    assert 0.6 * expected < result.rms_px < 1.4 * expected
    np.testing.assert_allclose(result.rms_mm, np.sqrt(np.mean(result.residuals_mm ** 2)))
    # mm at the isocentre: pixel size / magnification (square pixels here).
    np.testing.assert_allclose(result.residuals_mm,
                               result.residuals_px * carm.pixel_spacing_mm[0] / carm.magnification, rtol=1e-9)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n", [4, 8])
def test_pnp_coplanar_fiducials_solve_and_warn(seed, n, carm):
    rng = np.random.default_rng(seed)
    truth = dataclasses.replace(carm, xray_to_reference=_random_pose(rng))
    pts = _fiducials(rng, truth, n)
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal)
    pts -= np.outer((pts - truth.isocenter_ref_mm) @ normal, normal)
    result = calibrate_pnp(pts, truth.project(pts), _without_prior(carm), use_prior=False)
    np.testing.assert_allclose(result.xray_to_reference, truth.xray_to_reference, atol=1e-4)
    assert result.planarity < 1e-9
    assert any("coplanar" in w for w in result.warnings)
    assert "coplanar" in result.summary()


def test_pnp_spread_fiducials_do_not_warn(carm):
    rng = np.random.default_rng(8)
    pts = _fiducials(rng, carm, 10)
    result = calibrate_pnp(pts, carm.project(pts), carm)
    assert result.warnings == ()


def test_pnp_prior_start_is_used_and_wrong_correspondences_show_in_residual(carm):
    rng = np.random.default_rng(9)
    pts = _fiducials(rng, carm, 8)
    uv = carm.project(pts)
    uv[[0, 1]] = uv[[1, 0]]   # two fiducials swapped: no pose explains the pixels
    result = calibrate_pnp(pts, uv, carm)
    assert result.rms_px > 2.0
    assert np.argmax(result.residuals_px) in (0, 1)


def test_pnp_rejects_too_few_pairs(carm):
    pts = _fiducials(np.random.default_rng(1), carm, 3)
    with pytest.raises(ValueError, match="at least 4 fiducial pairs.*got 3"):
        calibrate_pnp(pts, carm.project(pts), carm)


def test_pnp_rejects_mismatched_counts(carm):
    pts = _fiducials(np.random.default_rng(1), carm, 6)
    with pytest.raises(ValueError, match="points_ref_mm has 6 points but pixels_uv has 5"):
        calibrate_pnp(pts, carm.project(pts)[:5], carm)


def test_pnp_rejects_nan_naming_field_and_row(carm):
    pts = _fiducials(np.random.default_rng(1), carm, 6)
    uv = carm.project(pts)
    uv[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"pixels_uv: non-finite value in row 3"):
        calibrate_pnp(pts, uv, carm)
    good_uv = carm.project(pts)
    pts[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"points_ref_mm: non-finite value in row 2"):
        calibrate_pnp(pts, good_uv, carm)


def test_pnp_rejects_bad_shapes(carm):
    with pytest.raises(ValueError, match=r"points_ref_mm: expected shape \(N, 3\)"):
        calibrate_pnp(np.zeros((5, 2)), np.zeros((5, 2)), carm)


def test_pnp_rejects_collinear_fiducials(carm):
    t = np.linspace(-40, 40, 6)[:, None]
    pts = carm.isocenter_ref_mm + t * np.array([[0.2, 0.5, 1.0]])
    with pytest.raises(ValueError, match="collinear"):
        calibrate_pnp(pts, carm.project(pts), carm)


def test_pnp_rejects_coincident_fiducials(carm):
    pts = _fiducials(np.random.default_rng(2), carm, 6)
    pts[4] = pts[1]
    with pytest.raises(ValueError, match="points 1 and 4 coincide"):
        calibrate_pnp(pts, carm.project(pts), carm)


def test_pnp_rejects_fiducials_on_one_plane_through_the_source(carm):
    # Every ray lies in one plane: the pixels are collinear and the pose is undetermined.
    rng = np.random.default_rng(3)
    beam, across = carm.xray_to_reference[:3, 2], carm.xray_to_reference[:3, 0]
    s, t = rng.uniform(0.9, 1.1, 8), rng.uniform(-0.05, 0.05, 8)
    pts = carm.source_ref_mm + 700 * (np.outer(s, beam) + np.outer(t, across))
    with pytest.raises(ValueError, match="pixels_uv.*collinear"):
        calibrate_pnp(pts, carm.project(pts), carm)


def test_kabsch_recovers_pose_and_reports_3d_residuals():
    rng = np.random.default_rng(4)
    truth = _random_pose(rng)
    pts_xray = rng.uniform(-60, 60, (7, 3)) + [0, 0, 700]
    pts_ref = pts_xray @ truth[:3, :3].T + truth[:3, 3]
    exact = calibrate_3d3d(pts_xray, pts_ref)
    np.testing.assert_allclose(exact.xray_to_reference, truth, atol=1e-9)
    assert exact.method == "kabsch" and exact.residuals_px is None and exact.rms_mm < 1e-9
    noisy = calibrate_3d3d(pts_xray, pts_ref + rng.normal(0, 0.3, pts_ref.shape))
    assert _angle_deg(noisy.xray_to_reference, truth) < 1.0
    assert 0.1 < noisy.rms_mm < 0.6
    assert "RMS fiducial registration error" in noisy.summary()


def test_kabsch_rejects_degenerate_input():
    pts = np.random.default_rng(5).uniform(-50, 50, (5, 3))
    with pytest.raises(ValueError, match="at least 4"):
        calibrate_3d3d(pts[:3], pts[:3])
    line = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="points_xray_mm.*collinear"):
        calibrate_3d3d(line, line + 1)
    with pytest.raises(ValueError, match="points_xray_mm has 5 points but points_ref_mm has 4"):
        calibrate_3d3d(pts, pts[:4])


def test_rigid_fit_with_scale_recovers_similarity():
    rng = np.random.default_rng(6)
    src = rng.normal(size=(10, 3))
    r = rotation([1.0, 2.0, 0.5], 0.8)[:3, :3]
    dst = 2.5 * src @ r.T + [1.0, -2.0, 3.0]
    m, scale = rigid_fit(src, dst, with_scale=True)
    assert scale == pytest.approx(2.5)
    np.testing.assert_allclose(src @ m[:3, :3].T + m[:3, 3], dst, atol=1e-9)


# ---- command line ---------------------------------------------------------------------------------

def _true_and_prior(carm: CArmGeometry) -> tuple[CArmGeometry, np.ndarray]:
    # The OR's C-arm sits 3 degrees and 8 mm away from the nominal pose in the input file.
    true_pose = translation([8.0, -3.0, 2.0]) @ carm.xray_to_reference @ rotation([0, 1, 0], np.radians(3))
    return dataclasses.replace(carm, xray_to_reference=true_pose), true_pose


def test_cli_calibrate_xray_from_csv_writes_geometry(tmp_path, carm, capsys):
    truth, true_pose = _true_and_prior(carm)
    rng = np.random.default_rng(11)
    pts = _fiducials(rng, truth, 8)
    uv = truth.project(pts) + rng.normal(0, 0.1, (8, 2))
    pairs = tmp_path / "pairs.csv"
    with pairs.open("w", newline="") as f:
        f.write("# fiducials touched with the tracked pointer\n")
        w = csv.writer(f)
        w.writerow(["name", "ref_x", "ref_y", "ref_z", "u", "v"])
        for i, (p, q) in enumerate(zip(pts, uv)):
            w.writerow([f"F{i + 1}", *p, *q])
    out = tmp_path / "carm_or.json"
    assert cli_main(["calibrate-xray", "--geometry", str(SIM_CARM), "--pairs", str(pairs), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "RMS reprojection error" in text and "mm at the isocentre" in text and "F8:" in text
    fitted = load_carm_geometry(out)
    assert _angle_deg(fitted.xray_to_reference, true_pose) < 0.5
    assert fitted.source_to_detector_mm == carm.source_to_detector_mm
    data = json.loads(out.read_text())
    assert data["_calibration"]["fiducials"] == 8 and data["_calibration"]["rms_px"] < 0.3
    assert "_pose" not in data and "_frames" in data


def test_cli_calibrate_xray_from_json_3d3d(tmp_path, carm, capsys):
    truth, true_pose = _true_and_prior(carm)
    pts_xray = np.random.default_rng(12).uniform(-50, 50, (5, 3)) + [0, 0, 700]
    pts_ref = pts_xray @ true_pose[:3, :3].T + true_pose[:3, 3]
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps({"pairs": [{"name": f"B{i}", "reference_mm": r.tolist(), "xray_mm": x.tolist()}
                                           for i, (r, x) in enumerate(zip(pts_ref, pts_xray))]}))
    out = tmp_path / "carm.json"
    assert cli_main(["calibrate-xray", "--geometry", str(SIM_CARM), "--pairs", str(pairs), "--out", str(out)]) == 0
    assert "RMS fiducial registration error" in capsys.readouterr().out
    np.testing.assert_allclose(load_carm_geometry(out).xray_to_reference, true_pose, atol=1e-6)


def test_cli_calibrate_xray_max_rms_fails_without_writing(tmp_path, carm, capsys):
    truth, _ = _true_and_prior(carm)
    pts = _fiducials(np.random.default_rng(13), truth, 6)
    uv = truth.project(pts) + np.random.default_rng(14).normal(0, 3.0, (6, 2))
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"reference_mm": p.tolist(), "pixel_uv": q.tolist()} for p, q in zip(pts, uv)]))
    out = tmp_path / "carm.json"
    rc = cli_main(["calibrate-xray", "--geometry", str(SIM_CARM), "--pairs", str(pairs), "--out", str(out),
                   "--max-rms-mm", "0.05"])
    assert rc == 1 and not out.exists()
    assert "exceeds --max-rms-mm" in capsys.readouterr().out


def test_cli_calibrate_xray_refuses_by_default_what_would_misplace_the_bodies(tmp_path, carm, capsys):
    """Two fiducials swapped fit to centimetres: without --max-rms-mm that used to be written and used; a
    pixel off the detector is a typo, named before any fit. 'inf' still writes whatever the fit."""
    truth, _ = _true_and_prior(carm)
    pts = _fiducials(np.random.default_rng(15), truth, 6)
    uv = truth.project(pts)
    uv[[0, 1]] = uv[[1, 0]]
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"reference_mm": p.tolist(), "pixel_uv": q.tolist()} for p, q in zip(pts, uv)]))
    out = tmp_path / "carm.json"
    args = ["calibrate-xray", "--geometry", str(SIM_CARM), "--pairs", str(pairs), "--out", str(out)]
    assert cli_main(args) == 1 and not out.exists()
    assert "exceeds --max-rms-mm 2: " in capsys.readouterr().out
    assert cli_main(args + ["--max-rms-mm", "inf"]) == 0 and out.exists()
    rows, cols = load_carm_geometry(SIM_CARM).detector_shape
    uv[[0, 1]] = uv[[1, 0]]
    uv[2] = [cols + 40.0, 10.0]
    pairs.write_text(json.dumps([{"name": f"F{i}", "reference_mm": p.tolist(), "pixel_uv": q.tolist()}
                                 for i, (p, q) in enumerate(zip(pts, uv))]))
    assert cli_main(args) == 2
    assert f"fiducial F2: pixel (u {cols + 40:g}, v 10) is off the detector's {cols} columns" in capsys.readouterr().err


def test_cli_calibrate_xray_bad_input_names_the_problem(tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    out = tmp_path / "o.json"
    args = ["calibrate-xray", "--geometry", str(SIM_CARM), "--pairs", str(pairs), "--out", str(out)]
    pairs.write_text("ref_x,ref_y,ref_z,u,v\n1,2,3,4,5\n1,2,abc,4,5\n")
    assert cli_main(args) == 2
    assert "row 2: column 'ref_z' is not a number: 'abc'" in capsys.readouterr().err
    pairs.write_text("ref_x,ref_y,ref_z,w\n1,2,3,4\n")
    assert cli_main(args) == 2
    assert "expected columns u,v" in capsys.readouterr().err
    pairs.write_text("ref_x,ref_y,ref_z,u,v\n" + "".join(f"{i},0,0,{i},{i}\n" for i in range(3)))
    assert cli_main(args) == 2
    assert "at least 4 fiducial pairs are needed, got 3" in capsys.readouterr().err
    assert not out.exists()
