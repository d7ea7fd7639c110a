"""`usx-stream demo --session`: the node on an existing session folder simulated from a real spine; the demo's
uncertainty picture."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from usx_stream.cli import main
from usx_stream.demo.run import _uncertainty_picture
from usx_stream.frames import Surface
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
    assert (out / "demo_uncertainty.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (out / "demo_uncertainty.png").stat().st_size > 10_000
    for level, entry in report["levels"].items():   # the packaged weights come with their error heads
        assert 0 < entry["multimodal"]["uncertainty_mean_mm"] < 30, (level, entry)
    # ... and the per-vertex values reached the OpenIGTLink client, decoded from its POLYDATA point scalars
    received = report["uncertainty_received_by_client_mm"]
    assert sorted(received) == [f"{lv}_Completed" for lv in ("L1", "L2", "L3", "L4")], received
    assert all(0 < v < 30 for v in received.values()), received
    assert any((out / "recording").iterdir())
    printed = capsys.readouterr().out
    assert "body ASSD (mm) per level" in printed and "demo.png, demo_uncertainty.png" in printed


@pytest.mark.slow
def test_a_level_the_node_never_completed_comes_with_what_it_was_waiting_for(vertebrae_data, tmp_path, capsys):
    """One vertebra alone: the node cannot tell its cranial axis from one level centre and publishes
    nothing; the demo says why instead of printing an empty score."""
    import shutil

    spine_dir = tmp_path / "one_level"
    spine_dir.mkdir()
    shutil.copy(vertebrae_data / "verse_spines" / "Verse581" / "L3.ply", spine_dir / "L3.ply")
    write_session(simulate_session(2, n_frames=48, spine=real_spine(spine_dir)), tmp_path / "session")
    out = tmp_path / "demo"
    assert main(["demo", "--session", str(tmp_path / "session"), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["levels"] == {"L3": {}}
    assert "needs bone.cranial_axis" in report["node_status"], report["node_status"]
    printed = capsys.readouterr().out
    assert f"the node's last status: {report['node_status']}" in printed


@pytest.mark.parametrize("text, named", [
    ("{", "ground_truth.json is not valid JSON"),
    ('{"files": {}}', "ground_truth.json has no 'levels' object"),
    ('{"levels": {"L1": {"mesh": "L1.stl"}}}', "levels.L1 lacks body_mesh, centroid_mm, vertebra_to_reference"),
])
def test_a_damaged_ground_truth_is_named_not_a_traceback(tmp_path, capsys, text, named):
    """A session folder someone edited by hand: the demo names the file and what is wrong with it."""
    folder = tmp_path / "session"
    folder.mkdir()
    (folder / "ground_truth.json").write_text(text)
    assert main(["demo", "--session", str(folder), "--out", str(tmp_path / "o")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"usx-stream demo: error: --session {folder}: ") and named in line, line
    assert not (tmp_path / "o").exists()


def test_demo_refuses_session_and_spine_together(tmp_path):
    assert main(["demo", "--session", str(tmp_path), "--spine", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _sphere(centre_z: float, with_uncertainty: bool, n: int = 24) -> Surface:
    """A 10 mm sphere; uncertainty_mm growing from 0 at one pole to 3 mm at the other."""
    th, ph = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n, endpoint=False), indexing="ij")
    v = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3) * 10.0
    idx = np.arange(n * 2 * n).reshape(n, 2 * n)
    tris = [t for i in range(n - 1) for j in range(2 * n)
            for t in ((idx[i, j], idx[i + 1, j], idx[i, (j + 1) % (2 * n)]),
                      (idx[i, (j + 1) % (2 * n)], idx[i + 1, j], idx[i + 1, (j + 1) % (2 * n)]))]
    surface = Surface(v + [0.0, 0.0, centre_z], np.array(tris))
    if with_uncertainty:
        surface.point_data["uncertainty_mm"] = ((v[:, 2] + 10.0) * 0.15).astype(np.float32)
        surface.metadata.update({"uncertainty_method": "error_head", "uncertainty_mean_mm": 1.5})
    return surface


def test_uncertainty_picture_colours_surfaces_by_uncertainty_with_a_colour_bar(tmp_path):
    import matplotlib.image

    path = tmp_path / "demo_uncertainty.png"
    surfaces = {lv: _sphere(30.0 * i, with_uncertainty=True) for i, lv in enumerate(("L1", "L2", "L3"))}
    assert _uncertainty_picture(path, surfaces, "test session") is True
    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 10_000
    rgb = matplotlib.image.imread(path)[..., :3]
    # viridis' top colour (yellow, in no level colour) appears only where the uncertainty colour map is drawn
    yellow = np.all(np.abs(rgb - [0.99, 0.91, 0.14]) < 0.08, axis=-1)
    assert yellow.sum() > 200, yellow.sum()


def test_no_uncertainty_picture_without_uncertainty_mm(tmp_path, caplog):
    path = tmp_path / "demo_uncertainty.png"
    surfaces = {lv: _sphere(30.0 * i, with_uncertainty=False) for i, lv in enumerate(("L1", "L2"))}
    with caplog.at_level(logging.INFO, logger="usx_stream.demo.run"):
        assert _uncertainty_picture(path, surfaces, "test session") is False
    assert not path.exists()
    assert "carry no uncertainty_mm" in caplog.text
