"""Evaluation: per-sample metrics, Wilcoxon comparison, the eval command's JSON and PNG report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon

from usx_stream.cli import main
from usx_stream.completion.checkpoint import save_checkpoint
from usx_stream.completion.nets import ModelConfig, build_model
from usx_stream.metrics import REGIONS, evaluate_completion
from usx_stream.train.data import read_pairs
from usx_stream.train.evaluate import METRICS, ModelEvaluation, evaluate_model, summarise, wilcoxon_compare


def _fake(name: str, cd_t: np.ndarray) -> ModelEvaluation:
    values = {r: {m: np.asarray(cd_t, dtype=float) * (1 + k) for m in METRICS} for k, r in enumerate(REGIONS)}
    return ModelEvaluation(name, np.zeros((len(cd_t), 4, 3), np.float32), values)


def test_wilcoxon_matches_scipy_and_knows_which_direction_is_better():
    rng = np.random.default_rng(0)
    b = rng.uniform(1e-3, 2e-3, 40)
    a = b - rng.uniform(0, 2e-4, 40)  # a lower everywhere
    labels = np.repeat(np.arange(5), 8)
    res = wilcoxon_compare(_fake("a", a), _fake("b", b), labels)
    w = res["overall"]["whole"]["cd_t_x1e4"]
    assert w["p_two_sided"] == pytest.approx(wilcoxon(a, b).pvalue)
    assert w["p_a_better"] == pytest.approx(wilcoxon(a, b, alternative="less").pvalue)
    assert w["p_a_better"] < 1e-6 and w["median_diff"] < 0 and w["n"] == 40
    # For F-scores higher is better: the same numbers make "a" the worse model.
    assert res["overall"]["whole"]["f1"]["p_a_better"] > 0.99
    assert set(res["per_level"]) == {"L1", "L2", "L3", "L4", "L5"}
    summary = summarise(_fake("a", a), labels)
    assert summary["overall"]["whole"]["cd_t_x1e4"]["mean"] == pytest.approx(a.mean() * 1e4)
    assert summary["per_level"]["L2"]["whole"]["cd_t_x1e4"]["n"] == 8


def test_evaluate_model_uses_the_metrics_of_each_sample(tiny_pairs):
    torch.manual_seed(0)
    cfg = ModelConfig.small(multimodal=False)
    net = build_model(cfg).eval()
    arrays = read_pairs(tiny_pairs)
    ev = evaluate_model(net, cfg, arrays, name="untrained")
    assert ev.predictions.shape == (len(arrays), cfg.num_out, 3)
    direct = evaluate_completion(ev.predictions[1], arrays.complete[1], mm_per_unit=arrays.mm_per_unit)
    assert np.isfinite(ev.values["whole"]["hd95_mm"]).all()
    for region in REGIONS:
        # An untrained network may put no point in a region: NaN there, in both.
        assert np.isclose(ev.values[region]["hd95_mm"][1], direct[region]["hd95_mm"], equal_nan=True)


def test_eval_command_writes_json_and_report(tiny_pairs, tmp_path):
    torch.manual_seed(1)
    paths = []
    for mm in (True, False):
        cfg = ModelConfig.small(multimodal=mm)
        paths.append(save_checkpoint(tmp_path / f"{mm}.pt", build_model(cfg), cfg))
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    rc = main(["eval", "--data", str(tiny_pairs), "--model", str(paths[0]), "--compare", str(paths[1]),
               "--json", str(out_json), "--report", str(out_png)])
    assert rc == 0
    result = json.loads(out_json.read_text())
    assert result["samples"] == 5 and len(result["models"]) == 2
    assert result["models"][0]["name"].startswith("multimodal")
    assert set(result["models"][1]["per_level"]) == {"L1", "L2", "L3", "L4", "L5"}
    assert set(result["wilcoxon"]["overall"]) == set(REGIONS)
    assert "hd95_mm" in result["wilcoxon"]["overall"]["body"]
    assert out_png.stat().st_size > 10_000 and out_png.read_bytes()[:4] == b"\x89PNG"
    # the same model with and without the fit, then both fitted
    fitted = tmp_path / "fitted.json"
    for extra, names_differ in (([], True), (["--fit-compare"], False)):
        assert main(["eval", "--data", str(tiny_pairs), "--model", str(paths[0]), "--compare", str(paths[0]),
                     "--fit-body", *extra, "--json", str(fitted)]) == 0
        models = json.loads(fitted.read_text())["models"]
        assert (models[0]["name"] != models[1]["name"]) == names_differ
        assert models[0]["name"].endswith("+ X-ray body fit")  # what the fit does: test_fit_body_moves_misplaced_bodies_back_…
    assert main(["eval", "--data", str(tiny_pairs), "--model", str(paths[0]), "--fit-compare",
                 "--json", str(fitted)]) == 2
    assert main(["eval", "--data", str(tiny_pairs), "--model", str(tmp_path / "none.pt"),
                 "--json", str(out_json)]) == 2


class _ShiftedTruth(torch.nn.Module):
    """Stands in for a network: "completes" each sample to its ground truth moved 2 mm caudally."""

    def __init__(self, complete: np.ndarray):
        super().__init__()
        self.clouds = torch.from_numpy(complete - np.array([0, 0, 0.04], np.float32))
        self.next = 0

    def forward(self, partial, labelmap):
        out = self.clouds[self.next:self.next + len(partial)]
        self.next += len(partial)
        return {"fine": out}


def test_fit_body_moves_misplaced_bodies_back_for_multimodal_models_only(tiny_pairs):
    from usx_stream.completion.body_fit import fit_body_to_silhouette

    arrays = read_pairs(tiny_pairs)
    cfg = ModelConfig.small(multimodal=True)
    plain = evaluate_model(_ShiftedTruth(arrays.complete), cfg, arrays, name="mm")
    fitted = evaluate_model(_ShiftedTruth(arrays.complete), cfg, arrays, name="mm", fit_body=True)
    assert fitted.name == "mm + X-ray body fit"
    labelmap = arrays.labelmap[:, :cfg.num_labelmap]
    expected = np.stack([fit_body_to_silhouette(p, lm)[0] for p, lm in zip(plain.predictions, labelmap)])
    np.testing.assert_allclose(fitted.predictions, expected, atol=1e-6)
    assert np.all(fitted.values["body"]["assd_mm"] < plain.values["body"]["assd_mm"])
    us_cfg = ModelConfig.small(multimodal=False)
    us = evaluate_model(_ShiftedTruth(arrays.complete), us_cfg, arrays, name="us", fit_body=True)
    assert us.name == "us"
    us_plain = evaluate_model(_ShiftedTruth(arrays.complete), us_cfg, arrays, name="us")
    np.testing.assert_array_equal(us.predictions, us_plain.predictions)
