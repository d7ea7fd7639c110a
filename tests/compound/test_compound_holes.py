"""Hole filling with PLUS's elements."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.compound.config import HoleFillingElement
from usx_stream.compound.holes import fill_holes


def test_stick_blends_the_two_ends_by_distance():
    vol = np.zeros((5, 5, 12), np.uint8)
    acc = np.zeros_like(vol, dtype=np.uint16)
    vol[2, 2, 2], vol[2, 2, 6] = 100, 200
    acc[2, 2, 2] = acc[2, 2, 6] = 256
    out = fill_holes(vol, acc, [HoleFillingElement("STICK", stick_length_limit=9)])
    # PLUS weighs the forward end (rvs + 1) / (fwd + rvs + 1): voxel x=3 is 3 from the 200 and 1 from
    # the 100, so 200 * 2/5 + 100 * 3/5
    assert out[2, 2, 3] == 140 and out[2, 2, 4] == 160 and out[2, 2, 5] == 180
    assert out[2, 2, 9] == 0  # no end behind it
    assert out[2, 2, 2] == 100 and vol[2, 2, 3] == 0  # hits kept, input untouched


def test_stick_length_limit():
    vol = np.zeros((3, 3, 12), np.uint8)
    acc = np.zeros_like(vol, dtype=np.uint16)
    vol[1, 1, 0], vol[1, 1, 9] = 50, 50
    acc[1, 1, 0] = acc[1, 1, 9] = 256
    assert fill_holes(vol, acc, [HoleFillingElement("STICK", stick_length_limit=10)])[1, 1, 4] == 50
    assert fill_holes(vol, acc, [HoleFillingElement("STICK", stick_length_limit=9)])[1, 1, 4] == 0


def test_kernel_elements_and_fallback_order():
    vol = np.zeros((7, 7, 7), np.float32)
    acc = np.zeros((7, 7, 7), np.uint16)
    vol[3, 3, 2], vol[3, 3, 4] = 10.0, 30.0
    acc[3, 3, 2] = acc[3, 3, 4] = 256
    nn = fill_holes(vol, acc, [HoleFillingElement("NEAREST_NEIGHBOR", size=3, min_ratio=0.0)])
    assert nn[3, 3, 3] == 20.0 and nn[0, 0, 0] == 0
    gauss = fill_holes(vol, acc, [HoleFillingElement("GAUSSIAN", size=3, stdev=1.0, min_ratio=0.0)])
    assert gauss[3, 3, 3] == 20.0 and gauss[3, 3, 1] == 10.0
    dwi = fill_holes(vol, acc, [HoleFillingElement("DISTANCE_WEIGHT_INVERSE", size=7, min_ratio=0.0)])
    assert dwi[3, 3, 1] == pytest.approx(15.0, abs=1e-4)  # 10 at distance 1, 30 at 3: (10 + 30/3) / (1 + 1/3)
    strict = HoleFillingElement("GAUSSIAN", size=3, stdev=1.0, min_ratio=0.5)
    fallback = fill_holes(vol, acc, [strict, HoleFillingElement("NEAREST_NEIGHBOR", size=3)])
    assert fallback[3, 3, 3] == 20.0  # the strict kernel fails (2/27 known), nearest neighbour fills
    acc_w = acc.copy()
    acc_w[3, 3, 4] = 3 * 256
    ga = fill_holes(vol, acc_w, [HoleFillingElement("GAUSSIAN_ACCUMULATION", size=3, stdev=1.0)])
    assert ga[3, 3, 3] == 25.0  # weights 1 : 3


def test_integer_results_truncate_like_plus():
    vol = np.zeros((1, 1, 4), np.uint8)
    acc = np.zeros_like(vol, dtype=np.uint16)
    vol[0, 0, 0], vol[0, 0, 2] = 10, 11
    acc[0, 0, 0] = acc[0, 0, 2] = 256
    out = fill_holes(vol, acc, [HoleFillingElement("NEAREST_NEIGHBOR", size=3)])
    assert out[0, 0, 1] == 10  # mean 10.5 truncated
