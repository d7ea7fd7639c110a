"""benchmarks/bench_node_accuracy.py: the node's accuracy per spine, multimodal against the US-only fallback of
the same run, with the published meshes scored like the truth."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_node_accuracy",
                                                  REPO_ROOT / "benchmarks" / "bench_node_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_one_procedural_run_reports_what_the_demo_and_the_score_measured(bench, tmp_path, capsys):
    out = tmp_path / "acc"
    assert bench.main(["--seeds", "3", "--frames", "48", "--out", str(out)]) == 0
    result = json.loads((out / "node_accuracy.json").read_text())
    (run,) = result["runs"]
    assert run["spine"] == "procedural" and run["seed"] == 3
    # the per-level completion figures are the demo's own report, unchanged
    demo = json.loads((out / "0_procedural_3" / "report.json").read_text())
    assert list(run["levels"]) == list(demo["levels"])
    for level, figures in run["levels"].items():
        assert figures["multimodal_body_assd_mm"] == demo["levels"][level]["multimodal"]["body_assd_mm"]
        assert figures["us_only_body_assd_mm"] == demo["levels"][level]["us_only"]["body_assd_mm"]
        assert 0 < figures["mesh_assd_mm"] < 30 and 0 < figures["mesh_body_assd_mm"] < 30, (level, figures)
    means = run["means"]
    expected = sum(f["multimodal_body_assd_mm"] for f in run["levels"].values()) / len(run["levels"])
    assert math.isclose(means["multimodal_body_assd_mm"], expected)
    assert math.isclose(means["ratio_multimodal_to_us_only"],
                        means["multimodal_body_assd_mm"] / means["us_only_body_assd_mm"])
    assert result["spines"]["procedural"]["runs"] == 1
    assert "procedural (1 runs)" in capsys.readouterr().out


def test_spines_are_summarised_over_their_seeds(bench):
    runs = [{"spine": "a", "means": {"x": 1.0}}, {"spine": "a", "means": {"x": 3.0}},
            {"spine": "b", "means": {"x": float("nan")}}]
    assert bench.summarise(runs) == {"a": {"x": 2.0, "runs": 2}, "b": {"x": pytest.approx(float("nan"), nan_ok=True),
                                                                       "runs": 1}}


def test_seeds_must_be_integers(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--seeds", "7,x"])
    assert exc.value.code == 2
    assert "--seeds: comma-separated integers, got '7,x'" in capsys.readouterr().err


def test_a_missing_spine_is_refused_before_any_run(bench, capsys, tmp_path):
    """The second --spine is checked before the first one's run starts (each run takes minutes)."""
    with pytest.raises(SystemExit) as exc:
        bench.main(["--spine", "procedural", "--spine", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert f"--spine: not found: {tmp_path / 'nope'}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_level_one_model_left_empty_prints_a_dash(bench, capsys):
    levels = {"L1": {"multimodal_body_assd_mm": None, "us_only_body_assd_mm": 2.5, "mesh_assd_mm": 1.5,
                     "mesh_body_assd_mm": 1.4}}
    means = {"multimodal_body_assd_mm": float("nan"), "us_only_body_assd_mm": 2.5, "mesh_assd_mm": 1.5,
             "mesh_body_assd_mm": 1.4, "ratio_multimodal_to_us_only": float("nan")}
    runs = [{"spine": "s", "seed": 1, "levels": levels, "means": means}]
    bench._print(runs, bench.summarise(runs))
    assert "[L1 -/2.50]" in capsys.readouterr().out
