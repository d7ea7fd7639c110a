"""Sessions simulated from the real spines of ../shared/data/vertebrae: placement in Reference, the levels
present, the body rule on every spine, the ground truth written in Reference, the simulate command."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from usx_stream.cli import main
from usx_stream.errors import InputError
from usx_stream.frames import Surface
from usx_stream.io.meshes import read_mesh, write_mesh
from usx_stream.sim.anatomy import make_spine, mesh_volume_centroid
from usx_stream.sim.real_spine import read_level_meshes, real_spine
from usx_stream.sim.session import simulate_session, write_session

SOURCES = {
    "Verse561": ("verse_spines/Verse561", ["L1", "L2", "L3", "L4"]),
    "Verse581": ("verse_spines/Verse581", ["L1", "L2", "L3", "L4", "L5"]),
    "Verse631": ("verse_spines/Verse631", ["L1", "L2", "L3", "L4", "L5"]),
    "s0004": ("totalsegmentator/labelmaps/s0004_labels.nii.gz", ["L1", "L2", "L3", "L4", "L5"]),
}
_CACHE: dict = {}


@pytest.fixture
def spines(vertebrae_data):
    """Every real spine, placed once per test run (a few seconds each)."""
    if not _CACHE:
        for name, (rel, _) in SOURCES.items():
            _CACHE[name] = real_spine(vertebrae_data / rel)
    return _CACHE


def test_levels_placement_and_axes(spines):
    for name, spine in spines.items():
        expected = SOURCES[name][1]
        assert list(spine.vertebrae) == expected, name
        assert spine.metadata["missing_levels"] == ("L5" if name == "Verse561" else ""), name
        assert spine.metadata["axes_warning"] == "", name
        # Reference origin at the L3 body centre; levels only translated (patient axes kept), L1 on top
        for lv, v in spine.vertebrae.items():
            assert np.allclose(v.frame[:3, :3], np.eye(3)), (name, lv)
        assert np.allclose(spine.vertebrae["L3"].frame[:3, 3], 0.0)
        z = [v.frame[2, 3] for v in spine.vertebrae.values()]
        assert all(np.diff(z) < -20) and all(np.diff(z) > -50), (name, z)
    s0004 = spines["s0004"].metadata
    assert (s0004["kind"], s0004["label_set"], s0004["labels_chosen_by"]) == ("labelmap", "totalsegmentator", "auto")


def test_body_rule_is_anatomically_plausible_on_every_real_spine(spines):
    for name, spine in spines.items():
        for lv, v in spine.vertebrae.items():
            p = v.params
            assert 25.0 <= p.body_depth <= 45.0, (name, lv, p)
            assert 35.0 <= p.body_width <= 65.0, (name, lv, p)
            assert 22.0 <= p.body_height_ant <= 45.0, (name, lv, p)
            body_vol, body_c = mesh_volume_centroid(v.body_mesh.vertices_mm, v.body_mesh.triangles)
            whole_vol, whole_c = mesh_volume_centroid(v.mesh.vertices_mm, v.mesh.triangles)
            assert 0.35 < body_vol / whole_vol < 0.75, (name, lv, body_vol, whole_vol)
            assert body_c[1] < whole_c[1] - 5.0, (name, lv)  # the body is anterior of the arch
            # the body lies inside the vertebra, and its mesh is the zero level set of its field
            assert np.all(v.sample(v.body_mesh.vertices_mm[::20]) < 1.0), (name, lv)
            assert np.abs(v.sample(v.body_mesh.vertices_mm[::20], body_only=True)).max() < 0.5, (name, lv)


def test_fields_match_the_real_meshes(spines):
    v = spines["Verse581"].vertebrae["L2"]
    on_surface = v.sample(v.mesh.vertices_mm[::10])
    assert np.abs(on_surface).mean() < 0.15 and np.abs(on_surface).max() < 0.8
    assert v.sample(v.frame[None, :3, 3], body_only=True)[0] < -8.0  # the level origin is the body centre
    assert v.sample(np.array([[0.0, 0.0, 200.0]]))[0] > 10.0


def test_session_from_a_real_spine_writes_its_truth_in_reference(spines, vertebrae_data, tmp_path):
    spine = spines["Verse561"]
    session = simulate_session(3, n_frames=12, spine=spine)
    assert set(np.unique(session.xray.labelmap)) == {0, 1, 2, 3, 4}  # no L5 on the X-ray
    assert session.bone_masks.sum() > 0
    files = write_session(session, tmp_path)
    truth = json.loads(files["ground_truth"].read_text())
    assert list(truth["levels"]) == ["L1", "L2", "L3", "L4"] and truth["spine"]["missing_levels"] == "L5"
    assert not (tmp_path / "meshes" / "L5.ply").exists()
    shift = np.array([float(x) for x in truth["spine"]["lps_to_reference_mm"].split()])
    source = read_mesh(vertebrae_data / "verse_spines" / "Verse561" / "L4.ply")
    written = read_mesh(tmp_path / "meshes" / "L4.ply")
    assert np.allclose(written.vertices_mm, source.vertices_mm + shift, atol=1e-3)
    body = read_mesh(tmp_path / "meshes" / "L3_body.ply")
    centre = 0.5 * (body.vertices_mm.min(axis=0) + body.vertices_mm.max(axis=0))
    assert np.linalg.norm(centre) < 1.5  # Reference origin = the L3 body centre


def test_a_ready_procedural_spine_gives_the_procedural_session():
    anatomy = np.random.default_rng(np.random.SeedSequence(5).spawn(4)[0])
    given = simulate_session(5, n_frames=4, with_xray=False, spine=make_spine(anatomy))
    drawn = simulate_session(5, n_frames=4, with_xray=False)
    for a, b in zip(given.frames, drawn.frames):
        assert np.array_equal(a.pixels, b.pixels)
        assert np.array_equal(a.transforms["ProbeToTracker"], b.transforms["ProbeToTracker"])


def test_ras_meshes_taken_as_lps_are_reported_not_rotated(vertebrae_data, tmp_path, caplog):
    for lv in ("L1", "L2"):
        shutil.copy(vertebrae_data / "verse_spines" / "Verse581" / f"{lv}.ply", tmp_path / f"{lv}.ply")
    as_ras = real_spine(tmp_path, frame="RAS")  # LPS meshes read as RAS: x and y flipped
    assert "posterior" in as_ras.metadata["axes_warning"]
    assert "not look like the patient axes" in caplog.text
    assert as_ras.metadata["reference_origin"] == "L2 body centre"
    assert np.allclose(as_ras.vertebrae["L2"].frame, np.eye(4))
    meshes, _ = read_level_meshes(tmp_path, frame="RAS")
    raw = read_mesh(tmp_path / "L1.ply")
    assert np.allclose(meshes["L1"].vertices_mm, raw.vertices_mm * [-1, -1, 1])


def test_simulate_command_on_a_totalsegmentator_map(vertebrae_data, tmp_path, capsys):
    path = vertebrae_data / "totalsegmentator" / "labelmaps" / "s0004_labels.nii.gz"
    assert main(["simulate", "--out", str(tmp_path), "--spine", str(path), "--labels", "auto",
                 "--frames", "6", "--passes", "1"]) == 0
    out = capsys.readouterr().out
    assert "totalsegmentator labels (auto)" in out and "levels L1 L2 L3 L4 L5" in out
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["spine"]["label_set"] == "totalsegmentator"
    assert sorted(p.name for p in (tmp_path / "meshes").glob("L?.ply")) == [f"L{k}.ply" for k in range(1, 6)]


def test_meshes_in_other_units_are_refused_with_the_scale_that_reads_them(vertebrae_data, tmp_path):
    # the Visible Human meshes are in metres: read as mm there is no body to find
    vh = vertebrae_data / "visible_human_male_L1-L5"
    with pytest.raises(InputError, match=r"L1_\w+\.obj: the mesh spans 0\.0\d+ mm with --scale 1, .*"
                                         r"look like metres \(try --scale 1000\)"):
        real_spine(vh)
    for lv in ("L1", "L2"):  # VerSe meshes (mm) written in centimetres
        m = read_mesh(vertebrae_data / "verse_spines" / "Verse581" / f"{lv}.ply")
        write_mesh(tmp_path / f"{lv}.ply", Surface(m.vertices_mm / 10.0, m.triangles, frame="LPS", name=lv))
    with pytest.raises(InputError, match=r"look like centimetres \(try --scale 10\)"):
        real_spine(tmp_path)
    assert sorted(real_spine(tmp_path, scale=10.0).vertebrae) == ["L1", "L2"]


def test_meshes_in_unknown_axes_are_turned_to_the_spines_own_axes(vertebrae_data, tmp_path, caplog):
    """--frame auto: Verse581 (LPS) turned by 70 degrees about an oblique axis reads back with the axes
    that auto finds on the original, and without the axes warning that taking it as LPS gives."""
    from scipy.spatial.transform import Rotation

    turn = Rotation.from_rotvec(np.radians(70.0) * np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8]))
    (tmp_path / "orig").mkdir()
    (tmp_path / "turned").mkdir()
    for lv in ("L1", "L2", "L3"):
        source = vertebrae_data / "verse_spines" / "Verse581" / f"{lv}.ply"
        shutil.copy(source, tmp_path / "orig" / f"{lv}.ply")
        m = read_mesh(source)
        write_mesh(tmp_path / "turned" / f"{lv}.ply", Surface(turn.apply(m.vertices_mm), m.triangles, name=lv))
    assert "posterior" in real_spine(tmp_path / "turned").metadata["axes_warning"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="usx_stream.sim.real_spine"):
        got = real_spine(tmp_path / "turned", frame="auto")
    assert got.metadata["axes_warning"] == "" and "not look like the patient axes" not in caplog.text
    assert "turned to the spine's own axes" in caplog.text
    found = np.array(got.metadata["auto_rotation"].split(), float).reshape(3, 3)
    on_original = np.array(real_spine(tmp_path / "orig", frame="auto").metadata["auto_rotation"].split(),
                           float).reshape(3, 3)
    # the same anatomical axes, whatever the turn (0.1-0.6 degrees apart on the three VerSe spines)
    residual = Rotation.from_matrix(found @ turn.as_matrix() @ on_original.T).magnitude()
    assert np.degrees(residual) < 1.0, np.degrees(residual)
    # given in LPS, auto tilts it by the spine's own lean only (3-9 degrees on the VerSe spines)
    assert np.degrees(Rotation.from_matrix(on_original).magnitude()) < 15.0
    with pytest.raises(InputError, match="needs two levels or more"):
        real_spine(_one_level(tmp_path), frame="auto")


def _one_level(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(tmp_path / "orig" / "L2.ply", folder / "L2.ply")
    return folder
