"""`usx-stream error-head fit` and `check` end to end on a real (tiny) paired-data file and a saved network."""

from __future__ import annotations

import json

import pytest
import torch

from usx_stream.cli import main
from usx_stream.completion.checkpoint import save_checkpoint
from usx_stream.completion.error_head import load_error_head
from usx_stream.completion.nets import ModelConfig, build_model

SMALL = dict(num_partial=64, num_labelmap=32, num_coarse_raw=32, refine_partial=32, refine_labelmap=16, num_out=128,
             up_ratio=2, latent=8, feature_size=32, pcn_widths=(16, 16, 32), renet_channels=32, renet_global=32,
             renet_fc_hidden=16, dense_feature=16, expand_feature=16, knn=(8,), pool_k=4, pool_points=(40, 20, 10))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("error_head_cli")
    paths = {}
    for name, extra in (("a", {}), ("b", {})):
        net = build_model(ModelConfig(**SMALL, **extra))
        paths[name] = save_checkpoint(folder / f"{name}.pt", net, net.cfg)
    return paths


def test_fit_then_check(tiny_pairs, weights, tmp_path, capsys):
    head = tmp_path / "head.pt"
    assert main(["error-head", "fit", "--model", str(weights["a"]), "--data", str(tiny_pairs), "--val",
                 str(tiny_pairs), "--out", str(head), "--epochs", "2"]) == 0
    assert "head trained on 5 vertebrae" in capsys.readouterr().out
    _, extra = load_error_head(head)
    assert extra["train_vertebrae"] == 5 and len(extra["history"]) == 2 and "error-head fit" in extra["command"]
    report = tmp_path / "check.json"
    assert main(["error-head", "check", "--model", str(weights["a"]), "--head", str(head), "--data",
                 str(tiny_pairs), "--latent", "2", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "Spearman rho (all points)" in out and "latent spread, K = 2" in out
    data = json.loads(report.read_text())
    assert data["vertebrae"] == 5 and data["points"] == 5 * 128 and len(data["deciles"]) == 10
    assert data["latent"]["vertebrae"] == 5


def test_a_head_of_other_weights_is_refused_by_name(tiny_pairs, weights, tmp_path, capsys):
    head = tmp_path / "head.pt"
    assert main(["error-head", "fit", "--model", str(weights["a"]), "--data", str(tiny_pairs), "--val",
                 str(tiny_pairs), "--out", str(head), "--epochs", "1"]) == 0
    assert main(["error-head", "check", "--model", str(weights["b"]), "--head", str(head), "--data",
                 str(tiny_pairs)]) == 2
    err = capsys.readouterr().err
    assert "--head" in err and "error head trained for completion weights" in err
