"""The node's surface update with completion uncertainty: launch keys, per-vertex ``uncertainty_mm``, the
per-level coverage metadata, K = 0 giving today's surfaces, and the CPU period with reuse between runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usx_stream.completion.engine import CompletionEngine
from usx_stream.completion.front import LevelPoints
from usx_stream.completion.nets import ModelConfig, build_model
from usx_stream.completion.prepare import vertebra_rotation
from usx_stream.node.launch import ConfigError, parse_launch
from usx_stream.node.update import SurfaceUpdater, UpdateInputs
from usx_stream.surface.mesh import is_watertight, mesh_points

TINY = dict(num_partial=64, num_labelmap=32, num_coarse_raw=32, refine_partial=32, refine_labelmap=16,
            num_out=128, up_ratio=2, latent=8, feature_size=32, pcn_widths=(16, 16, 32), renet_channels=32,
            renet_global=32, renet_fc_hidden=16, dense_feature=16, expand_feature=16, knn=(8,), pool_k=4,
            pool_points=(40, 20, 10))


def _tiny_engines(with_heads: bool) -> dict:
    from usx_stream.completion.error_head import ErrorHead

    torch.manual_seed(0)
    out = {}
    for variant in ("multimodal", "us_only"):
        extra = {} if variant == "multimodal" else {"multimodal": False, "num_labelmap": 0, "refine_labelmap": 0}
        head = ErrorHead(multimodal=variant == "multimodal") if with_heads else None
        out[variant] = CompletionEngine(build_model(ModelConfig(**{**TINY, **extra})), device="cpu", max_batch=5,
                                        warmup=False, error_head=head)
    return out


@pytest.fixture(scope="module")
def engines():
    return _tiny_engines(with_heads=False)


def _levels() -> list[LevelPoints]:
    rng = np.random.default_rng(1)
    out = []
    for k, lv in enumerate(("L2", "L3")):
        centre = np.array([0.0, 40.0, 100.0 - 35.0 * k])
        rot = vertebra_rotation(cranial=[0.0, 0.1, 1.0], posterior=[0.0, 1.0, 0.0])
        partial = centre + rng.normal(0.0, [20.0, 8.0, 12.0], (400 + 50 * k, 3)) @ rot
        labelmap = centre + rng.normal(0.0, [1.0, 8.0, 12.0], (200, 3)) @ rot - 25.0 * rot[1]
        out.append(LevelPoints(lv, partial, labelmap, rot))
    return out


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _updater(engines, completion: dict | None, fusion: str = "multimodal", surface: dict | None = None):
    cfg = parse_launch({"surface": {"grid_mm": 4.0, **(surface or {})}, "completion": completion or {}})
    updater = SurfaceUpdater(engines, bone=cfg.bone, xray_cfg=cfg.xray, surface=cfg.surface, seed=0,
                             completion=cfg.completion if completion is not None else None)
    levels = _levels()
    state = {"fusion": fusion}
    per_level = {item.level: item.partial_mm for item in levels}

    def inputs(*a, **k):
        lv = levels if state["fusion"] == "multimodal" else [LevelPoints(x.level, x.partial_mm, None, x.rotation)
                                                             for x in levels]
        return UpdateInputs(state["fusion"], "xray", per_level, lv, xray_expected=True)

    updater.inputs = inputs
    updater.clock = Clock()
    return updater, state


def _run(updater):
    return updater.update(None, beam_direction=np.array([0.0, -1.0, 0.0]), xray=None)


def test_launch_keys_defaults_and_ranges():
    c = parse_launch({}).completion
    assert c.uncertainty == "error_head" and c.uncertainty_samples == 0 and c.uncertainty_period_s == 2.0
    latent = parse_launch({"completion": {"uncertainty": "latent", "uncertainty_samples": 8}}).completion
    assert latent.uncertainty_samples == 8
    with pytest.raises(ConfigError, match="completion.uncertainty_samples"):
        parse_launch({"completion": {"uncertainty_samples": -1}})
    with pytest.raises(ConfigError, match=r"completion.uncertainty_samples: must be >= 1 .*'latent', got 0"):
        parse_launch({"completion": {"uncertainty": "latent"}})
    with pytest.raises(ConfigError, match=r"completion.uncertainty_samples: applies to .* 'error_head'\), got 4"):
        parse_launch({"completion": {"uncertainty_samples": 4}})
    with pytest.raises(ConfigError, match="completion.uncertainty"):
        parse_launch({"completion": {"uncertainty": "ensemble"}})
    with pytest.raises(ConfigError, match="completion.uncertainty_period_s"):
        parse_launch({"completion": {"uncertainty_period_s": -0.5}})


def test_k0_gives_todays_surfaces_and_coverage_metadata(engines):
    today = _run(_updater(engines, None)[0])
    k0 = _run(_updater(engines, {"uncertainty": "off"})[0])
    assert list(today.surfaces) == list(k0.surfaces) == ["L2", "L3"]
    for lv in today.surfaces:
        np.testing.assert_array_equal(k0.points_ref_mm[lv], today.points_ref_mm[lv])
        np.testing.assert_array_equal(k0.surfaces[lv].vertices_mm, today.surfaces[lv].vertices_mm)
        np.testing.assert_array_equal(k0.surfaces[lv].triangles, today.surfaces[lv].triangles)
        assert k0.surfaces[lv].point_data == {} and "uncertainty_mean_mm" not in k0.surfaces[lv].metadata
        meta = k0.surfaces[lv].metadata
        assert meta["bone_points"] == len(today.partial_ref_mm[lv]) and meta["xray_level"] == "yes"


def test_surface_backend_torch_meshes_with_the_torch_mesher(engines):
    updater, _ = _updater(engines, None, surface={"backend": "torch", "workers": 2})
    assert (updater.mesh_backend, updater.mesh_device) == ("torch", "cpu")
    result = _run(updater)
    updater.close()
    assert list(result.surfaces) == ["L2", "L3"]
    for lv, surface in result.surfaces.items():
        torch_mesh = mesh_points(result.points_ref_mm[lv], backend="torch", grid_mm=4.0)
        scipy_mesh = mesh_points(result.points_ref_mm[lv], backend="scipy", grid_mm=4.0)
        assert is_watertight(surface.triangles)
        np.testing.assert_array_equal(surface.vertices_mm, torch_mesh.vertices_mm)
        np.testing.assert_array_equal(surface.triangles, torch_mesh.triangles)
        assert not np.array_equal(surface.vertices_mm, scipy_mesh.vertices_mm)


def test_uncertainty_on_every_vertex_with_its_summary(engines):
    updater, _ = _updater(engines, {"uncertainty": "latent", "uncertainty_samples": 4})
    result = _run(updater)
    for lv, surface in result.surfaces.items():
        values = surface.point_data["uncertainty_mm"]
        assert values.shape == (len(surface.vertices_mm),) and values.dtype == np.float32
        assert np.isfinite(values).all() and (values >= 0).all() and values.max() > 0
        meta = surface.metadata
        assert meta["uncertainty_mean_mm"] == pytest.approx(float(values.mean()), abs=1e-3)
        assert meta["uncertainty_max_mm"] == pytest.approx(float(values.max()), abs=1e-3)
        assert meta["uncertainty_samples"] == 4 and meta["uncertainty_age_s"] == 0


def test_cpu_period_reuses_the_last_spread_until_due_or_stale(engines, monkeypatch):
    # the same inputs every update: reuse_change 0 makes every update complete (a kept surface keeps its spread)
    updater, state = _updater(engines, {"uncertainty": "latent", "uncertainty_samples": 3, "uncertainty_period_s": 2.0,
                                        "reuse_change": 0.0})
    calls = {"n": 0}
    for engine in engines.values():
        original = engine.run_device_samples

        def counted(*a, _original=original, **k):
            calls["n"] += 1
            return _original(*a, **k)

        monkeypatch.setattr(engine, "run_device_samples", counted)
    first = _run(updater)
    assert calls["n"] == 1
    updater.clock.t += 0.5                                   # within the period: reused, one update older
    second = _run(updater)
    assert calls["n"] == 1
    for lv, surface in second.surfaces.items():
        assert surface.metadata["uncertainty_age_s"] == pytest.approx(0.5)
        # the same spread, carried onto a mesh of the mean completed without draws (equal up to rounding)
        np.testing.assert_allclose(surface.point_data["uncertainty_mm"], first.surfaces[lv].point_data["uncertainty_mm"],
                                   rtol=1e-3, atol=1e-5)
    updater.clock.t += 2.0                                   # due again
    _run(updater)
    assert calls["n"] == 2
    state["fusion"] = "us_only"                              # another model: its own spread at once
    updater.clock.t += 0.1
    result = _run(updater)
    assert calls["n"] == 3
    assert all(s.metadata["uncertainty_age_s"] == 0 and s.metadata["xray_level"] == "no"
               for s in result.surfaces.values())
    updater.uncertainty_period_s = 0.0                       # period 0: every update
    updater.clock.t += 0.1
    _run(updater)
    assert calls["n"] == 4


@pytest.fixture(scope="module")
def engines_with_heads():
    return _tiny_engines(with_heads=True)


@pytest.mark.parametrize("fusion", ["multimodal", "us_only"])
def test_error_head_by_default_every_update_same_surfaces(engines_with_heads, fusion):
    off = _run(_updater(engines_with_heads, {"uncertainty": "off"}, fusion)[0])
    updater, _ = _updater(engines_with_heads, {"reuse_change": 0.0}, fusion)   # the default: error_head
    calls = {"n": 0}
    head = engines_with_heads[fusion].error_head
    original = head.forward

    def counted(*a, **k):
        calls["n"] += 1
        return original(*a, **k)

    head.forward = counted
    try:
        first = _run(updater)
        updater.clock.t += 0.5
        second = _run(updater)
    finally:
        del head.forward
    assert calls["n"] == 2                                   # cheap: every update that completes, no period
    for result in (first, second):
        assert list(result.surfaces) == ["L2", "L3"]
        for lv, surface in result.surfaces.items():
            # the completion itself does not change
            np.testing.assert_array_equal(surface.vertices_mm, off.surfaces[lv].vertices_mm)
            values = surface.point_data["uncertainty_mm"]
            assert values.shape == (len(surface.vertices_mm),) and np.isfinite(values).all() and (values > 0).all()
            meta = surface.metadata
            assert meta["uncertainty_method"] == "error_head" and "uncertainty_samples" not in meta
            assert meta["uncertainty_age_s"] == 0
            assert meta["uncertainty_mean_mm"] == pytest.approx(float(values.mean()), abs=1e-3)


def test_weights_without_a_head_publish_no_uncertainty(engines):
    result = _run(_updater(engines, {})[0])                  # error_head asked for, the engines have none
    assert result.surfaces and all("uncertainty_mm" not in s.point_data and "uncertainty_method" not in s.metadata
                                   for s in result.surfaces.values())
