"""Geometry as PLUS derives it: inclusive clip rectangle, fan rows, extent rounding, fixed point."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.compound.config import HoleFillingElement, ReconstructionConfig
from usx_stream.compound.geometry import (OutputGeometry, clip_extent, geometry_from_frames, plus_floor,
                                          row_segments, segment_mask, to_fixed)


def config(**kw):
    return ReconstructionConfig(output_spacing=(0.5, 0.5, 0.5), **kw)


def test_clip_rectangle_is_inclusive_and_clamped():
    assert clip_extent(config(clip_rectangle_origin=(192, 16), clip_rectangle_size=(420, 580)), (616, 820)) \
        == (192, 612, 16, 596)
    assert clip_extent(config(clip_rectangle_origin=(0, 0), clip_rectangle_size=(820, 616)), (616, 820)) \
        == (0, 819, 0, 615)
    assert clip_extent(config(), (10, 20)) == (0, 19, 0, 9)


def test_fan_rows_follow_angles_and_radii():
    cfg = config(fan_angles_deg=(-45, 45), fan_origin_pixel=(100, 0), fan_radius_start_pixel=20,
                 fan_radius_stop_pixel=80)
    segs = row_segments(cfg, (100, 200))
    mask = segment_mask(segs, 200)
    jj, ii = np.nonzero(mask)
    r = np.hypot(ii - 100, jj)
    assert r.max() < 80 and r.min() > 19
    assert np.all(np.abs(ii - 100) <= jj)  # inside +-45 degrees
    assert not mask[85:].any()  # beyond the stop radius
    assert segs[18].tolist() == [83, 92, 108, 117]  # near field: two pieces either side of the start radius
    assert segs[5, 1] < segs[5, 0] and segs[5, 3] < segs[5, 2]  # start circle covers the whole fan row


def test_plus_floor_rounds_to_two_to_the_minus_16_first():
    assert plus_floor(16.999995) == 17 and np.floor(16.999995) == 16
    assert plus_floor(-0.6) == -1 and plus_floor(2.5) == 2


def test_fixed_point_is_round_half_even_in_2_to_the_minus_14():
    assert to_fixed(np.array([1.0, 0.5 / 16384, 1.5 / 16384, -1.0 / 16384])).tolist() == [16384, 0, 2, -1]


@pytest.mark.parametrize("rounding, expected", [("round", 5), ("truncate", 4), ("lattice", 5)])
def test_extent_rounding_options(rounding, expected):
    # a frame spanning x in [0.1, 1.9] mm: 3.6 voxel steps of 0.5 mm -> last index 4 (round), 3 (truncate)
    m = np.diag([1.8, 1.0, 1.0, 1.0])
    m[0, 3] = 0.1
    geo = geometry_from_frames([m], (1, 2), config(), extent_rounding=rounding)
    assert geo.dims[0] == expected
    assert geo.origin_mm[0] == pytest.approx(0.0 if rounding == "lattice" else 0.1)


def test_output_geometry_from_configured_extent():
    geo = OutputGeometry.from_extent((1.0, 2.0, 3.0), (0.5, 0.5, 1.0), (2, 11, 0, 4, 0, 0))
    assert geo.dims == (10, 5, 1) and geo.origin_mm.tolist() == [2.0, 2.0, 3.0]


def test_config_validation_names_field_and_value():
    with pytest.raises(ValueError, match="output_spacing"):
        ReconstructionConfig(output_spacing=(0.5, 0, 0.5))
    with pytest.raises(ValueError, match="interpolation.*CUBIC"):
        config(interpolation="CUBIC")
    with pytest.raises(ValueError, match="skip_interval"):
        config(skip_interval=0)
    with pytest.raises(ValueError, match="type"):
        HoleFillingElement("MEDIAN")
    assert config(optimization="NO_OPTIMIZATION").optimization == "NONE"
