"""``usx-stream score`` on a session simulated from a real spine, with the truth as the user has it: the
VerSe meshes in their own CT frame. ``--register auto`` (from what ultrasound saw) must agree with
``--register none`` against the same truth already in Reference (development figures: simulated sweep)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from usx_stream.cli import main
from usx_stream.sim.real_spine import real_spine
from usx_stream.sim.session import simulate_session, write_session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    # module-scoped: one session for both tests (the vertebrae_data fixture is per test)
    data = Path(os.environ.get("USX_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    spine_dir = data / "vertebrae" / "verse_spines" / "Verse581"
    if not spine_dir.exists():
        if os.environ.get("USX_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"shared reference data not found: {spine_dir} (USX_REQUIRE_SHARED_DATA=1)")
        pytest.skip(f"shared reference data not found: {spine_dir}")
    root = tmp_path_factory.mktemp("real_score")
    session = simulate_session(3, n_frames=90, spine=real_spine(spine_dir))
    write_session(session, root / "session")
    assert main(["demo", "--session", str(root / "session"), "--out", str(root / "demo")]) == 0
    return root, spine_dir


def _score(root, truth, register, name):
    out = root / f"{name}.json"
    code = main(["score", "--recording", str(root / "demo" / "recording"), "--truth", str(truth),
                 "--register", register, "--calibration", str(root / "session" / "sim_probe_deviceset.xml"),
                 "--json", str(out)])
    return code, (json.loads(out.read_text()) if code == 0 else None)


def test_auto_registration_of_the_ct_frame_truth_agrees_with_the_truth_in_reference(real_run):
    root, spine_dir = real_run
    code, none = _score(root, root / "session" / "meshes", "none", "none")
    assert code == 0
    code, auto = _score(root, spine_dir, "auto", "auto")     # the VerSe meshes, in the patient's CT frame
    assert code == 0
    assert auto["registration"]["method"] == "auto" and auto["registration"]["rms_mm"] < 1.5
    assert set(auto["levels"]) == set(none["levels"]) == {"L1", "L2", "L3", "L4", "L5"}
    for level, figures in none["levels"].items():
        assert abs(auto["levels"][level]["body_assd_mm"] - figures["body_assd_mm"]) < 0.3, level


def test_a_different_patient_s_ct_is_refused(real_run, capsys):
    root, spine_dir = real_run
    other = spine_dir.parent / "Verse631"
    code, _ = _score(root, other, "auto", "wrong")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
