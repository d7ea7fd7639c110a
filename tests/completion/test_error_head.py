"""The error head: its features, file format and hash tie to the completion weights, training that learns a
planted relation, the rank report, the front door, and the packaged heads on held-out real anatomy."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tiny_models import tiny_config, tiny_inputs
from usx_stream.completion import ops
from usx_stream.completion.checkpoint import load_default, state_dict_hash
from usx_stream.completion.engine import CompletionEngine
from usx_stream.completion.error_head import (FEATURES_MULTIMODAL, FEATURES_US_ONLY, ErrorHead, load_error_head,
                                              packaged_error_head, point_features, save_error_head)
from usx_stream.completion.front import LevelPoints, complete_levels
from usx_stream.completion.nets import build_model
from usx_stream.completion.prepare import vertebra_rotation
from usx_stream.train.error_head import CompletionErrors, calibrate, fit_error_head, predict, rank_report


def _clouds(seed=0, b=2, n=300):
    rng = np.random.default_rng(seed)
    pts = torch.from_numpy(rng.uniform(-1, 1, (b, n, 3)).astype(np.float32))
    partial = torch.from_numpy(rng.uniform(-1, 1, (b, 128, 3)).astype(np.float32))
    labelmap = torch.from_numpy(rng.uniform(-1, 1, (b, 64, 3)).astype(np.float32))
    return pts, partial, labelmap


def test_features_are_the_documented_distances():
    pts, partial, labelmap = _clouds()
    f = point_features(pts, partial, labelmap)
    assert f.shape == (2, 300, len(FEATURES_MULTIMODAL))
    assert point_features(pts, partial).shape == (2, 300, len(FEATURES_US_ONLY))
    brute_us = torch.cdist(pts.double(), partial.double()).min(-1).values
    brute_lm = torch.cdist(pts.double(), labelmap.double()).min(-1).values
    np.testing.assert_allclose(f[..., 3].exp().numpy() - 1e-3, brute_us.numpy(), atol=1e-5)
    np.testing.assert_allclose(f[..., 4].exp().numpy() - 1e-3, brute_lm.numpy(), atol=1e-5)
    np.testing.assert_allclose(f[..., 5].numpy(), (pts - pts.mean(1, keepdim=True)).norm(dim=-1).numpy(), atol=1e-6)
    # the CPU k-d tree path gives the same features; the order of the evidence does not matter
    with ops.tree_knn():   # (float64 distances there, float32 matrix products here: 1e-3 in log of a small one)
        np.testing.assert_allclose(point_features(pts, partial, labelmap).numpy(), f.numpy(), atol=1e-3)
    shuffled = point_features(pts, partial[:, torch.randperm(128)], labelmap[:, torch.randperm(64)])
    np.testing.assert_allclose(shuffled.numpy(), f.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match=r"points must be \(B, N >= 1, 3\), got \(300, 3\)"):
        point_features(pts[0], partial, labelmap)


def test_head_file_is_tied_to_its_completion_weights(tmp_path):
    head = ErrorHead(multimodal=True)
    torch.nn.init.normal_(head.mlp[0].weight)
    path = save_error_head(tmp_path / "h.pt", head, "ab" * 32, {"note": "x"})
    loaded, extra = load_error_head(path, completion_hash="ab" * 32)
    assert extra == {"note": "x"}
    pts, partial, labelmap = _clouds()
    torch.testing.assert_close(loaded(pts, partial, labelmap), head.eval()(pts, partial, labelmap))
    with pytest.raises(ValueError, match=r"trained for completion weights abababababab\.\.\., these are cdcdcdcdcdcd"):
        load_error_head(path, completion_hash="cd" * 32)
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an error head file"):
        load_error_head(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_error_head(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="needs the labelmap"):
        head(pts, partial)


@pytest.mark.parametrize("variant", ["multimodal", "us_only"])
def test_packaged_heads_belong_to_the_packaged_weights(variant):
    model, cfg, _ = load_default(variant)
    head, extra = load_error_head(packaged_error_head(variant), completion_hash=state_dict_hash(model))
    assert head.multimodal == cfg.multimodal
    assert extra["train_vertebrae"] > 100 and extra["val_spearman_rho"] > 0.15


def _planted(seed, n_vertebrae=48, points=256):
    """Features whose column 3 (log distance to the ultrasound) sets the error scale: the head must learn it."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_vertebrae, points, len(FEATURES_MULTIMODAL))).astype(np.float32)
    scale = 0.02 * np.exp(1.5 * feats[..., 3])   # rank correlation of error and scale ~0.75
    error = rng.laplace(0.0, 1.0, size=scale.shape).__abs__() * scale
    return CompletionErrors(torch.from_numpy(feats), error.astype(np.float32), np.zeros((n_vertebrae, points, 3)),
                            ["L3"] * n_vertebrae, 50.0)


def test_training_learns_a_planted_error_scale_and_calibrates():
    train, val, test = _planted(1), _planted(2, 16), _planted(3, 16)
    head, history = fit_error_head(train, val, multimodal=True, epochs=15, batch=4, lr=1e-2, seed=0)
    assert len(history) == 15 and history[-1]["loss"] < history[0]["loss"]
    report = rank_report(predict(head, test), test.error)
    assert report["spearman_rho"] > 0.6 and report["per_vertebra_rho_positive"] == 1.0
    means = [d["error_mean"] for d in report["deciles"]]
    assert means[-1] > 3 * means[0]
    # calibrated on validation: the mean prediction there is the mean error
    assert predict(head, val).mean() == pytest.approx(float(val.error.mean()), rel=1e-3)
    assert calibrate(head, val) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match="epochs, batch and lr must be positive"):
        fit_error_head(train, val, multimodal=True, epochs=0)


def test_averaged_fit_keeps_the_mean_of_the_weights_from_the_named_epoch_on():
    train, val, test = _planted(1), _planted(2, 16), _planted(3, 16)

    def fit(epochs, average_from):
        head, _ = fit_error_head(train, val, multimodal=True, epochs=epochs, batch=4, lr=1e-2, seed=0,
                                 average_from=average_from)
        # calibration shifts only the last bias; every other weight is what training or averaging left
        return head, {k: v for k, v in head.state_dict().items() if k != "mlp.4.bias"}

    _, after_2 = fit(2, 1)          # the weights after epoch 1 (the trajectory does not depend on `epochs`)
    _, after_3 = fit(3, 2)          # the weights after epoch 2
    head, mean_2_3 = fit(3, 1)      # their average
    assert set(mean_2_3) == set(after_3) and "mlp.0.weight" in mean_2_3
    for k, v in mean_2_3.items():
        torch.testing.assert_close(v, (after_2[k] + after_3[k]) / 2, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(after_2["mlp.0.weight"], after_3["mlp.0.weight"])
    assert rank_report(predict(head, test), test.error)["spearman_rho"] > 0.6
    assert predict(head, val).mean() == pytest.approx(float(val.error.mean()), rel=1e-3)
    for bad in (3, -1):
        with pytest.raises(ValueError, match="average_from must be in"):
            fit_error_head(train, val, multimodal=True, epochs=3, average_from=bad)


def test_rank_report_on_known_rankings():
    rng = np.random.default_rng(0)
    error = rng.uniform(0, 3, (6, 100))
    perfect = rank_report(error * 2, error, ["L1", "L1", "L2", "L2", "L3", "L3"])
    assert perfect["spearman_rho"] == pytest.approx(1.0) and perfect["per_vertebra_rho_median"] == pytest.approx(1.0)
    means = [d["error_mean"] for d in perfect["deciles"]]
    assert means == sorted(means) and sum(d["points"] for d in perfect["deciles"]) == 600
    assert set(perfect["per_level"]) == {"L1", "L2", "L3"}
    unrelated = rank_report(rng.uniform(0, 3, (6, 100)), error)
    assert abs(unrelated["spearman_rho"]) < 0.15
    with pytest.raises(ValueError, match=r"same \(N >= 3, P\) shape, got \(6, 100\) and \(6, 99\)"):
        rank_report(error, error[:, :99])


def _level_points(multimodal: bool):
    rng = np.random.default_rng(4)
    rot = vertebra_rotation(cranial=[0.0, 0.1, 1.0], posterior=[0.0, 1.0, 0.0])
    partial = np.array([0.0, 40.0, 100.0]) + rng.normal(0.0, [20.0, 8.0, 12.0], (400, 3)) @ rot
    labelmap = (np.array([0.0, 15.0, 100.0]) + rng.normal(0.0, [1.0, 8.0, 12.0], (200, 3)) @ rot) if multimodal else None
    return [LevelPoints("L3", partial, labelmap, rot)]


@pytest.mark.parametrize("multimodal", [True, False])
def test_front_door_gives_the_heads_expected_error_in_mm(multimodal):
    torch.manual_seed(0)
    cfg = tiny_config(multimodal=multimodal)
    head = ErrorHead(multimodal=multimodal)
    engine = CompletionEngine(build_model(cfg), device="cpu", warmup=False, error_head=head)
    plain = complete_levels(engine, _level_points(multimodal))[0]
    with_head = complete_levels(engine, _level_points(multimodal), error_head=True)[0]
    np.testing.assert_array_equal(with_head.points_mm, plain.points_mm)       # the completion is untouched
    assert plain.spread_mm is None
    p = with_head.prepared
    partial = torch.from_numpy(p.partial_unit[None])
    labelmap = None if p.labelmap_unit is None else torch.from_numpy(p.labelmap_unit[None])
    fine = engine.run_device(partial, labelmap)
    mm_per_unit = float(np.cbrt(abs(np.linalg.det(p.model_to_input[:3, :3]))))
    expected = head(fine, partial, labelmap)[0].detach().numpy() * mm_per_unit
    np.testing.assert_allclose(with_head.spread_mm, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="samples .* or error_head, not both"):
        complete_levels(engine, _level_points(multimodal), error_head=True, samples=2)
    with pytest.raises(ValueError, match="a US-only head for a multimodal network|a multimodal head for a US-only"):
        CompletionEngine(build_model(cfg), device="cpu", warmup=False, error_head=ErrorHead(not multimodal))


REAL = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "vertebrae", "verse_spines",
                    "Verse631")


def test_packaged_head_ranks_the_error_on_a_held_out_real_spine(tmp_path):
    """Verse631 is held out of every training and selection set of the packaged weights and heads."""
    if not os.path.isdir(REAL):
        if os.environ.get("USX_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"shared data required but missing: {REAL}")
        pytest.skip("shared data not present")
    from pathlib import Path

    from usx_stream.datasets.node_sessions import generate_node
    from usx_stream.train.data import read_pairs
    from usx_stream.train.error_head import completion_errors, latent_spread

    launch = Path(__file__).resolve().parents[2] / "launch" / "demo.toml"
    out = generate_node(tmp_path / "v631.h5", sessions=1, seed=71, launch=launch, spine=REAL, progress=False,
                        complete_points=8192)
    data = read_pairs(out.path)
    model, _, _ = load_default("multimodal")
    head, _ = load_error_head(packaged_error_head("multimodal"), completion_hash=state_dict_hash(model))
    errors = completion_errors(model, data)
    head_report = rank_report(predict(head, errors), errors.error)
    latent_report = rank_report(latent_spread(model, data, k=4), errors.error)
    assert head_report["spearman_rho"] > 0.15 and head_report["per_vertebra_rho_positive"] >= 0.8
    assert head_report["deciles"][-1]["error_mean"] > 1.4 * head_report["deciles"][0]["error_mean"]
    assert head_report["spearman_rho"] > latent_report["spearman_rho"] + 0.1
