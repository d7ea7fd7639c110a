"""Spines drawn from the shape model wherever a spine is made: the --spine ssm:FILE[:SEED] spec, the
ray-cast pairs of ``dataset --ssm FILE N`` and node sessions that draw a new spine each."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial import cKDTree

from usx_stream.errors import InputError
from usx_stream.frames import LEVELS
from usx_stream.shape.sample import _truncated_normal
from usx_stream.shape.ssm import build_model, save_model
from usx_stream.sim.spine_spec import SpineSpec, parse_spine, placement, ssm_spine
from usx_stream.transforms import apply

SMALL = dict(n_triangles=800, n_points=600, seed=3)
_CACHE: dict = {}


@pytest.fixture
def model_path(vertebrae_data, tmp_path_factory):
    if "path" not in _CACHE:
        built = build_model(vertebrae_data, subjects={"s0004", "vhm"}, held_out=(), **SMALL)
        _CACHE["path"] = save_model(built, tmp_path_factory.mktemp("ssm") / "ssm.npz")
    return _CACHE["path"]


def test_spine_spec_parses_paths_models_and_seeds():
    assert parse_spine("spines/Verse581") == SpineSpec("path", parse_spine("spines/Verse581").path)
    assert parse_spine("ssm:/m/ssm.npz").kind == "ssm" and parse_spine("ssm:/m/ssm.npz").seed is None
    spec = parse_spine("ssm:/m/ssm.npz:7")
    assert (spec.kind, str(spec.path), spec.seed) == ("ssm", "/m/ssm.npz", 7)
    assert str(spec) == "ssm:/m/ssm.npz:7"
    for bad in ("ssm:", "ssm::3", "ssm:/m/ssm.npz:-2"):
        with pytest.raises(InputError, match="--spine"):
            parse_spine(bad)


def test_a_seed_that_is_not_a_number_is_named_not_taken_for_part_of_the_file(tmp_path):
    model = tmp_path / "ssm.npz"
    model.write_bytes(b"")
    with pytest.raises(InputError, match=r"the seed after '.*ssm\.npz' must be a non-negative integer, got 'abc'"):
        parse_spine(f"ssm:{model}:abc")
    assert parse_spine(f"ssm:{model}").path == model  # no seed: the file alone


def test_truncated_draw_stays_inside_its_radius_even_when_small():
    rng = np.random.default_rng(0)
    draws = np.stack([_truncated_normal(rng, 6, 0.5) for _ in range(2000)])
    norms = np.linalg.norm(draws, axis=1)
    assert norms.max() <= 0.5 + 1e-9
    # conditioned on a small ball, the radius density grows like r^5: most draws lie near the edge
    assert np.median(norms) > 0.4
    assert np.allclose(draws.mean(0), 0.0, atol=0.03)  # no preferred direction


def test_ssm_spine_is_reproducible_placed_and_its_frames_are_exact(model_path):
    a, draw = ssm_spine(model_path, 4)
    b, _ = ssm_spine(model_path, 4)
    c, _ = ssm_spine(model_path, 5)
    assert list(a.vertebrae) == list(LEVELS)
    assert a.metadata["source"] == f"ssm:{model_path}:4" and a.metadata["kind"] == "ssm"
    for lv in LEVELS:
        np.testing.assert_array_equal(a.vertebrae[lv].mesh.vertices_mm, b.vertebrae[lv].mesh.vertices_mm)
    assert not np.allclose(a.vertebrae["L3"].mesh.vertices_mm, c.vertebrae["L3"].mesh.vertices_mm)
    to_ref = placement(a)
    for lv in LEVELS:
        moved = apply(to_ref @ draw.to_spine[lv], draw.local[lv])
        # the placement is stored to the micrometre (metadata string)
        np.testing.assert_allclose(moved, a.vertebrae[lv].mesh.vertices_mm, atol=1e-3)
    # Reference origin at the L3 body centre: L3's vertices surround it, L1 is cranial and L5 caudal
    assert np.linalg.norm(a.vertebrae["L3"].frame[:3, 3]) < 1e-9
    assert a.vertebrae["L1"].centroid_mm[2] > 50 > -50 > a.vertebrae["L5"].centroid_mm[2]


def test_dataset_ssm_ray_cast_pairs_sit_on_their_ground_truth(model_path, tmp_path):
    from usx_stream.train.data import read_pairs

    out = tmp_path / "ssm.h5"
    r = subprocess.run([sys.executable, "-m", "usx_stream.cli", "dataset", "--out", str(out), "--ssm",
                        str(model_path), "1", "--seed", "2", "--workers", "1", "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    pairs = read_pairs(out)
    assert len(pairs.labels) >= 4, r.stdout
    assert pairs.attrs["source"] == "ssm:ssm.npz"
    for partial, complete, name in zip(pairs.partial, pairs.complete, pairs.names):
        d = cKDTree(complete).query(partial)[0] * pairs.mm_per_unit
        assert np.median(d) < 1.5, name  # echoes on the true surface (2048 truth points: ~1 mm apart)


@pytest.mark.parametrize("argv, message", [
    (["--ssm", "MODEL"], "expected FILE N"),
    (["--ssm", "MODEL", "2", "--procedural", "3"], "give it alone"),
    (["--procedural", "2", "--or-variation"], "--node-sessions only"),
    (["--node-sessions", "1", "--ssm", "MODEL", "--spine", "x"], "no --spine"),
])
def test_dataset_ssm_misuse_is_one_line(model_path, tmp_path, argv, message):
    argv = [str(model_path) if a == "MODEL" else a for a in argv]
    r = subprocess.run([sys.executable, "-m", "usx_stream.cli", "dataset", "--out", str(tmp_path / "x.h5"), *argv],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_node_sessions_draw_a_new_spine_each_and_vary_the_room(model_path):
    from usx_stream.datasets.node_sessions import node_pairs
    from usx_stream.node.assemble import default_launch_dir
    from usx_stream.node.launch import load_launch
    from usx_stream.sim.or_variation import ORVariation

    cfg = load_launch(default_launch_dir() / "demo.toml").with_overrides({"source.n_frames": 150})
    spec = f"ssm:{model_path}"
    a, _ = node_pairs(0, seed=3, launch=cfg, spine=spec, variation=ORVariation())
    b, _ = node_pairs(1, seed=3, launch=cfg, spine=spec, variation=ORVariation())
    assert len(a) >= 3 and len(b) >= 3
    by_level = {s.level: s for s in b}
    shared = [s for s in a if s.level in by_level]
    assert shared
    for s in shared:  # two sessions, two anatomies: the true shapes differ
        assert not np.allclose(s.complete, by_level[s.level].complete, atol=1e-3)
        d = cKDTree(s.complete).query(s.partial)[0] * 50.0
        assert np.median(d) < 2.0, s.name  # jittered tracking and a varied B-mode still land on bone
