"""Sharded dataset generation: the parts, merged, are the unsharded file sample for sample."""

from __future__ import annotations

import json
import shlex
import sys

import h5py
import numpy as np
import pytest

from usx_stream.cli import main
from usx_stream.datasets import node_sessions
from usx_stream.datasets.pairs import PairedSample
from usx_stream.datasets.shards import parse_shard, shard_bounds
from usx_stream.errors import InputError
from usx_stream.train.data import merge_pairs

COMMON = ["--procedural", "3", "--seed", "4", "--workers", "1", "--mesh-spacing", "2.0", "--no-progress"]
DATASETS = ("incomplete_pcds", "labelmaps", "complete_pcds", "labels", "number_per_class", "names", "centers_mm")


def _contents(path):
    with h5py.File(path, "r") as f:
        data = {k: f[k][()] for k in DATASETS}
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items() if k != "command"}
    return data, attrs


def _assert_same_file(a, b):
    (da, aa), (db, ab) = _contents(a), _contents(b)
    for key in DATASETS:
        assert da[key].dtype == db[key].dtype, key
        np.testing.assert_array_equal(da[key], db[key], err_msg=key)
    assert aa == ab


@pytest.fixture(scope="module")
def procedural(tmp_path_factory):
    """One unsharded and two sharded generations of the same three procedural spines, with the command."""
    root = tmp_path_factory.mktemp("shards")
    assert main(["dataset", "--out", str(root / "whole.h5"), *COMMON]) == 0
    for i in (0, 1):
        assert main(["dataset", "--out", str(root / f"part{i}.h5"), *COMMON, "--shard", f"{i}/2"]) == 0
    return root


def test_two_shards_merged_are_the_unsharded_file(procedural, capsys):
    root = procedural
    with h5py.File(root / "part0.h5", "r") as f0, h5py.File(root / "part1.h5", "r") as f1:
        # Spines 0 (part 0) and 1..2 (part 1): contiguous, disjoint.
        assert json.loads(f0.attrs["shard_items"]) == [0, 1] and json.loads(f1.attrs["shard_items"]) == [1, 3]
        assert len(f0["labels"]) == 5 and len(f1["labels"]) == 10
    # Parts in any order.
    assert main(["dataset", "--merge", str(root / "merged.h5"), str(root / "part1.h5"), str(root / "part0.h5")]) == 0
    assert "15 samples from 2 parts" in capsys.readouterr().out
    _assert_same_file(root / "whole.h5", root / "merged.h5")


def _rewrite_attr(src, dst, key, value):
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        f.attrs[key] = value
    return dst


def test_merge_refuses_parts_of_other_generations_or_gaps(procedural, tmp_path, capsys):
    root = procedural
    p0, p1 = str(root / "part0.h5"), str(root / "part1.h5")
    other_seed = str(_rewrite_attr(p1, tmp_path / "seed.h5", "seed", 5))
    other_split = str(_rewrite_attr(p1, tmp_path / "split.h5", "shard", json.dumps([1, 3])))
    cases = {
        (p0,): "parts [1] of 2 missing",
        (p0, p0): "part 0 of 2 given twice",
        (p0, other_seed): "different generations: seed 5 vs 4",
        (p0, other_split): "part 1 of 3",
        (p0, str(root / "whole.h5")): "not a part of a sharded generation",
        (p0, str(tmp_path / "absent.h5")): "part not found",
    }
    for parts, message in cases.items():
        assert main(["dataset", "--merge", str(tmp_path / "out.h5"), *parts]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.startswith("usx-stream dataset: error: --merge:") and "\n" not in err
    assert not (tmp_path / "out.h5").exists()
    assert main(["dataset", "--out", str(tmp_path / "x.h5"), "--procedural", "2", "--shard", "2/2"]) == 2
    assert "I must be in 0..N-1" in capsys.readouterr().err


def test_shard_ranges_tile_the_items():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("1", "a/b", "-1/2", "2/2", "0/0"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)
    for n_items in (3, 7, 10):
        for n in range(1, n_items + 1):
            bounds = [shard_bounds(n_items, (i, n)) for i in range(n)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n_items
            assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bounds, bounds[1:]))
    with pytest.raises(InputError, match="4 parts for 3 items"):
        shard_bounds(3, (0, 4))


def _fake_node_pairs(index, *, seed, launch, complete_points=2048, spine=None, variation=None, spine_options=None):
    """Stand-in for a simulated session (30 s of CPU each): deterministic in (seed, index), one skip."""
    rng = np.random.default_rng([seed, index])
    samples = [PairedSample(level=lv, partial=rng.random((8, 3), dtype=np.float32),
                            labelmap=rng.random((4, 3), dtype=np.float32),
                            complete=rng.random((16, 3), dtype=np.float32), name=f"session{index:05d}/{lv}",
                            center_mm=rng.random(3)) for lv in ("L1", "L2")]
    return samples, [f"session{index:05d}/L3: not split out of the bone points"]


def test_node_session_shards_merge_to_the_unsharded_file(tmp_path, monkeypatch):
    monkeypatch.setattr(node_sessions, "node_pairs", _fake_node_pairs)
    kw = dict(sessions=5, seed=3, launch="demo.toml", workers=1, progress=False)
    node_sessions.generate_node(tmp_path / "whole.h5", **kw)
    parts = [node_sessions.generate_node(tmp_path / f"p{i}.h5", shard=(i, 3), **kw).path for i in range(3)]
    merge_pairs(tmp_path / "merged.h5", parts[::-1], command="merge")
    _assert_same_file(tmp_path / "whole.h5", tmp_path / "merged.h5")
    with h5py.File(tmp_path / "merged.h5", "r") as f:
        assert len(json.loads(f.attrs["skipped"])) == 5 and len(f["labels"]) == 10


def _command(path):
    with h5py.File(path, "r") as f:
        return f.attrs["command"]


def test_a_file_records_the_arguments_main_ran_not_sys_argv(procedural, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "-k", "something else"])
    root = procedural
    assert _command(root / "whole.h5") == "usx-stream " + shlex.join(["dataset", "--out", str(root / "whole.h5"),
                                                                        *COMMON])
    merge = ["dataset", "--merge", str(tmp_path / "merged.h5"), str(root / "part0.h5"), str(root / "part1.h5")]
    assert main(merge) == 0
    assert _command(tmp_path / "merged.h5") == "usx-stream " + shlex.join(merge)
    monkeypatch.setattr(node_sessions, "node_pairs", _fake_node_pairs)
    node = ["-v", "dataset", "--out", str(tmp_path / "node it's.h5"), "--node-sessions", "2", "--workers", "1",
            "--no-progress"]
    assert main(node) == 0
    assert _command(tmp_path / "node it's.h5") == "usx-stream " + shlex.join(node)
