"""The width response: how much of a left-right stretch of the ultrasound cloud reaches the completed body."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from usx_stream.cli import main
from usx_stream.completion.nets import ModelConfig
from usx_stream.train.data import read_pairs
from usx_stream.train.network_io import model_inputs
from usx_stream.train.width_response import body_width, model_width_response, stretch_left_right, width_response


def clouds(n=6, p=400, seed=0):
    g = np.random.default_rng(seed)
    return (g.normal(size=(n, p, 3)) * [0.4, 0.3, 0.25]).astype(np.float32)


def test_a_completion_that_is_its_cloud_follows_fully_one_that_ignores_it_not_at_all_and_a_mix_halfway():
    partial, truth = clouds(), clouds(seed=1)
    full = width_response(lambda p: p, partial, truth, mm_per_unit=50.0)
    none = width_response(lambda p: truth, partial, truth, mm_per_unit=50.0)
    half = width_response(lambda p: (p + partial) / 2, partial, truth, mm_per_unit=50.0)
    for result, follow in ((full, 1.0), (none, 0.0), (half, 0.5)):
        assert [r["factor"] for r in result["stretches"]] == [0.9, 1.1, 1.2]
        for r in result["stretches"]:
            assert r["follow"] == pytest.approx(follow, abs=1e-5)
            assert r["width_ratio"] == pytest.approx(1 + follow * (r["factor"] - 1), abs=1e-5)
        assert result["follow_mean"] == pytest.approx(follow, abs=1e-5) and result["n"] == 6
    widths = [body_width(t, t.mean(0)) for t in truth]
    assert none["truth_width_mm"] == pytest.approx(np.median(widths) * 50.0)
    assert none["pred_width_mm"] == pytest.approx(none["truth_width_mm"])
    with pytest.raises(ValueError, match=r"factors must differ from 1, got \[1.0, 1.2\]"):
        width_response(lambda p: p, partial, truth, mm_per_unit=50.0, factors=(1.0, 1.2))


def test_stretch_moves_only_x_about_each_clouds_own_centroid_and_width_counts_body_points_only():
    partial = clouds(3) + np.array([[[0.3, 0.0, 0.0]], [[-0.2, 0.1, 0.0]], [[0.0, 0.0, 0.5]]], np.float32)
    out = stretch_left_right(partial, 1.2)
    np.testing.assert_array_equal(out[..., 1:], partial[..., 1:])
    np.testing.assert_allclose(out[..., 0].mean(1), partial[..., 0].mean(1), atol=1e-6)
    np.testing.assert_allclose(out[..., 0].std(1), 1.2 * partial[..., 0].std(1), rtol=1e-5)
    # an arch (posterior, +y) far wider than the body does not count
    body = np.stack([np.linspace(-1, 1, 101), -np.ones(101), np.zeros(101)], 1)
    arch = np.stack([np.linspace(-5, 5, 101), np.ones(101), np.zeros(101)], 1)
    assert body_width(np.concatenate([body, arch]), np.zeros(3)) == pytest.approx(1.92)


class _Echo(torch.nn.Module):
    """Stands in for a network: "completes" each sample to its own (stretched) partial cloud."""

    def forward(self, partial, labelmap):
        return {"fine": partial}


def test_a_us_only_models_completions_are_measured_back_in_the_files_frame(tiny_pairs):
    arrays = read_pairs(tiny_pairs)
    cfg = ModelConfig.small(multimodal=False)
    result = model_width_response(_Echo(), cfg, arrays, name="echo")
    assert result["name"] == "echo" and result["follow_mean"] == pytest.approx(1.0, abs=1e-4)
    # the US-only frame is centred on the partial; measured there, the body split would cut elsewhere
    partial = arrays.partial[:, :cfg.num_partial]
    expected = np.median([body_width(p, t.mean(0)) for p, t in zip(partial, arrays.complete)])
    assert result["pred_width_mm"] == pytest.approx(expected * arrays.mm_per_unit, rel=1e-5)
    shifted = model_inputs(arrays, cfg, "echo")[0].numpy()
    assert not np.allclose(shifted, partial)


def test_eval_reports_each_models_width_response(tiny_pairs, tmp_path, capsys):
    # the shipped weights: an untrained network completes no body at all (its widths are NaN)
    out = tmp_path / "eval.json"
    assert main(["eval", "--data", str(tiny_pairs), "--model", "default", "--compare", "us-only",
                 "--width-response", "--json", str(out)]) == 0
    widths = json.loads(out.read_text())["width_response"]
    assert [w["name"].split(" ")[0] for w in widths] == ["multimodal", "us_only"]
    for w in widths:
        assert len(w["stretches"]) == 3 and np.isfinite(w["follow_mean"]) and w["truth_width_mm"] > 20
        assert 0.5 < w["pred_width_mm"] / w["truth_width_mm"] < 2
    assert "left-right stretch of the cloud x0.9 ->" in capsys.readouterr().out
    assert main(["eval", "--data", str(tiny_pairs), "--model", "default", "--json", str(out)]) == 0
    assert "width_response" not in json.loads(out.read_text())                        # only when asked
