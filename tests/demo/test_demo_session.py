"""`usx-stream demo --session`: the node on an existing session folder simulated from a real spine."""

from __future__ import annotations

import json
import math

import pytest

from usx_stream.cli import main
from usx_stream.sim.real_spine import real_spine
from usx_stream.sim.session import load_session, simulate_session, write_session


@pytest.fixture
def real_session(vertebrae_data, tmp_path):
    """A short session (48 frames) of Verse561, which has no L5."""
    spine = real_spine(vertebrae_data / "verse_spines" / "Verse561")
    session = simulate_session(1, n_frames=48, spine=spine)
    write_session(session, tmp_path / "session")
    return tmp_path / "session"


@pytest.mark.slow
def test_demo_on_a_real_spine_session_reports_the_present_levels(real_session, tmp_path, capsys):
    loaded = load_session(real_session)
    assert list(loaded.spine.vertebrae) == ["L1", "L2", "L3", "L4"] and len(loaded.frames) == 48
    assert loaded.xray is not None and loaded.xray.labelmap.max() == 4
    out = tmp_path / "demo"
    assert main(["demo", "--session", str(real_session), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["levels"]) == ["L1", "L2", "L3", "L4"]
    assert report["spine"]["missing_levels"] == "L5" and report["session_dir"] == str(real_session)
    for level, entry in report["levels"].items():
        for fusion in ("multimodal", "us_only"):
            figures = entry[fusion]
            for key in ("assd_mm", "hd95_mm", "body_assd_mm", "body_hd95_mm"):
                assert math.isfinite(figures[key]) and 0 < figures[key] < 30, (level, fusion, key, figures)
    assert report["latency_ms"]["p50"] is not None
    assert (out / "demo.png").stat().st_size > 10_000
    assert any((out / "recording").iterdir())
    assert "body ASSD (mm) per level" in capsys.readouterr().out


def test_demo_refuses_session_and_spine_together(tmp_path):
    assert main(["demo", "--session", str(tmp_path), "--spine", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
