"""Per-vertebra split of bone points around known level centres."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.bone.split import choose_level_centres, implausible_centres, split_levels
from usx_stream.frames import LEVELS
from usx_stream.transforms import rotation


def lordotic_centres(spacing=36.0, bend_deg=8.0):
    """Five centres on an arc in the y-z plane (z cranial), L1 on top, bending by bend_deg per level."""
    centres, p, angle = [], np.zeros(3), 0.0
    for _ in LEVELS:
        centres.append(p.copy())
        angle += np.radians(bend_deg)
        p = p - spacing * np.array([0, np.sin(angle), np.cos(angle)])
    return np.array(centres)


def cloud_around(centres, rng, n=400, half_height=14.0, bend_deg=8.0):
    """Points of a vertebra-sized blob around each centre (posterior arch 20-50 mm behind the centre),
    each blob tilted with its level like the vertebrae of a lordotic spine."""
    pts, labels = [], []
    for k, c in enumerate(centres):
        lo, hi = np.array([-35, 20, -half_height]), np.array([35, 50, half_height])
        tilt = rotation([1, 0, 0], -np.radians(bend_deg) * (k + 0.5))[:3, :3]
        pts.append(c + rng.uniform(lo, hi, size=(n, 3)) @ tilt.T)
        labels += [LEVELS[k]] * n
    return np.concatenate(pts), np.array(labels)


def test_points_go_to_their_level_on_a_lordotic_spine():
    rng = np.random.default_rng(0)
    centres = lordotic_centres()
    pts, labels = cloud_around(centres, rng)
    out = split_levels(pts, centres, max_radius_mm=80)
    assert list(out) == list(LEVELS)
    for level in LEVELS:
        truth = pts[labels == level]
        got = out[level]
        # Every assigned point is one of this level's own points.
        mine = {tuple(p) for p in truth}
        correct = sum(tuple(p) in mine for p in got)
        assert correct / max(len(got), 1) >= 0.97
        assert correct / len(truth) >= 0.95


def test_far_points_and_points_beyond_the_end_levels_are_dropped():
    centres = lordotic_centres(bend_deg=0)                # straight, along -z from the origin
    pts = np.array([[0, 0, 60.0],                        # far above L1
                    [200, 0, 0],                          # 200 mm to the side of L1
                    [0, 0, -36 * 4 - 60],                 # far below L5
                    [0, 10, -36.0]])                      # on L2
    out = split_levels(pts, centres, max_radius_mm=60)
    assert sum(len(v) for v in out.values()) == 1
    assert np.allclose(out["L2"], [[0, 10, -36]])


def test_missing_levels_and_mapping_input():
    centres = lordotic_centres(bend_deg=0)
    arr = centres.copy()
    arr[0] = np.nan                                       # L1 unknown
    pts = np.array([[0, 0, 0.0], [0, 0, -36.0]])
    out = split_levels(pts, arr)
    assert list(out) == ["L2", "L3", "L4", "L5"]
    # The point at the (unknown) L1 centre lies a whole level beyond L2's slab and is dropped.
    assert np.allclose(out["L2"], [[0, 0, -36]]) and sum(len(v) for v in out.values()) == 1
    same = split_levels(pts, {lv: centres[n] for n, lv in enumerate(LEVELS) if lv != "L1"})
    assert all(np.array_equal(out[k], same[k]) for k in out)


def test_a_missing_level_between_known_ones_gives_its_bone_to_neither_neighbour():
    """L1, L3 and L5 known (an X-ray labelmap with L2 and L4 left out): each keeps one level's thickness,
    so L2's and L4's blobs are not split between their neighbours' partial clouds."""
    rng = np.random.default_rng(3)
    centres = lordotic_centres()
    pts, labels = cloud_around(centres, rng)
    known = {lv: centres[n] for n, lv in enumerate(LEVELS) if lv in ("L1", "L3", "L5")}
    out = split_levels(pts, known, max_radius_mm=80)
    assert list(out) == ["L1", "L3", "L5"]
    for lv in out:
        theirs = pts[labels == lv]
        got = {tuple(p) for p in out[lv]}
        assert sum(tuple(p) in got for p in theirs) >= 0.9 * len(theirs), lv        # its own bone, nearly all
        strays = sum(tuple(p) in got for p in pts[np.isin(labels, ["L2", "L4"])])
        assert strays <= 0.05 * len(theirs), (lv, strays)                          # and next to none of a gap's


def test_single_centre_needs_an_axis():
    c = {"L3": [0, 0, 0]}
    with pytest.raises(ValueError, match="needs the cranio-caudal axis"):
        split_levels(np.zeros((1, 3)), c)
    pts = np.array([[0, 30, 10.0], [0, 30, 25.0]])
    out = split_levels(pts, c, axis=[0, 0, 2], level_spacing_mm=36)
    assert np.allclose(out["L3"], [[0, 30, 10]])


def test_empty_points_and_no_centres():
    out = split_levels(np.zeros((0, 3)), lordotic_centres())
    assert all(v.shape == (0, 3) for v in out.values()) and len(out) == 5
    assert split_levels(np.ones((4, 3)), np.full((5, 3), np.nan)) == {}


def test_rotated_spine_gives_the_same_split():
    rng = np.random.default_rng(1)
    centres = lordotic_centres()
    pts, _ = cloud_around(centres, rng, n=100)
    r = rotation([1, 0, 0], 0.7)[:3, :3] @ rotation([0, 0, 1], -1.1)[:3, :3]
    a = split_levels(pts, centres, max_radius_mm=80)
    b = split_levels(pts @ r.T + [10, 20, 30], centres @ r.T + [10, 20, 30], max_radius_mm=80)
    for level in LEVELS:
        assert np.allclose(a[level] @ r.T + [10, 20, 30], b[level])


def test_choose_level_centres_prefers_the_xray():
    xr = lordotic_centres()
    lm = {"L3": [1, 2, 3]}
    assert choose_level_centres(xray_centres=xr, landmarks=lm)[1] == "xray"
    c, src = choose_level_centres(xray_centres=np.full((5, 3), np.nan), landmarks=lm)
    assert src == "landmarks" and np.allclose(c["L3"], [1, 2, 3])
    assert choose_level_centres() == ({}, "none")


def test_validation():
    with pytest.raises(ValueError, match="centres must be \\(5, 3\\)"):
        split_levels(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="unknown level 'T12'"):
        split_levels(np.zeros((1, 3)), {"T12": [0, 0, 0]})
    with pytest.raises(ValueError, match="max_radius_mm: must be > 0"):
        split_levels(np.zeros((1, 3)), lordotic_centres(), max_radius_mm=0)


def test_implausible_centres_name_what_is_wrong():
    centres = lordotic_centres()
    assert implausible_centres(centres) == ""
    assert implausible_centres({"L1": centres[0], "L3": centres[2], "L5": centres[4]}) == ""   # gaps are fine
    assert implausible_centres({"L3": centres[2]}) == ""                                        # one: no rule
    assert implausible_centres(centres / 1000.0).startswith(
        "L1 and L2 centres are 0.0 mm apart per level (15-60 expected: millimetres")           # sent in metres
    swapped = centres.copy()
    swapped[[1, 3]] = swapped[[3, 1]]                     # the points named L2 and L4 placed on each other
    assert implausible_centres(swapped).startswith("L1 and L2 centres are 107.3 mm apart per level")
    folded = {"L1": [0.0, 0.0, 0.0], "L2": [0.0, 0.0, -36.0], "L3": [0.0, 0.0, -10.0]}   # L3 back up: 26 mm
    assert implausible_centres(folded) == ("level centres out of order along the spine: L2, L3, L1 from one end "
                                           "to the other")
