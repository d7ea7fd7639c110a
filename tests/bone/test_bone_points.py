"""Bone points from a compounded bone-probability channel."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.bone.points import extract_bone_points, mean_beam_direction, voxel_downsample
from usx_stream.frames import Volume


def band_volume(*, spacing=0.5, shape=(60, 80, 100), surface_y=lambda x, z: 15 + 0.1 * x, sigma_mm=1.0):
    """Volume whose bone channel is a Gaussian band around the surface y = f(x, z) (beam along y)."""
    z, y, x = np.meshgrid(*(np.arange(n) * spacing for n in shape), indexing="ij")
    prob = np.exp(-0.5 * ((y - surface_y(x, z)) / sigma_mm) ** 2).astype(np.float32)
    return Volume(data=np.zeros(shape, np.float32), origin_mm=[0, 0, 0], spacing_mm=[spacing] * 3,
                  weights=np.ones(shape, np.float32), channels={"bone": prob})


@pytest.mark.parametrize("beam", [[0, 1, 0], [0, -3, 0], None])
def test_points_lie_on_the_band_crest(beam):
    vol = band_volume()
    pts = extract_bone_points(vol, threshold=0.5, beam_direction=beam, voxel_mm=1.0)
    assert len(pts) > 500
    err = pts[:, 1] - (15 + 0.1 * pts[:, 0])
    assert np.abs(err).max() < 0.5                       # within one voxel of the true surface
    # Voxel-downsampled: no two points share a 1 mm cell.
    cells = np.floor(pts / 1.0).astype(int)
    assert len(np.unique(cells, axis=0)) == len(pts)


def test_crest_is_one_voxel_thick_before_downsampling():
    vol = band_volume(surface_y=lambda x, z: np.full_like(x, 12.25))
    pts = extract_bone_points(vol, threshold=0.3, beam_direction=[0, 1, 0], voxel_mm=0.5)
    assert np.unique(np.round(pts[:, 1], 6)).size == 1


def test_weights_and_threshold_mask_voxels():
    vol = band_volume()
    vol.weights[:, :, :50] = 0                          # x < 25 mm never imaged
    pts = extract_bone_points(vol, threshold=0.5, beam_direction=[0, 1, 0])
    assert pts[:, 0].min() >= 25 - 1e-9
    assert len(extract_bone_points(vol, threshold=1.0, beam_direction=[0, 1, 0])) <= len(pts)


def test_points_are_in_the_volume_frame():
    vol = band_volume()
    shifted = Volume(vol.data, origin_mm=[100, -50, 20], spacing_mm=vol.spacing_mm, weights=vol.weights,
                     channels=vol.channels, frame="Reference")
    a = extract_bone_points(vol, beam_direction=[0, 1, 0])
    b = extract_bone_points(shifted, beam_direction=[0, 1, 0])
    # Cells move with the origin, so compare the surfaces, not the point lists.
    assert np.abs(b[:, 1] - (-50 + 15 + 0.1 * (b[:, 0] - 100))).max() < 0.5
    assert len(a) == pytest.approx(len(b), rel=0.1)


def test_empty_inputs_give_empty_outputs():
    vol = band_volume()
    vol.channels["bone"][:] = 0
    assert extract_bone_points(vol).shape == (0, 3)
    assert voxel_downsample(np.zeros((0, 3)), voxel_mm=1.0).shape == (0, 3)


def test_validation_names_the_field():
    vol = band_volume()
    with pytest.raises(ValueError, match="bone.probability_threshold: must be in \\(0, 1\\], got 0"):
        extract_bone_points(vol, threshold=0)
    with pytest.raises(ValueError, match="bone.point_voxel_mm: must be > 0, got -1"):
        extract_bone_points(vol, voxel_mm=-1)
    with pytest.raises(ValueError, match="no channel 'edges'"):
        extract_bone_points(vol, channel="edges")
    with pytest.raises(ValueError, match="beam_direction must be a non-zero vector"):
        extract_bone_points(vol, beam_direction=[0, 0, 0])


def test_voxel_downsample_weighted_mean():
    pts = np.array([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3], [5.2, 0, 0]])
    out = voxel_downsample(pts, voxel_mm=1.0, weights=[1, 3, 1])
    assert out.shape == (2, 3)
    assert np.allclose(out[0], [0.25, 0.25, 0.25]) and np.allclose(out[1], [5.2, 0, 0])
    with pytest.raises(ValueError, match="expected 3 values, got 2"):
        voxel_downsample(pts, voxel_mm=1.0, weights=[1, 2])


def test_mean_beam_direction():
    a = np.eye(4)
    a[:3, 1] = [0, 0.3, 0]                          # pixel size in the column: direction only counts
    b = np.eye(4)
    b[:3, 1] = [0, 0.2, 0.2]
    d = mean_beam_direction([a, b])
    assert np.allclose(d, np.array([0, 1 + 0.5 ** 0.5, 0.5 ** 0.5]) / np.linalg.norm([0, 1 + 0.5 ** 0.5, 0.5 ** 0.5]))
    with pytest.raises(ValueError, match="no frames"):
        mean_beam_direction(np.zeros((0, 4, 4)))


def test_voxel_downsample_matches_a_per_cell_reference_in_row_order():
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(3000, 3)) * [30, 5, 60] - [10, 200, -50]   # negative and positive cells
    w = rng.random(3000)
    out = voxel_downsample(pts, voxel_mm=2.0, weights=w)
    cells = np.floor(pts / 2.0).astype(np.int64)
    uniq = sorted({tuple(c) for c in cells})                          # lexicographic (x, y, z)
    ref = []
    for c in uniq:
        sel = np.all(cells == c, axis=1)
        ref.append((w[sel, None] * pts[sel]).sum(0) / w[sel].sum())
    np.testing.assert_allclose(out, np.array(ref), rtol=1e-12, atol=1e-9)
