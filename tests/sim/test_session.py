"""Simulated phantom session: bone echoes on the ground-truth surface, determinism, files on disk."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from usx_stream.frames import LEVELS
from usx_stream.io.meshes import read_mesh
from usx_stream.io.plus_config import read_device_set
from usx_stream.io.sequence import read_sequence
from usx_stream.io.volumes import read_volume
from usx_stream.sim.session import bone_points_reference, simulate_session, write_session
from usx_stream.sim.sweep import REFERENCE_TO_TRACKER

# Must match tests/sim/conftest.py (the shared session fixture).
SEED = 4
N_FRAMES = 45


def _surface_samples(surface, n: int, rng: np.random.Generator) -> np.ndarray:
    """Area-uniform random points on a triangle mesh, ``(n, 3)``."""
    v = surface.vertices_mm[surface.triangles]
    area = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
    tri = rng.choice(len(v), n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    return ((1 - r1)[:, None] * v[tri, 0] + (r1 * (1 - r2))[:, None] * v[tri, 1]
            + (r1 * r2)[:, None] * v[tri, 2])


def test_bone_echo_pixels_lie_on_the_ground_truth_surface(sim_session):
    points = bone_points_reference(sim_session)
    assert len(points) > 2000
    rng = np.random.default_rng(0)
    per_level = [_surface_samples(sim_session.spine.vertebrae[lv].mesh, 150_000, rng) for lv in LEVELS]
    tree = cKDTree(np.concatenate(per_level))
    dist, idx = tree.query(points)
    assert np.median(dist) <= 1.0, f"median distance {np.median(dist):.3f} mm"
    assert np.percentile(dist, 95) <= 1.5
    # The sweep covers the whole lumbar spine: every level contributes echoes.
    level_of_point = idx // 150_000
    counts = np.bincount(level_of_point, minlength=5)
    assert np.all(counts > 100), f"bone-echo points per level: {counts.tolist()}"


def test_bone_echo_is_bright_with_a_dark_shadow_below(sim_session):
    echo, above, shadow, near = [], [], [], []
    for frame, mask in zip(sim_session.frames, sim_session.bone_masks):
        jj, ii = np.nonzero(mask)
        px = frame.pixels.astype(float)
        ok = (jj >= 10) & (jj + 15 < px.shape[0])
        echo.append(px[jj[ok], ii[ok]])
        above.append(px[jj[ok] - 10, ii[ok]])  # soft tissue 3 mm above the bone, same depth range
        shadow.append(px[jj[ok] + 15, ii[ok]])
        near.append(px[30:60].ravel())
    echo, above, shadow = (np.concatenate(a) for a in (echo, above, shadow))
    assert np.mean(echo) > np.mean(above) + 60
    assert np.mean(shadow) < 0.25 * np.mean(above)
    assert 60 < np.mean(np.concatenate(near)) < 160


def test_frames_are_tracked_like_plus_records_them(sim_session):
    stamps = [f.timestamp for f in sim_session.frames]
    assert len(stamps) == N_FRAMES and np.all(np.diff(stamps) > 0)
    for frame in sim_session.frames:
        assert frame.pixels.dtype == np.uint8 and frame.pixels.shape == (224, 256)
        np.testing.assert_array_equal(frame.transforms["ReferenceToTracker"], REFERENCE_TO_TRACKER)
        assert frame.is_valid("ImageToReference", sim_session.calibration)
    m = sim_session.image_to_reference(0)
    # ImageToReference carries the 0.3 mm pixel size of the calibration and is otherwise rigid.
    np.testing.assert_allclose(np.linalg.norm(m[:3, :3], axis=0), 0.3, rtol=1e-4)


def test_same_seed_gives_byte_identical_arrays(sim_session):
    again = simulate_session(SEED, n_frames=N_FRAMES, passes=3)
    for a, b in zip(sim_session.frames, again.frames):
        assert a.pixels.tobytes() == b.pixels.tobytes()
        for name in a.transforms:
            assert a.transforms[name].tobytes() == b.transforms[name].tobytes()
        assert a.timestamp == b.timestamp
    assert sim_session.bone_masks.tobytes() == again.bone_masks.tobytes()
    assert sim_session.xray.pixels.tobytes() == again.xray.pixels.tobytes()
    assert sim_session.xray.labelmap.tobytes() == again.xray.labelmap.tobytes()
    for lv in LEVELS:
        assert (sim_session.spine.vertebrae[lv].mesh.vertices_mm.tobytes()
                == again.spine.vertebrae[lv].mesh.vertices_mm.tobytes())


def test_other_seed_gives_another_session(sim_session):
    other = simulate_session(SEED + 1, n_frames=3, passes=1, with_xray=False)
    assert other.xray is None and len(other.frames) == 3
    assert not np.array_equal(other.frames[0].pixels, sim_session.frames[0].pixels)
    assert not np.allclose(other.spine.vertebrae["L1"].centroid_mm, sim_session.spine.vertebrae["L1"].centroid_mm)


def test_written_session_reads_back(sim_session, tmp_path):
    files = write_session(sim_session, tmp_path / "a")
    seq = read_sequence(files["sequence"])
    assert len(seq.frames) == N_FRAMES
    calibration = read_device_set(files["device_set"]).transform_repository()
    for i in (0, N_FRAMES // 2, N_FRAMES - 1):
        np.testing.assert_array_equal(seq.frames[i].pixels, sim_session.frames[i].pixels)
        np.testing.assert_allclose(seq.frames[i].transform("ImageToReference", calibration),
                                   sim_session.image_to_reference(i), rtol=0, atol=1e-9)
    labels = read_volume(files["xray_labelmap"])
    np.testing.assert_array_equal(labels.data[0], sim_session.xray.labelmap)
    np.testing.assert_allclose(labels.spacing_mm[:2], sim_session.xray.pixel_spacing_mm)
    xray = read_volume(files["xray"])
    np.testing.assert_array_equal(xray.data[0], sim_session.xray.pixels)
    l3 = read_mesh(files["mesh_L3"])
    np.testing.assert_allclose(l3.vertices_mm, sim_session.spine.vertebrae["L3"].mesh.vertices_mm, atol=1e-4)
    masks = np.load(files["bone_masks"])["masks"]
    np.testing.assert_array_equal(masks, sim_session.bone_masks)
    # Writing the same session again gives the same bytes.
    again = write_session(sim_session, tmp_path / "b")
    for role in ("sequence", "xray", "xray_labelmap", "mesh_L1", "ground_truth"):
        assert files[role].read_bytes() == again[role].read_bytes(), role


def test_invalid_seed_is_rejected():
    with pytest.raises(ValueError, match="seed"):
        simulate_session(-1)
