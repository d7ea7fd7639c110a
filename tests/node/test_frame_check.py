"""Edge validation: each bad frame the node has met is skipped and counted by reason, the valid frames
around it are compounded, and the volume's beam direction stays finite (a NaN pose once poisoned it)."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.node.launch import parse_launch
from usx_stream.node.frame_check import image_reason, pose_reason
from usx_stream.frames import TrackedFrame
from usx_stream.node.ingest import IngestStage

PIXEL_MM = 0.3


def _pose(z_mm: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] *= PIXEL_MM
    m[:3, 3] = (0.0, 0.0, z_mm)
    return m


def _frame(k: int, pixels=None, pose=None) -> TrackedFrame:
    pixels = np.full((64, 48), 90, np.uint8) if pixels is None else pixels
    return TrackedFrame(pixels=pixels, timestamp=float(k), index=k,
                        transforms={"ImageToReference": _pose(0.5 * k) if pose is None else pose})


def _singular():
    m = _pose(0.0)
    m[:3, :2] = 0.0
    return m


def _nan_rotation():
    m = _pose(0.0)
    m[1, 0] = np.nan
    return m


def _far():
    m = _pose(0.0)
    m[:3, 3] = 1e30
    return m


BAD = {
    "nonfinite_pose": dict(pose=_nan_rotation()),
    "multi_component": dict(pixels=np.zeros((64, 48, 3), np.uint8)),
    "empty_image": dict(pixels=np.zeros((0, 0), np.uint8)),
    "too_large": dict(pixels=np.broadcast_to(np.uint8(0), (65535, 65535))),
    "pose_out_of_range": dict(pose=_far()),
    "not_rigid": dict(pose=_singular()),
    "nonfinite_pixels": dict(pixels=np.full((64, 48), np.nan, np.float32)),
    "unsupported_dtype": dict(pixels=np.zeros((64, 48), np.int32)),
    "not_2d": dict(pixels=np.zeros((4, 64, 48), np.uint8)),
}


@pytest.mark.parametrize("auto_grid", [False, True], ids=["fixed-grid", "auto-grid"])
def test_every_bad_frame_is_skipped_and_counted_and_the_rest_compounded(auto_grid):
    compound = {"spacing_mm": 1.0} if auto_grid else {"spacing_mm": 1.0, "origin_mm": [-5, -5, -5],
                                                     "extent_mm": [30, 30, 60]}
    cfg = parse_launch({"compound": compound, "bone": {"enabled": False}})
    ingest = IngestStage(cfg.compound, cfg.bone, bootstrap_frames=10)
    frames = [_frame(k) for k in range(40)]
    for n, (reason, bad) in enumerate(BAD.items()):  # among the first frames, where the grid is sized
        frames.insert(2 + 3 * n, _frame(100 + n, **bad))
    for f in frames:
        ingest.add(f)
    ingest.flush()
    assert ingest.frames_pasted == 40
    counters = ingest.telemetry.report()["counters"]
    for reason in BAD:
        assert counters.get(f"frames_rejected:{reason}") == 1, (reason, counters)
    assert ingest.gate.counts() == {reason: 1 for reason in BAD}
    volume, info = ingest.snapshot()
    assert np.isfinite(info["beam_direction"]).all() and np.linalg.norm(info["beam_direction"]) > 0.99
    assert volume.data.shape[0] < 100, "an outlier must not size the grid"


def test_a_tracking_outlier_among_the_first_frames_does_not_size_the_grid():
    cfg = parse_launch({"compound": {"spacing_mm": 1.0, "margin_mm": 5.0}, "bone": {"enabled": False}})
    ingest = IngestStage(cfg.compound, cfg.bone, bootstrap_frames=10)
    frames = [_frame(k) for k in range(20)]
    glitch = _pose(0.0)
    glitch[:3, 3] = (2000.0, -3000.0, 900.0)   # 3.7 m away: inside the plausible range, far from the sweep
    frames.insert(4, _frame(99, pose=glitch))
    for f in frames:
        ingest.add(f)
    dims = ingest.reconstructor.geometry.dims
    assert max(dims) < 60, dims
    assert ingest.telemetry.report()["counters"]["frames_outside_grid"] == 1  # 3.7 m away: never grown to


def test_rules_accept_what_plus_sends():
    assert image_reason(np.zeros((616, 820), np.uint8)) == (None, "")
    assert image_reason(np.zeros((616, 820, 1), np.uint8)) == (None, "")
    sheared = _pose(0.0)
    sheared[:3, 1] = PIXEL_MM * np.array([0.048, 1.0, 0.0]) / np.hypot(0.048, 1.0)  # PLUS phantom calibration
    assert pose_reason(sheared, (616, 820)) == (None, "")
    reason, detail = pose_reason(_nan_rotation(), (10, 10))
    assert reason == "nonfinite_pose" and "NaN" in detail


def test_an_automatic_grid_grows_with_the_sweep_and_keeps_every_value_exactly():
    from usx_stream.compound.reconstructor import Reconstructor

    cfg = parse_launch({"compound": {"spacing_mm": 1.0, "margin_mm": 5.0}, "bone": {"enabled": False}})
    ingest = IngestStage(cfg.compound, cfg.bone, bootstrap_frames=10)
    rng = np.random.default_rng(0)
    # the first 10 frames size the grid around z = 0..4.5 mm; the sweep then moves on to z = 80 mm
    frames = [_frame(k, pixels=rng.integers(0, 255, (64, 48), dtype=np.uint8), pose=_pose(0.5 * k if k < 10 else 5.0 * (k - 9)))
              for k in range(26)]
    for f in frames:
        assert ingest.add(f)
    counters = ingest.telemetry.report()["counters"]
    assert ingest.frames_pasted == 26 and "frames_outside_grid" not in counters and counters["grid_grown"] >= 1
    grown = ingest.reconstructor.snapshot(fill_holes=False)
    # the same frames pasted into the final grid from the start: identical, voxel for voxel
    direct = Reconstructor(ingest.recon_config, ingest.reconstructor.geometry, semantics="exact", backend="numba")
    for f in frames:
        direct.add(f, image_to_reference=f.transforms["ImageToReference"])
    want = direct.snapshot(fill_holes=False)
    np.testing.assert_array_equal(grown.data, want.data)
    np.testing.assert_array_equal(grown.weights, want.weights)
