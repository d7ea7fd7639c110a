"""The node end to end on a short simulated session: PLUS-like replay server -> OpenIGTLink -> node ->
POLYDATA to a real OpenIGTLink client. Networks are the real modules with untrained weights (the wiring
is under test here; accuracy is the demo's and the evaluation's business)."""

import re
import time

import numpy as np
import pytest

from usx_stream.node.launch import parse_launch
from usx_stream.frames import LEVELS, XrayImage
from usx_stream.node.pipeline import Node
from usx_stream.demo.live import LiveSimulation
from usx_stream.sim.session import simulate_session, write_session
from usx_stream.node.update import SurfaceUpdater
from usx_stream.sources.replay import SequenceReplay
from usx_stream.xray.cache import XrayCache

from node_fixtures import ROI, tiny_engines

pytestmark = pytest.mark.slow

# The simulator's Reference: origin at the L3 body centre, x left, y posterior, z cranial.


@pytest.fixture(scope="module")
def session_files(tmp_path_factory):
    session = simulate_session(11, n_frames=90)
    files = write_session(session, tmp_path_factory.mktemp("session"))
    return session, files


def test_node_streams_all_five_completed_surfaces_to_a_socket_client(session_files, tmp_path):
    session, files = session_files
    cfg = parse_launch({"completion": {"min_frames": 20, "period_s": 0.2}, "compound": ROI,
                        "record": {"enabled": True, "dir": str(tmp_path / "rec")}})
    live = LiveSimulation(cfg, session, files["sequence"], engines=tiny_engines(), rate=0).start()
    node = live.node
    try:
        assert node.wait_source_done(timeout=120)
        # the update after the last frame, then its surfaces on the wire
        assert node.wait_update(node.updates, timeout=60)
        assert live.counter.all_levels.wait(timeout=30), f"received {live.received}; node error: {node.error!r}"
    finally:
        live.stop()
    assert node.error is None
    assert node.ingest.frames_received == len(session.frames)          # every frame arrived and was kept
    assert node.source.stats().get("dropped", 0) == 0
    assert "frames_outside_grid" not in node.telemetry.report()["counters"]
    for lv in LEVELS:
        surface = live.counter.latest[f"{lv}_Completed"]
        assert len(surface.vertices_mm) >= 4 and len(surface.triangles) >= 4  # untrained net: any closed mesh
        assert surface.metadata["fusion"] == "multimodal"
        # the X-ray body fit's outcome travels with the surface (untrained net: applied or not, with why)
        assert "xray_body_shift_mm" in surface.metadata or "xray_body_fit" in surface.metadata
        assert np.all(np.isfinite(surface.vertices_mm))
    stages = node.telemetry.report()["stages"]
    for stage in ("bone_detect", "compound", "bone_points", "complete", "body_fit", "mesh", "end_to_end"):
        assert stages[stage]["count"] > 0, stage
    recorded = sorted(p.name for p in (tmp_path / "rec").iterdir())
    assert "inputs_0000.igs.mha" in recorded and "surfaces" in recorded


def _landmark_node(session_files, source_class=SequenceReplay):
    """A node without X-ray or OpenIGTLink output, levels from the true centroids as landmarks."""
    session, files = session_files
    cfg = parse_launch({"completion": {"min_frames": 20, "period_s": 0.2}, "compound": ROI,
                        "publish": {"igtl_enabled": False},
                        "bone": {"landmarks_mm": {lv: v.centroid_mm.tolist() for lv, v in session.spine.vertebrae.items()}}})
    return Node(cfg, source=source_class(files["sequence"], rate=0), engines=tiny_engines(), xray=XrayCache(),
                calibration=session.calibration)


def _update_after_the_last_frame(node):
    """Run ``node`` over its whole source, then one update; the node is stopped either way."""
    node.start()
    try:
        assert node.wait_source_done(timeout=120)
        return node.run_update()
    finally:
        node.stop()


def test_us_only_fallback_until_an_xray_arrives(session_files):
    node = _landmark_node(session_files)
    result = _update_after_the_last_frame(node)
    assert node.error is None
    assert result.fusion == "us_only" and result.centres_source == "landmarks"
    assert set(result.surfaces) == set(LEVELS)
    assert all(s.metadata["fusion"] == "us_only" for s in result.surfaces.values())
    assert not any(k.startswith("xray_body") for s in result.surfaces.values() for k in s.metadata)


def test_an_xray_whose_labelmap_places_no_level_falls_back_to_the_landmarks_us_only(session_files):
    # The image and its geometry arrived, the labelmap is empty (a segmentation that found nothing): the
    # landmark levels are completed US-only and the status says why; every update used to fail instead.
    session, _ = session_files
    node = _landmark_node(session_files)
    xr = session.xray
    node.xray.update(pixels=xr.pixels, labelmap=np.zeros_like(xr.labelmap), geometry=xr.geometry, timestamp=0.0)
    result = _update_after_the_last_frame(node)
    assert node.error is None and not node.telemetry.report()["counters"].get("updates_failed")
    assert result.fusion == "us_only" and result.centres_source == "landmarks"
    assert set(result.surfaces) == set(LEVELS)
    assert node.status == "L1\u2013L5 us_only (the X-ray labelmap has no vertebra label 1..5)", node.status


def test_meshing_on_two_workers_gives_the_same_surfaces_as_on_one(session_files):
    node = _landmark_node(session_files)
    node.start()
    try:
        assert node.wait_source_done(timeout=120)
        volume, info = node.ingest.snapshot()
    finally:
        node.stop()
    results = {}
    for workers in (1, 2):
        surface = parse_launch({"surface": {"workers": workers}}).surface
        updater = SurfaceUpdater(node.updater.engines, bone=node.cfg.bone, xray_cfg=node.cfg.xray, surface=surface)
        try:
            results[workers] = updater.update(volume, beam_direction=info["beam_direction"], xray=None)
        finally:
            updater.close()
    assert list(results[1].surfaces) == list(results[2].surfaces) == list(LEVELS)
    for lv in LEVELS:
        np.testing.assert_array_equal(results[1].surfaces[lv].vertices_mm, results[2].surfaces[lv].vertices_mm)
        np.testing.assert_array_equal(results[1].surfaces[lv].triangles, results[2].surfaces[lv].triangles)


class _BadXrayFirst(SequenceReplay):
    """The recording, preceded by an X-ray labelmap that no cache can accept (label 9: labels are 0..5)."""

    def _run(self) -> None:
        labels = np.zeros((8, 8), np.uint8)
        labels[2:4, 2:4] = 9
        self._emit(XrayImage(None, labels, np.array([0.3, 0.3]), 1.0))
        super()._run()


def test_a_bad_xray_is_counted_and_the_node_keeps_every_frame(session_files):
    session, _ = session_files
    node = _landmark_node(session_files, _BadXrayFirst)
    result = _update_after_the_last_frame(node)
    assert node.error is None
    assert node.ingest.frames_received == len(session.frames)
    assert node.telemetry.report()["counters"]["xray_rejected"] == 1
    assert node.xray.rejected == 1 and "label 9" in node.xray.last_error
    assert result.fusion == "us_only" and set(result.surfaces) == set(LEVELS)
    # the display is told the X-ray was refused and why, not that there is none
    assert node.status.startswith("L1\u2013L5 us_only (X-ray rejected: labelmap: label 9 outside 0..5"), node.status


def _node_with_bone(session, files, bone: dict):
    cfg = parse_launch({"completion": {"min_frames": 20, "period_s": 0.05}, "compound": ROI,
                        "publish": {"igtl_enabled": False}, "bone": bone})
    return Node(cfg, source=SequenceReplay(files["sequence"], rate=0), engines=tiny_engines(), xray=XrayCache(),
                calibration=session.calibration)


def test_a_failing_update_is_counted_and_told_and_the_node_goes_on(session_files):
    # Damaged weights (a NaN in the US-only network) make every update fail with a ValueError naming why.
    # The node stays up, keeps compounding, counts the failures, shows the reason as its status, and
    # recovers as soon as the weights are whole again.
    import torch

    session, files = session_files
    node = _landmark_node(session_files)
    weight = next(node.updater.engines["us_only"].model.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.fill_(float("nan"))
    node.start()
    try:
        assert node.wait_source_done(timeout=120)
        deadline = time.monotonic() + 60
        while not node.telemetry.report()["counters"].get("updates_failed") and time.monotonic() < deadline:
            node.wait_update(node.updates, timeout=0.2)
        assert node.error is None and node.ingest.frames_received == len(session.frames)
        assert node.telemetry.report()["counters"]["updates_failed"] >= 1
        # (the levels are those with bone points when the failing update ran: the sweep may still be going)
        assert re.match(r"update failed: completion of L\d(, L\d)*: ", node.status), node.status
        with torch.no_grad():
            weight.copy_(saved)
        result = node.run_update()
    finally:
        node.stop()
    assert set(result.surfaces) == set(LEVELS)
    assert node.status.startswith("L1\u2013L5 us_only")


def test_landmarks_in_metres_are_told_not_completed(session_files):
    # Markups sent in metres: every level would be split from a few millimetres of spine. The status says
    # what is wrong; nothing is completed and nothing fails.
    session, files = session_files
    metres = {lv: (v.centroid_mm / 1000.0).tolist() for lv, v in session.spine.vertebrae.items()}
    node = _node_with_bone(session, files, {"landmarks_mm": metres})
    result = _update_after_the_last_frame(node)
    assert not result.surfaces and not node.telemetry.report()["counters"].get("updates_failed")
    assert node.status.startswith("landmarks: L1 and L2 centres are 0.0 mm apart per level (15-60 expected"), \
        node.status


def test_one_known_level_needs_the_cranial_axis_and_is_completed_with_it(session_files):
    # A single level centre (one landmark, or an X-ray of one vertebra) gives no direction to split along or
    # to orient the vertebra by: without bone.cranial_axis the status says so (no failure); with it, the
    # level is completed.
    session, files = session_files
    one = {"L3": session.spine.vertebrae["L3"].centroid_mm.tolist()}
    node = _node_with_bone(session, files, {"landmarks_mm": one})
    result = _update_after_the_last_frame(node)
    assert not result.surfaces and not node.telemetry.report()["counters"].get("updates_failed")
    assert node.status == ("L3 only: one level centre (landmarks) needs bone.cranial_axis in the launch file, "
                           "or two or more levels"), node.status
    node = _node_with_bone(session, files, {"landmarks_mm": one, "cranial_axis": [0.0, 0.0, 2.0]})   # z cranial
    result = _update_after_the_last_frame(node)
    assert set(result.surfaces) == {"L3"} and node.status == "L3 us_only (no X-ray)", node.status


def test_a_cranial_axis_the_levels_contradict_is_told_and_the_levels_still_completed(session_files):
    # The axis only orients a lone level; with all five known it is checked against them, so a flipped axis
    # is caught before an X-ray of one vertebra would be completed upside down.
    session, files = session_files
    every = {lv: v.centroid_mm.tolist() for lv, v in session.spine.vertebrae.items()}
    node = _node_with_bone(session, files, {"landmarks_mm": every, "cranial_axis": [0.0, 0.0, -1.0]})
    result = _update_after_the_last_frame(node)
    assert set(result.surfaces) == set(LEVELS)
    assert node.status == ("L1\u2013L5 us_only (no X-ray); bone.cranial_axis points caudally (L1 lies below L5 "
                           "along it): flip it"), node.status
