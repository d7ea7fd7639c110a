"""Several paired-data files read as one training set, and the errors that stop a bad mix."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from usx_stream.train.data import read_pairs, read_pairs_many


def _copy_with(src, dst, **changes):
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for key in f:
            g.create_dataset(key, data=changes.get(key, f[key][()]))
        for key, value in f.attrs.items():
            g.attrs[key] = changes.get(f"attr:{key}", value)
    return dst


def test_comma_separated_files_concatenate_in_order(tiny_pairs, tmp_path):
    one = read_pairs(tiny_pairs)
    other = _copy_with(tiny_pairs, tmp_path / "b.h5", complete_pcds=read_pairs(tiny_pairs).complete + 1.0)
    both = read_pairs_many(f"{tiny_pairs},{other}")
    assert len(both) == 2 * len(one)
    np.testing.assert_array_equal(both.partial[:len(one)], one.partial)
    np.testing.assert_array_equal(both.complete[len(one):], one.complete + 1.0)
    assert both.levels() == one.levels() * 2
    assert both.centers_mm.shape == (2 * len(one), 3)
    assert read_pairs_many(str(tiny_pairs)).names == one.names  # one file: read as it is


def test_files_with_other_units_or_point_counts_are_refused(tiny_pairs, tmp_path):
    cm = _copy_with(tiny_pairs, tmp_path / "cm.h5", **{"attr:mm_per_unit": 10.0})
    with pytest.raises(ValueError, match="mm_per_unit 10.0"):
        read_pairs_many(f"{tiny_pairs},{cm}")
    fewer = _copy_with(tiny_pairs, tmp_path / "fewer.h5", incomplete_pcds=read_pairs(tiny_pairs).partial[:, :512])
    with pytest.raises(ValueError, match="partial points"):
        read_pairs_many(f"{tiny_pairs},{fewer}")
    with pytest.raises(ValueError, match="none given"):
        read_pairs_many(" , ")
