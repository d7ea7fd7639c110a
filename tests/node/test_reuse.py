"""Level reuse (``completion.reuse_*``, ``usx_stream.node.reuse``): an update completes only the levels whose
inputs changed since their surface was completed, keeps publishing the others' last surfaces, and a level
completed alone gets the points it would get in the full batch. Real networks (small, untrained), a real
simulated session compounded by the real ingest stage."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.completion.front import LevelPoints, complete_levels
from usx_stream.completion.prepare import vertebra_rotation
from usx_stream.node.ingest import IngestStage
from usx_stream.node.launch import ConfigError, parse_launch
from usx_stream.node.reuse import LevelReuse, cell_change, cell_keys, rotation_angle_deg
from usx_stream.node.update import SurfaceUpdater
from usx_stream.sim.session import simulate_session

from node_fixtures import ROI, tiny_engines



@pytest.fixture(scope="module")
def engines():
    return tiny_engines()


def _levels(n=3, seed=1) -> list[LevelPoints]:
    rng = np.random.default_rng(seed)
    rot = vertebra_rotation(cranial=[0.0, 0.1, 1.0], posterior=[0.0, 1.0, 0.0])
    out = []
    for k in range(n):
        centre = np.array([0.0, 40.0, 100.0 - 35.0 * k])
        partial = centre + rng.normal(0.0, [20.0, 8.0, 12.0], (700 + 50 * k, 3)) @ rot
        labelmap = centre + rng.normal(0.0, [1.0, 8.0, 12.0], (300, 3)) @ rot - 25.0 * rot[1]
        out.append(LevelPoints(f"L{k + 1}", partial, labelmap, rot))
    return out


def test_cell_change_and_rotation_angle():
    a = cell_keys(np.array([[0.2, 0.2, 0.2], [1.5, 0.0, 0.0], [-3.2, 7.9, 100.0], [0.7, 0.9, 0.1]]), 1.0)
    assert len(a) == 3                                     # two points share the cell (0, 0, 0)
    b = cell_keys(np.array([[0.2, 0.2, 0.2], [1.5, 0.0, 0.0], [5.0, 5.0, 5.0]]), 1.0)
    assert cell_change(a, a) == 0.0
    assert cell_change(a, b) == pytest.approx(2 / 4)      # {-3,7,100} and {5,5,5} differ, union of 4
    r = vertebra_rotation(cranial=[0.0, 0.0, 1.0], posterior=[0.0, 1.0, 0.0])
    c, s = np.cos(np.radians(2.0)), np.sin(np.radians(2.0))
    turned = r @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    assert rotation_angle_deg(r, r) == pytest.approx(0.0, abs=1e-6)
    assert rotation_angle_deg(r, turned) == pytest.approx(2.0, abs=1e-6)


def test_reuse_decision_follows_each_tolerance_and_names_the_one_missed():
    reuse = LevelReuse(change=0.05, rotation_deg=1.0, shift_mm=0.5)
    item = _levels(1)[0]
    done = reuse.inputs_of(item, "multimodal", 0.0)
    assert reuse.miss_reason(done, item.level) == "new"  # nothing completed yet
    done.surface = object()
    reuse.remember(item.level, done)
    assert reuse.reusable(reuse.inputs_of(item, "multimodal", 1.0), item.level)
    assert reuse.miss_reason(reuse.inputs_of(item, "us_only", 1.0), item.level) == "new"      # other model
    fewer = LevelPoints(item.level, item.partial_mm[: int(0.9 * len(item.partial_mm))], item.labelmap_mm, item.rotation)
    assert reuse.miss_reason(reuse.inputs_of(fewer, "multimodal", 1.0), item.level) == "cells"  # 10 % gone
    moved = LevelPoints(item.level, item.partial_mm, item.labelmap_mm + [0.0, 0.0, 1.0], item.rotation)
    assert reuse.miss_reason(reuse.inputs_of(moved, "multimodal", 1.0), item.level) == "labelmap"  # 1 mm
    no_xray = LevelPoints(item.level, item.partial_mm, None, item.rotation)
    assert reuse.miss_reason(reuse.inputs_of(no_xray, "multimodal", 1.0), item.level) == "labelmap"
    shifted = LevelPoints(item.level, item.partial_mm + [0.3, 0.0, 0.0], item.labelmap_mm, item.rotation)
    nudged = reuse.inputs_of(shifted, "multimodal", 1.0)
    nudged.cells = done.cells                            # the same cells, the centroid 0.3 / 0.8 mm away
    assert reuse.reusable(nudged, item.level)
    nudged.centroid_mm = done.centroid_mm + [0.8, 0.0, 0.0]
    assert reuse.miss_reason(nudged, item.level) == "shift"
    turned = vertebra_rotation(cranial=[0.0, 0.14, 1.0], posterior=[0.0, 1.0, 0.0])   # ~2.3 degrees
    rotated = LevelPoints(item.level, item.partial_mm, item.labelmap_mm, turned)
    assert reuse.miss_reason(reuse.inputs_of(rotated, "multimodal", 1.0), item.level) == "rotation"
    assert not LevelReuse(change=0.0).enabled
    assert LevelReuse(change=0.0).miss_reason(done, item.level) == "off"
    with pytest.raises(ValueError, match="reuse_change"):
        LevelReuse(change=1.0)


def test_a_level_completed_alone_gets_the_points_of_the_full_batch(engines):
    """Completing only the changed levels must not change what a level's completion is."""
    levels = _levels(3)
    for variant in ("multimodal", "us_only"):
        full = complete_levels(engines[variant], levels, seed=0, fit_body=variant == "multimodal")
        alone = complete_levels(engines[variant], levels[1:2], seed=0, fit_body=variant == "multimodal")
        np.testing.assert_allclose(alone[0].points_mm, full[1].points_mm, rtol=0, atol=1e-4)


def test_launch_keys():
    c = parse_launch({}).completion
    assert c.reuse_change == 0.03 and c.reuse_rotation_deg == 1.0 and c.reuse_shift_mm == 0.5
    assert parse_launch({"completion": {"reuse_change": 0}}).completion.reuse_change == 0
    with pytest.raises(ConfigError, match="completion.reuse_change"):
        parse_launch({"completion": {"reuse_change": 0.9}})


@pytest.fixture(scope="module")
def session():
    return simulate_session(11, n_frames=90)


def _ingest(session, cfg, frames):
    stage = IngestStage(cfg.compound, cfg.bone, calibration=session.calibration, bootstrap_frames=20)
    for f in frames:
        stage.add(f)
    stage.flush()
    return stage


def _updater(engines, cfg):
    return SurfaceUpdater(engines, bone=cfg.bone, xray_cfg=cfg.xray, surface=cfg.surface, seed=0,
                          completion=cfg.completion)


def _update(updater, stage):
    volume, info = stage.snapshot()
    return updater.update(volume, beam_direction=info["beam_direction"], xray=None, timestamp=info["timestamp"])


@pytest.mark.slow
def test_unchanged_levels_keep_their_surface_and_changed_ones_are_completed(engines, session):
    landmarks = {lv: v.centroid_mm.tolist() for lv, v in session.spine.vertebrae.items()}
    cfg = parse_launch({"compound": ROI, "bone": {"landmarks_mm": landmarks}, "surface": {"grid_mm": 4.0},
                        "completion": {"reuse_change": 0.03}})
    stage = _ingest(session, cfg, session.frames[:60])
    updater = _updater(engines, cfg)
    first = _update(updater, stage)
    assert first.completed and not first.reused
    second = _update(updater, stage)                      # the same volume: nothing to complete
    assert second.completed == [] and second.reused == first.completed
    assert set(second.surfaces) == set(first.surfaces)    # nothing disappears
    for lv, surface in second.surfaces.items():
        np.testing.assert_array_equal(surface.vertices_mm, first.surfaces[lv].vertices_mm)
        np.testing.assert_array_equal(second.points_ref_mm[lv], first.points_ref_mm[lv])
        assert surface.metadata["completed_age_s"] >= 0 and surface.timestamp == first.surfaces[lv].timestamp
        assert "completed_age_s" not in first.surfaces[lv].metadata    # the published original is not touched
    # the rest of the sweep: levels it adds bone to are completed again, with their new inputs
    for f in session.frames[60:]:
        stage.add(f)
    stage.flush()
    third = _update(updater, stage)
    assert third.completed and set(third.completed) | set(third.reused) == set(third.surfaces)
    counters = updater.telemetry.report()["counters"]
    assert counters["levels_completed"] == len(first.completed) + len(third.completed)
    assert counters["levels_reused"] == len(second.reused) + len(third.reused)
    misses = {k: v for k, v in counters.items() if k.startswith("reuse_miss_")}
    assert sum(misses.values()) == counters["levels_completed"] and misses["reuse_miss_new"] == len(first.completed)
    # the same update with reuse off completes every level, to the same points for the completed ones
    fresh = _update(_updater(engines, cfg.with_overrides({"completion.reuse_change": 0.0})), stage)
    assert fresh.completed == list(fresh.surfaces) and fresh.reused == []
    for lv in third.completed:
        np.testing.assert_allclose(third.points_ref_mm[lv], fresh.points_ref_mm[lv], rtol=0, atol=1e-4)
    # reuse=False on the updater that has reused: every level completed from this volume alone, as if reuse
    # were off (what the demo scores: figures that do not depend on when earlier updates ran)
    volume, info = stage.snapshot()
    final = updater.update(volume, beam_direction=info["beam_direction"], xray=None, timestamp=info["timestamp"],
                           reuse=False)
    assert final.completed == list(fresh.surfaces) and final.reused == []
    for lv in final.completed:
        np.testing.assert_allclose(final.points_ref_mm[lv], fresh.points_ref_mm[lv], rtol=0, atol=1e-4)
