"""The export command and the GPU check script, end to end on CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_config

from usx_stream import cli
from usx_stream.completion.checkpoint import save_checkpoint
from usx_stream.completion.nets import build_model

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def test_export_command_reports_a_convertible_graph(tmp_path):
    model = build_model(tiny_config()).eval()
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model, model.cfg, {})
    out = tmp_path / "export.json"
    assert cli.main(["export", "--model", str(ckpt), "--batch", "2", "--program", str(tmp_path / "m.pt2"),
                     "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["unconvertible_ops"] == [] and report["graph_nodes"] > 100
    loaded = torch.export.load(tmp_path / "m.pt2")
    assert loaded.module()(*[torch.rand(2, n, 3) for n in (64, 32)]).shape == (2, 128, 3)


def test_export_command_names_a_missing_checkpoint(tmp_path):
    assert cli.main(["export", "--model", str(tmp_path / "missing.pt")]) == 2


@pytest.mark.slow
def test_gpu_check_runs_reduced_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the full GPU check is run by hand on GPU machines")
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu_check.json"
    gpu_check.main(["--out", str(out), "--repeats", "1", "--frames", "1", "--cache-dir", str(tmp_path)])
    report = json.loads(out.read_text())
    assert report["mode"].startswith("reduced")
    assert report["backends"]["eager"]["available"]
    assert "needs a CUDA device" in report["backends"]["tensorrt"]["reason"]
    assert report["equivalence"]["eager"]["max_unit"] == 0.0
    assert report["timing"]["batch_5"]["eager"]["calls"] == 1
    assert "compounding" in report
