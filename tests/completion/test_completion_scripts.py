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


@pytest.mark.slow
def test_gpu_check_end_to_end_runs_the_cpu_path_and_says_why_the_gpu_path_did_not(tmp_path):
    """``gpu_check.py --end-to-end`` in its own process, as a GPU session runs it; on a CPU machine the GPU
    path is skipped with its reason and the CPU path streams the whole node."""
    import math
    import os
    import subprocess
    import sys

    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--end-to-end",
                           "--e2e-seconds", "8", "--repeats", "1", "--frames", "1", "--out", str(out),
                           "--cache-dir", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["backends"]["eager"]["available"]  # the engine check still runs: end_to_end is an addition
    section = report["end_to_end"]
    cpu, gpu = section["paths"]["cpu"], section["paths"]["gpu"]
    assert cpu["status"] == "ok"
    for q in ("p50", "p95"):
        assert math.isfinite(cpu["end_to_end_ms"][q]) and cpu["end_to_end_ms"][q] > 0
    for stage in ("end_to_end", "snapshot", "complete", "mesh", "compound"):
        assert cpu["stages"][stage]["count"] > 0 and cpu["stages"][stage]["p50_ms"] > 0
    assert cpu["frames_compounded"] > 0 and cpu["frames_dropped"] >= 0
    assert "levels_completed" in cpu and "queued_mean_first_vs_last_third" in cpu["queue_growth"]
    compute = cpu["compute"]
    assert compute["completion_device"] == "cpu" and compute["precision"] == "fp32"
    assert compute["engines"]["multimodal"]["device"] == "cpu"
    assert compute["reconstructor"]["backend"] == compute["compound_backend"]
    # the bone points run where the bone channel was compounded: on the device only for the torch backend
    assert compute["bone_points"]["updates"] > 0
    assert compute["bone_points"]["on_device"] == (compute["compound_backend"] == "torch")
    if not torch.cuda.is_available():
        assert gpu["status"] == "skipped" and "cuda" in gpu["reason"].lower()
        assert section["gpu_over_cpu"]["available"] is False


def _gpu_e2e(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import gpu_e2e

    return gpu_e2e


def test_gpu_e2e_cpu_path_without_numba_compounds_with_torch_and_says_so(monkeypatch):
    gpu_e2e = _gpu_e2e(monkeypatch)
    real = gpu_e2e.importlib.util.find_spec
    monkeypatch.setattr(gpu_e2e.importlib.util, "find_spec",
                        lambda name, *a: None if name == "numba" else real(name, *a))
    overrides, why = gpu_e2e.substitution("cpu")
    assert overrides["compound.backend"] == "torch" and overrides["compound.device"] == "cpu"
    assert overrides["completion.device"] == "cpu" and "numba" in why
    assert gpu_e2e.substitution("gpu") == (gpu_e2e.PATHS["gpu"], None)


def test_gpu_e2e_ratios_are_gpu_over_cpu_and_need_both_paths(monkeypatch):
    gpu_e2e = _gpu_e2e(monkeypatch)
    stages = lambda p50, p95: {"end_to_end": {"p50_ms": p50, "p95_ms": p95}, "mesh": {"p50_ms": p50 / 2}}
    gpu = {"status": "ok", "stages": stages(20.0, 30.0)}
    cpu = {"status": "ok", "stages": stages(200.0, 400.0), "substituted": "numba is not installed"}
    r = gpu_e2e.ratios(gpu, cpu)
    assert r["end_to_end"] == {"p50": 0.1, "p95": 0.075} and r["stage_p50"]["mesh"] == 0.1
    assert r["end_to_end_completing"] == {"p50": None, "p95": None} and "numba" in r["caveat"]
    assert gpu_e2e.ratios({"status": "skipped"}, cpu)["available"] is False


def test_bench_uncertainty_times_each_method_on_completing_updates(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_uncertainty", REPO_ROOT / "benchmarks" / "bench_uncertainty.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bu.json"
    assert bench.main(["--methods", "off", "error_head", "--repeats", "1", "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    # every update completes and meshes (no level reuse); only error_head has an uncertainty step
    assert set(rows["off"]["stages_ms_median"]) == {"complete", "mesh"}
    assert set(rows["error_head"]["stages_ms_median"]) == {"complete", "uncertainty", "mesh"}
    with pytest.raises(SystemExit):
        bench.main(["--methods", "latent", "--out", str(out)])
