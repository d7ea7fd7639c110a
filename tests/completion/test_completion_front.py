"""The completion front door in millimetres: the node's surface update and ``CompletionEngine.complete`` go
through it and give the same points; empty levels, the body fit, and the packaged-weights constructor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_config

from usx_stream.completion import checkpoint
from usx_stream.completion.engine import CompletionEngine
from usx_stream.completion.front import LevelPoints, complete_levels, prepare_levels
from usx_stream.completion.nets import build_model
from usx_stream.completion.prepare import vertebra_rotation
from usx_stream.node.launch import parse_launch
from usx_stream.node.update import SurfaceUpdater, UpdateInputs


@pytest.fixture(scope="module")
def engines():
    torch.manual_seed(0)
    return {variant: CompletionEngine(build_model(tiny_config(multimodal=variant == "multimodal")), device="cpu",
                                      max_batch=2, warmup=False)
            for variant in ("multimodal", "us_only")}


def _levels(seed: int = 4) -> list[LevelPoints]:
    """Three vertebrae in a Reference where the spine runs along a tilted axis, mm."""
    rng = np.random.default_rng(seed)
    out = []
    for k, lv in enumerate(("L2", "L3", "L4")):
        centre = np.array([10.0, 40.0, 120.0 - 35.0 * k])
        rot = vertebra_rotation(cranial=[0.1, 0.2, 1.0], posterior=[0.0, 1.0, 0.1 * k])
        partial = centre + rng.normal(0.0, [20.0, 8.0, 12.0], (700 + 100 * k, 3)) @ rot
        labelmap = centre + rng.normal(0.0, [1.0, 8.0, 12.0], (300, 3)) @ rot - 25.0 * rot[1]
        out.append(LevelPoints(lv, partial, labelmap, rot))
    return out


def _update(engines, levels, fusion, *, fit_body):
    cfg = parse_launch({"xray": {"fit_body": fit_body}, "surface": {"grid_mm": 4.0}})
    updater = SurfaceUpdater(engines, bone=cfg.bone, xray_cfg=cfg.xray, surface=cfg.surface, seed=0)
    per_level = {item.level: item.partial_mm for item in levels}
    updater.inputs = lambda *a, **k: UpdateInputs(fusion, "xray", per_level, list(levels), xray_expected=True)
    return updater.update(None, beam_direction=np.array([0.0, -1.0, 0.0]), xray=None)


@pytest.mark.parametrize("fusion", ["multimodal", "us_only"])
def test_update_and_complete_give_identical_points(engines, fusion):
    levels = _levels()
    result = _update(engines, levels, fusion, fit_body=False)
    engine = engines[fusion]
    points = engine.complete([lv.partial_mm for lv in levels], [lv.labelmap_mm for lv in levels],
                             rotations=[lv.rotation for lv in levels])
    assert list(result.points_ref_mm) == ["L2", "L3", "L4"]
    for item, expected in zip(levels, points):
        assert expected.shape == (engine.cfg.num_out, 3)
        np.testing.assert_array_equal(result.points_ref_mm[item.level], expected)
    assert bool(result.labelmap_ref_mm) == (fusion == "multimodal")


def test_body_fit_of_the_update_is_the_front_doors(engines):
    levels = _levels()
    result = _update(engines, levels, "multimodal", fit_body=True)
    done = complete_levels(engines["multimodal"], levels, fit_body=True)
    for c in done:
        np.testing.assert_array_equal(result.points_ref_mm[c.level], c.points_mm)
        assert c.metadata and set(c.metadata) <= {"xray_body_shift_mm", "xray_body_scale", "xray_body_depth_scale",
                                                    "xray_body_fit"}
        assert {k: result.surfaces[c.level].metadata[k] for k in c.metadata} == c.metadata
    with pytest.raises(ValueError, match="fit_body needs a multimodal engine"):
        complete_levels(engines["us_only"], levels, fit_body=True)


def test_round_trip_and_empty_levels(engines):
    engine = engines["multimodal"]
    levels = _levels()
    levels.insert(1, LevelPoints("none", np.zeros((0, 3)), levels[0].labelmap_mm, levels[0].rotation))
    levels.append(LevelPoints("no_labelmap", levels[0].partial_mm, None, levels[0].rotation))
    done = complete_levels(engine, levels)
    assert [c.level for c in done] == ["L2", "none", "L3", "L4", "no_labelmap"]
    for c in (done[1], done[4]):
        assert c.points_mm.shape == (0, 3) and c.prepared is None
    prepared = done[0].prepared
    # the unit frame maps back onto the input points (the resampled partial is a subset of them)
    back = prepared.to_input_frame(prepared.partial_unit)
    dist = np.linalg.norm(back[:, None] - levels[0].partial_mm[None], axis=2).min(axis=1)
    assert dist.max() < 1e-3
    again = prepare_levels(levels, num_partial=engine.cfg.num_partial, num_labelmap=engine.cfg.num_labelmap,
                           multimodal=True)
    np.testing.assert_array_equal(again[0].partial_unit, prepared.partial_unit)
    assert complete_levels(engine, []) == []


def test_from_default_loads_the_packaged_weights():
    if not checkpoint.default_path("us_only").is_file():
        pytest.skip("no packaged us_only weights")
    engine = CompletionEngine.from_default("us_only", device="cpu", max_batch=1, warmup=False)
    _, cfg, _ = checkpoint.load_default("us_only")
    assert engine.cfg == cfg and not engine.cfg.multimodal
    assert engine.backend == "eager" and engine.max_batch == 1
    with pytest.raises(ValueError, match="variant"):
        CompletionEngine.from_default("ct")


def test_damaged_weights_are_named_as_a_completion_failure_of_the_levels():
    """NaN in the weights: the error names the completion and its levels, whether the NaN stops the network's
    neighbour search or only reaches its output."""
    levels = _levels()
    for where in ("first", "last"):
        torch.manual_seed(0)
        engine = CompletionEngine(build_model(tiny_config(multimodal=False)), device="cpu", warmup=False)
        params = list(engine.model.parameters())
        with torch.no_grad():
            (params[0] if where == "first" else params[-1]).fill_(float("nan"))
        with pytest.raises(ValueError, match=r"^completion of L2, L3, L4: ") as info:
            complete_levels(engine, levels)
        if where == "last":
            assert "the network returned non-finite points" in str(info.value)
