"""Pasting and hole filling on several threads give the one-thread result, and the row bands the
threads paste at once never reach a common voxel."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.compound import holes, sticks
from usx_stream.compound.channels import ExactChannel, make_layout
from usx_stream.compound.config import HoleFillingElement, ReconstructionConfig
from usx_stream.compound.exact_numba import conflict_gap, row_bands
from usx_stream.compound.geometry import row_segments
from usx_stream.compound.paste_exact import linear_targets, nn_targets, positions


def _oblique(scale, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    m = np.eye(4)
    m[:3, :3] = q * scale
    m[:3, 3] = rng.uniform(-4, 20, 3)
    return m


def _row_voxels(m, row, width, dims, linear):
    ii = np.arange(width, dtype=np.float64)
    p = positions(m, np.full(width, float(row)), ii)
    if linear:
        idx, _, _ = linear_targets(p, dims)  # every corner, inside or not: conservative
        return set(idx.ravel().tolist())
    return set(nn_targets(p, dims)[0].tolist())


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_bands_and_gaps_reach_no_common_voxel(linear, seed):
    height, width, dims = 160, 40, (40, 40, 40)
    m = _oblique(0.3, seed)
    gap = conflict_gap(m, linear)
    cum = np.arange(height + 1) * width
    bands, gaps = row_bands(cum, gap, 3)
    assert len(bands) == 3 and len(gaps) == 2
    rows = sorted(j for j0, j1 in bands + gaps for j in range(j0, j1))
    assert rows == list(range(height))  # every row once
    voxels = [_row_voxels(m, j, width, dims, linear) for j in range(height)]
    for ranges in (bands, gaps):  # each phase: its ranges run at once
        sets = [set().union(*(voxels[j] for j in range(j0, j1))) for j0, j1 in ranges]
        for a in range(len(sets)):
            for b in range(a + 1, len(sets)):
                assert not sets[a] & sets[b]


def test_row_bands_fall_back_to_one_band():
    cum = np.arange(31) * 10
    assert row_bands(cum, None, 2) == ([(0, 30)], [])  # no safe distance
    assert row_bands(cum, 11, 2) == ([(0, 30)], [])  # too few rows for two bands and a gap
    assert len(row_bands(cum, 10, 2)[0]) == 2
    assert len(row_bands(cum, 10, 3)[0]) == 2  # three do not fit, two do
    m = np.eye(4)
    m[:3, 1] = m[:3, 0]  # rows along the columns: no distance separates them
    assert conflict_gap(m, False) is None


@pytest.mark.parametrize("interpolation", ["NEAREST_NEIGHBOR", "LINEAR"])
@pytest.mark.parametrize("mode", ["MEAN", "MAXIMUM", "LATEST"])
@pytest.mark.parametrize("scale", [0.2, 1.3])  # span kernels and pixel by pixel
def test_threads_paste_the_one_thread_volume(interpolation, mode, scale):
    rng = np.random.default_rng(11)
    shape_zyx, frame = (40, 42, 44), (150, 60)
    cfg = ReconstructionConfig(output_spacing=(1.0, 1.0, 1.0), interpolation=interpolation)
    layout = make_layout(frame, row_segments(cfg, frame))
    kw = dict(interpolation=interpolation, mode=mode, pixel_rejection_threshold=None)
    chans = [ExactChannel(shape_zyx, np.uint8, backend="numba", threads=t, **kw) for t in (1, 2, 3)]
    split = 0
    for k in range(5):
        m = _oblique(scale, 20 + k)
        image = rng.integers(0, 250, frame).astype(np.uint8)
        pasted = [c.paste(image, layout, m, k) for c in chans]
        assert pasted[0] == pasted[1] == pasted[2]
        cum = chans[2]._cumulative_pixels(layout)
        split += len(row_bands(cum, conflict_gap(m[:3], interpolation == "LINEAR"), 3)[0]) > 1
    assert split > 0  # the frames were really cut into bands
    ref = chans[0].result()
    assert (ref[2] > 0).sum() > 200
    for chan in chans[1:]:
        assert chan.nbytes == chans[0].nbytes  # one state whatever the threads
        for a, b in zip(ref, chan.result()):
            np.testing.assert_array_equal(a, b)


def _holes_volume(dtype, seed=7, shape=(14, 16, 18)):
    rng = np.random.default_rng(seed)
    vol = rng.uniform(0, 250, shape).astype(dtype)
    acc = (rng.random(vol.shape) < 0.3).astype(np.uint16) * 256
    return vol, acc


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_stick_threads_give_the_one_thread_sticks(dtype):
    vol, acc = _holes_volume(dtype)
    hit = (acc != 0).view(np.uint8)
    ok1, value1 = sticks.stick_fill_single(hit, vol, 7, dtype == np.uint8, threads=1)
    for threads in (2, 3):
        ok, value = sticks.stick_fill_single(hit, vol, 7, dtype == np.uint8, threads=threads)
        np.testing.assert_array_equal(ok, ok1)
        np.testing.assert_array_equal(value, value1)


def test_shares_cover_every_line_once():
    shape = (5, 6, 7)
    for d in holes.STICKS:
        for parts in (1, 2, 3):
            ranges = sticks.shares(d, shape, parts)
            assert len(ranges) == parts and all(lo <= hi for lo, hi in ranges)
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            if d[2] == 0:
                assert (ranges[0][0], ranges[-1][1]) == (0, shape[0])
            else:  # entry columns x - dx * z of the whole volume
                shift = -d[0] * (shape[0] - 1)
                assert (ranges[0][0], ranges[-1][1]) == (min(0, shift), shape[2] + max(0, shift))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_several_stick_elements_equal_per_hole_search(dtype):
    # each element fills the holes the earlier ones left: assembled in place, as the per-hole kernel does
    vol, acc = _holes_volume(dtype, seed=9)
    elements = [HoleFillingElement("STICK", stick_length_limit=3, number_of_sticks_to_use=1),
                HoleFillingElement("STICK", stick_length_limit=8, number_of_sticks_to_use=1)]
    fast = holes.fill_holes(vol, acc, elements)
    params, ratios, kernels = holes.pack_elements(elements)
    slow = np.empty_like(vol)
    none = np.zeros((1, 1, 1, 1), bool), np.zeros((1, 1, 1, 1), np.float64)
    holes._fill_kernel(vol, acc, slow, params, ratios, kernels, dtype == np.uint8, *none)
    np.testing.assert_array_equal(fast, slow)
    assert (fast[acc == 0] != 0).mean() > 0.5 and (fast[acc == 0] == 0).any()
