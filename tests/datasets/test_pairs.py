"""Paired data generation: file layout, determinism, geometry of the three clouds, user meshes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from usx_stream.frames import Surface
from usx_stream.datasets.pairs import PairConfig, generate
from usx_stream.datasets.mesh_alignment import canonical_user_vertebra, level_from_filename
from usx_stream.datasets.mesh_alignment import AlignmentError
from usx_stream.train.data import read_pairs

CFG = PairConfig(partial_points=64, labelmap_points=32, complete_points=256, mesh_spacing_mm=2.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs") / "tiny.h5"
    report = generate(out, procedural=2, seed=7, workers=1, cfg=CFG, progress=False, command="test")
    return out, report


def test_file_has_the_original_layout(tiny):
    import h5py

    path, report = tiny
    assert report.samples == 10 and report.skipped == []
    with h5py.File(path, "r") as f:
        assert f["incomplete_pcds"].shape == (10, 64, 3)
        assert f["labelmaps"].shape == (10, 32, 3)
        assert f["complete_pcds"].shape == (10, 256, 3)
        assert f["labels"][()].tolist() == [0, 1, 2, 3, 4] * 2
        assert f["number_per_class"][()].tolist() == [2, 2, 2, 2, 2]
        assert f.attrs["mm_per_unit"] == 50.0 and f.attrs["seed"] == 7 and f.attrs["command"] == "test"
    arrays = read_pairs(path)
    assert arrays.names[0] == "spine00000/L1" and arrays.centers_mm.shape == (10, 3)


def test_same_seed_same_file_with_more_workers(tiny, tmp_path):
    path, _ = tiny
    again = generate(tmp_path / "again.h5", procedural=2, seed=7, workers=2, cfg=CFG, progress=False)
    a, b = read_pairs(path), read_pairs(again.path)
    for field in ("partial", "labelmap", "complete", "labels"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    other = generate(tmp_path / "other.h5", procedural=1, seed=8, workers=1, cfg=CFG, progress=False)
    assert not np.allclose(read_pairs(other.path).complete[0], a.complete[0])


def test_clouds_sit_where_the_modalities_see_them(tiny):
    arrays = read_pairs(tiny[0])
    for i in range(len(arrays)):
        gt, partial, lm = arrays.complete[i], arrays.partial[i], arrays.labelmap[i]
        centroid_y = gt[:, 1].mean()
        # X-ray: a planar point set on the mid-sagittal plane (x constant), over the vertebral body.
        assert np.ptp(lm[:, 0]) < 1e-5
        assert np.mean(lm[:, 1] < centroid_y) > 0.8
        # Ultrasound: mostly the posterior side (a few echoes come through the interlaminar windows);
        # the unit frame keeps a vertebra within about +-1.5.
        assert np.mean(partial[:, 1] > centroid_y) > 0.6
        assert np.abs(gt).max() < 1.5
        # Origin: middle of the bounding box of what the network sees.
        seen = np.concatenate([partial, lm])
        np.testing.assert_allclose((seen.min(0) + seen.max(0)) / 2, 0.0, atol=0.05)


def test_level_from_filename():
    assert level_from_filename("L3_Schrumpfverpacken.obj") == "L3"
    assert level_from_filename("/x/mean_L2.ply") == "L2"
    assert level_from_filename("sub-verse010_segment_20.ply") == "L1"
    assert level_from_filename("case7_l5.stl") == "L5"
    with pytest.raises(ValueError, match="no level"):
        level_from_filename("vertebra.ply")
    with pytest.raises(ValueError, match="no level"):
        level_from_filename("L12.ply")


def test_real_mesh_aligns_whatever_its_pose(vertebrae_data, tmp_path):
    from usx_stream.io.meshes import read_mesh, write_mesh
    from usx_stream.transforms import apply, rotation

    src = vertebrae_data / "verse_L1" / "sub-verse016_segment_20.ply"
    auto, occluders = canonical_user_vertebra(src, spacing_mm=2.0)
    stated, _ = canonical_user_vertebra(src, frame="LPS", spacing_mm=2.0)
    assert np.abs(auto.mesh.vertices_mm - stated.mesh.vertices_mm).mean() < 0.5
    assert len(occluders) == 1  # L1's neighbour in the lumbar spine is L2
    v = auto.mesh.vertices_mm
    tip = v[v[:, 1] > np.percentile(v[:, 1], 98)]
    assert abs(tip[:, 0].mean()) < 8.0  # the spinous process: posterior and on the midline
    mesh = read_mesh(src)
    pose = rotation([0.3, -1.0, 0.5], 2.2) @ rotation([1, 0, 0], np.pi)
    pose[:3, 3] = [40.0, -300.0, 12.0]
    moved = tmp_path / "moved_segment_20.ply"
    write_mesh(moved, Surface(apply(pose, mesh.vertices_mm), mesh.triangles))
    again, _ = canonical_user_vertebra(moved, spacing_mm=2.0)
    assert np.abs(again.mesh.vertices_mm - v).mean() < 0.5
    with pytest.raises(AlignmentError, match="moved_in_metres_segment_20.ply.*--scale"):
        metres = tmp_path / "moved_in_metres_segment_20.ply"
        write_mesh(metres, Surface(mesh.vertices_mm / 1000.0, mesh.triangles))
        canonical_user_vertebra(metres, spacing_mm=2.0)


def test_mesh_folder_reports_unalignable_meshes_by_name(vertebrae_data, tmp_path):
    from usx_stream.io.meshes import write_mesh

    folder = tmp_path / "meshes"
    folder.mkdir()
    os.symlink(vertebrae_data / "verse_L1" / "sub-verse018_segment_20.ply", folder / "sub-verse018_segment_20.ply")
    box = np.array([[x, y, z] for x in (0, 9) for y in (0, 9) for z in (0, 90)], dtype=float)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    write_mesh(folder / "rod_L2.stl", Surface(box, np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])))
    report = generate(tmp_path / "user.h5", meshes=folder, seed=1, workers=1, cfg=CFG, repeats=2, progress=False)
    assert report.samples == 2 and report.number_per_level["L1"] == 2
    assert len(report.skipped) == 1 and "rod_L2.stl" in report.skipped[0]
    arrays = read_pairs(report.path)
    assert arrays.names == ["sub-verse018_segment_20.ply#0/L1", "sub-verse018_segment_20.ply#1/L1"]
    assert not np.allclose(arrays.partial[0], arrays.partial[1])  # different sweeps


def test_dataset_command_sets_the_sweep_and_names_a_bad_value():
    import argparse

    from usx_stream.commands import dataset as cmd
    from usx_stream.sim.visibility import SweepConfig

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    args = parser.parse_args(["--out", "x.h5", "--procedural", "1", "--tilt-deg", "8", "--max-incidence-deg", "60",
                              "--lateral-offsets-mm=-20,0,20", "--noise-mm", "0.5"])
    sweep = SweepConfig(**cmd._sweep_options(args))
    assert (sweep.tilt_deg, sweep.max_incidence_deg, sweep.lateral_offsets_mm, sweep.noise_mm) == (
        8.0, 60.0, (-20.0, 0.0, 20.0), 0.5)
    defaults = SweepConfig(**cmd._sweep_options(parser.parse_args(["--out", "x.h5", "--procedural", "1"])))
    assert defaults == SweepConfig()
    bad = parser.parse_args(["--out", "x.h5", "--procedural", "1", "--lateral-offsets-mm=-20,zero"])
    with pytest.raises(ValueError, match="--lateral-offsets-mm.*'-20,zero'"):
        cmd._sweep_options(bad)
