"""Procedural lumbar spine: closed meshes, published dimensions, seeds, lordosis, frames."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.frames import LEVELS
from usx_stream.sim.anatomy import make_spine, make_vertebra, mesh_volume_centroid
from usx_stream.sim.morphometry import MORPHOMETRY, VertebraParams
from usx_stream.sim.isosurface import edge_use_counts
from usx_stream.transforms import apply

# Ranges reported for adult lumbar vertebrae (mm; roughly mean ± 2.5 SD over L1–L5 in Panjabi et al. 1992,
# Zindrick et al. 1987 and Zhou et al. 2000). A generated vertebra must fall inside them.
PUBLISHED_RANGES = {
    "body_width": (34.0, 58.0),
    "body_depth": (27.0, 44.0),
    "body_height": (20.0, 33.0),
    "transverse_span": (58.0, 108.0),
}


def _extent(vertices: np.ndarray) -> np.ndarray:
    return vertices.max(axis=0) - vertices.min(axis=0)


def _assert_closed_manifold(surface) -> None:
    counts = edge_use_counts(surface.triangles)
    assert len(counts) > 0
    assert np.all(counts == 2), f"edges not shared by exactly two triangles: {np.unique(counts)}"
    t = surface.triangles
    directed = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed), "inconsistent triangle orientation"
    volume, _ = mesh_volume_centroid(surface.vertices_mm, surface.triangles)
    assert volume > 0, "triangles must be counter-clockwise seen from outside"


@pytest.mark.parametrize("level", LEVELS)
def test_vertebra_meshes_are_watertight(level):
    v = make_vertebra(level, 11, spacing_mm=1.0)
    _assert_closed_manifold(v.mesh)
    _assert_closed_manifold(v.body_mesh)
    # The body lies inside the whole vertebra: its volume is smaller and its centroid anterior.
    body_volume, body_centroid = mesh_volume_centroid(v.body_mesh.vertices_mm, v.body_mesh.triangles)
    whole_volume, _ = mesh_volume_centroid(v.mesh.vertices_mm, v.mesh.triangles)
    assert body_volume < whole_volume
    assert body_centroid[1] < v.centroid_mm[1]


@pytest.mark.parametrize("level", LEVELS)
def test_mean_vertebra_matches_its_morphometry(level):
    k = LEVELS.index(level)
    v = make_vertebra(level, 0, params=VertebraParams.mean(level), spacing_mm=1.0)
    body = _extent(v.body_mesh.vertices_mm)
    assert body[0] == pytest.approx(MORPHOMETRY["body_width"][k], rel=0.05)
    assert body[1] == pytest.approx(MORPHOMETRY["body_depth"][k], rel=0.05)
    height = 0.5 * (MORPHOMETRY["body_height_ant"][k] + MORPHOMETRY["body_height_post"][k])
    assert body[2] == pytest.approx(height, rel=0.08)
    whole = _extent(v.mesh.vertices_mm)
    assert whole[0] == pytest.approx(MORPHOMETRY["transverse_span"][k], rel=0.06)


def test_random_vertebrae_stay_within_published_ranges():
    rng = np.random.default_rng(3)
    for level in LEVELS:
        for _ in range(2):
            v = make_vertebra(level, rng, spacing_mm=1.5)
            body = _extent(v.body_mesh.vertices_mm)
            measured = {"body_width": body[0], "body_depth": body[1], "body_height": body[2],
                        "transverse_span": _extent(v.mesh.vertices_mm)[0]}
            for name, (lo, hi) in PUBLISHED_RANGES.items():
                assert lo <= measured[name] <= hi, f"{level} {name} = {measured[name]:.1f} mm"


def test_vertebra_is_deterministic_for_a_seed_and_varies_between_seeds():
    a = make_vertebra("L2", 42, spacing_mm=1.5)
    b = make_vertebra("L2", 42, spacing_mm=1.5)
    c = make_vertebra("L2", 43, spacing_mm=1.5)
    np.testing.assert_array_equal(a.mesh.vertices_mm, b.mesh.vertices_mm)
    np.testing.assert_array_equal(a.mesh.triangles, b.mesh.triangles)
    assert a.params != c.params
    assert not np.array_equal(a.field.values.shape, c.field.values.shape) or \
        not np.allclose(a.field.values, c.field.values)


@pytest.fixture(scope="module")
def spine():
    return make_spine(7, spacing_mm=1.5)


def test_spine_is_deterministic_and_seed_dependent(spine):
    again = make_spine(7, spacing_mm=1.5)
    other = make_spine(8, spacing_mm=1.5)
    for level in LEVELS:
        np.testing.assert_array_equal(spine.vertebrae[level].mesh.vertices_mm,
                                      again.vertebrae[level].mesh.vertices_mm)
    assert spine.lordosis_deg == again.lordosis_deg
    assert spine.lordosis_deg != other.lordosis_deg
    assert not np.allclose(spine.vertebrae["L3"].centroid_mm, other.vertebrae["L3"].centroid_mm)


def test_spine_frames_order_levels_and_carry_the_lordosis(spine):
    z = [spine.vertebrae[lv].frame[2, 3] for lv in LEVELS]
    assert all(a > b for a, b in zip(z, z[1:])), "L1 must be cranial of L5"
    np.testing.assert_allclose(spine.vertebrae["L3"].frame[:3, 3], 0.0, atol=1e-9)
    cranial_l1 = spine.vertebrae["L1"].frame[:3, 2]
    cranial_l5 = spine.vertebrae["L5"].frame[:3, 2]
    angle = np.degrees(np.arccos(np.clip(cranial_l1 @ cranial_l5, -1, 1)))
    assert angle == pytest.approx(spine.lordosis_deg, abs=1e-6)
    # Lordosis is convex anteriorly: L1 leans posterior (its cranial axis has +y), L5 anterior.
    assert cranial_l1[1] > 0 > cranial_l5[1]
    for level in LEVELS:
        v = spine.vertebrae[level]
        # The mesh is the vertebra-frame field's zero level mapped by VertebraToPatient.
        vals = v.field.sample(apply(np.linalg.inv(v.frame), v.mesh.vertices_mm[::50]))
        # Marching tetrahedra interpolate linearly along cube diagonals, trilinear sampling does not.
        assert np.abs(vals).max() < 0.15 * v.field.spacing_mm
        _assert_closed_manifold(v.mesh)


def test_spine_sample_is_negative_inside_bodies_and_names_the_level(spine):
    centres = np.array([spine.vertebrae[lv].frame[:3, 3] for lv in LEVELS])
    values, which = spine.sample(centres, body_only=True)
    assert np.all(values < 0)
    np.testing.assert_array_equal(which, np.arange(5))
    far, none = spine.sample(np.array([[500.0, 0.0, 0.0]]))
    assert far[0] > 100 and none[0] == -1


def test_invalid_arguments_name_the_field():
    with pytest.raises(ValueError, match="level"):
        make_vertebra("T12", 0)
    with pytest.raises(ValueError, match="spacing_mm"):
        make_vertebra("L1", 0, spacing_mm=0.01)
    with pytest.raises(ValueError, match="lordosis_deg"):
        make_spine(0, lordosis_deg=120.0)


def test_neighbouring_vertebrae_do_not_interpenetrate(spine):
    for upper, lower in zip(LEVELS, LEVELS[1:]):
        a, b = spine.vertebrae[upper], spine.vertebrae[lower]
        assert a.sample(b.mesh.vertices_mm).min() > -0.3, f"{lower} reaches into {upper}"
        assert b.sample(a.mesh.vertices_mm).min() > -0.3, f"{upper} reaches into {lower}"
    discs = [float(d) for d in spine.metadata["disc_heights_mm"].split()]
    assert len(discs) == 4 and all(7.0 < d < 17.0 for d in discs)
