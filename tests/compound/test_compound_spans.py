"""Span-walking ``exact`` kernels and the slice-ordered STICK walker against their references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from usx_stream.compound import holes
from usx_stream.compound.channels import ExactChannel, make_layout
from usx_stream.compound.config import HoleFillingElement, ReconstructionConfig
from usx_stream.compound.exact_spans import MAX_STEP, axis_steps
from usx_stream.compound.geometry import row_segments


def _coords(b, s, h, i0, stop):
    return np.array([math.floor(b + i * s + h) for i in range(i0, stop)])


@pytest.mark.parametrize("h", [0.0, 0.5])
def test_axis_steps_match_every_column(h):
    rng = np.random.default_rng(3)
    cols = np.empty(202, np.int64)
    cases = [(rng.uniform(-50, 50), rng.uniform(-0.49, 0.49)) for _ in range(300)]
    # crossings that land exactly on (or one rounding from) a column
    cases += [(2.0 - h, 0.25), (-h, -0.125), (7.0 - h - 40 * 0.1, 0.1), (3.0, 0.0), (1e-300, 1e-17)]
    for b, s in cases:
        i0, stop = int(rng.integers(0, 20)), 200
        ref = _coords(b, s, h, i0, stop)
        k0, d, steps = axis_steps(b, s, h, i0, stop, cols)
        got = np.empty(stop - i0, np.int64)
        for n in range(steps + 1):
            got[cols[n] - i0:cols[n + 1] - i0] = k0 + n * d
        assert cols[0] == i0 and cols[steps + 1] == stop
        np.testing.assert_array_equal(got, ref, err_msg=f"b={b!r} s={s!r}")


def _oblique_matrices(n, scale, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        m = np.eye(4)
        m[:3, :3] = q * scale
        m[:3, 3] = rng.uniform(-4, 20, 3)  # some frames stick out of the volume
        out.append(m)
    return out


@pytest.mark.parametrize("interpolation", ["NEAREST_NEIGHBOR", "LINEAR"])
@pytest.mark.parametrize("dtype,threshold", [(np.uint8, None), (np.uint8, 40), (np.float32, None), (np.uint16, 9)])
@pytest.mark.parametrize("scale", [0.23, 1.3])  # below and above MAX_STEP voxel per pixel
def test_span_kernels_equal_numpy(interpolation, dtype, threshold, scale):
    assert (scale < MAX_STEP) != (scale > 1.0)
    rng = np.random.default_rng(5)
    shape_zyx, frame = (17, 19, 23), (30, 41)
    cfg = ReconstructionConfig(output_spacing=(1.0, 1.0, 1.0), interpolation=interpolation)
    layout = make_layout(frame, row_segments(cfg, frame))
    kw = dict(interpolation=interpolation, mode="MEAN", pixel_rejection_threshold=threshold)
    chans = [ExactChannel(shape_zyx, dtype, backend="numpy", **kw),
             ExactChannel(shape_zyx, dtype, backend="numba", **kw),
             ExactChannel(shape_zyx, dtype, backend="numba", threads=2, **kw)]
    for k, m in enumerate(_oblique_matrices(6, scale)):
        if dtype == np.float32:
            image = rng.uniform(0, 200, frame).astype(dtype)
        else:
            image = rng.integers(0, 250, frame).astype(dtype)
        pasted = [c.paste(image, layout, m, k) for c in chans]
        assert pasted[0] == pasted[1] == pasted[2]
    ref = chans[0].result()
    assert (ref[2] > 0).mean() > 0.01
    for chan in chans[1:]:
        for a, b in zip(ref, chan.result()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_line_walk_sticks_equal_per_hole_search(dtype):
    rng = np.random.default_rng(7)
    vol = rng.uniform(0, 250, (14, 16, 18)).astype(dtype)
    acc = (rng.random(vol.shape) < 0.3).astype(np.uint16) * 256
    element = HoleFillingElement("STICK", stick_length_limit=7, number_of_sticks_to_use=1)
    fast = holes.fill_holes(vol, acc, [element])
    # the per-hole search of holes.py (params[:, 4] = 0: nothing precomputed) is PLUS's algorithm as written
    params, ratios, kernels = holes.pack_elements([element])
    slow = np.empty_like(vol)
    none = np.zeros((1, 1, 1, 1), bool), np.zeros((1, 1, 1, 1), np.float64)
    holes._fill_kernel(vol, acc, slow, params, ratios, kernels, dtype == np.uint8, *none)
    np.testing.assert_array_equal(fast, slow)
    assert (fast[acc == 0] != 0).mean() > 0.5


def test_long_linear_span_of_bright_uint8_pixels():
    # a whole 6000-pixel row in one cell: a corner's sum outgrows the 32 bits that packed weights leave
    frame, shape_zyx = (2, 6000), (4, 4, 4)
    cfg = ReconstructionConfig(output_spacing=(1.0, 1.0, 1.0), interpolation="LINEAR")
    layout = make_layout(frame, row_segments(cfg, frame))
    m = np.eye(4)
    m[:3, 0] = (1e-5, 1e-5, 1e-5)
    m[:3, 1] = (0.0, 0.01, 0.01)
    m[:3, 3] = (1.02, 1.01, 1.03)  # near a corner: most of each pixel's weight on it
    image = np.full(frame, 255, np.uint8)
    kw = dict(interpolation="LINEAR", mode="MEAN", pixel_rejection_threshold=None)
    chans = [ExactChannel(shape_zyx, np.uint8, backend=b, **kw) for b in ("numpy", "numba")]
    assert chans[0].paste(image, layout, m, 0) == chans[1].paste(image, layout, m, 0) == image.size
    sums = chans[1].state["sum"]
    assert sums.max() > 2 ** 33  # two rows: one row's span alone passes 2**32
    np.testing.assert_array_equal(sums, chans[0].state["sum"])
    for a, b in zip(chans[0].result(), chans[1].result()):
        np.testing.assert_array_equal(a, b)
