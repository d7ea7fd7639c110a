"""Training pairs made on the node's own path: inputs exactly as the live update computes them, and
the ground truth in the same (estimated) frame."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from usx_stream.node.assemble import default_launch_dir
from usx_stream.node.launch import load_launch
from usx_stream.datasets.node_sessions import node_pairs, session_seed

MM_PER_UNIT = 50.0


def test_node_pairs_share_one_frame_with_their_ground_truth():
    cfg = load_launch(default_launch_dir() / "demo.toml").with_overrides({"source.n_frames": 150})
    samples, skipped = node_pairs(0, seed=5, launch=cfg, complete_points=2048)
    assert len(samples) >= 3, skipped
    assert len(samples) + len(skipped) == 5
    for s in samples:
        assert s.partial.shape == (1024, 3) and s.labelmap.shape == (256, 3) and s.complete.shape == (2048, 3)
        assert s.partial.dtype == s.complete.dtype == np.float32
        # the detected bone lies on the true surface: a frame or centre mix-up would put it centimetres off
        d_mm = cKDTree(s.complete).query(s.partial)[0] * MM_PER_UNIT
        assert np.median(d_mm) < 1.5, (s.name, np.median(d_mm))
        # the labelmap points sit inside the vertebral body: anterior of the posterior bone the probe sees
        assert s.labelmap[:, 1].mean() < s.partial[:, 1].mean() - 0.2
        assert s.name.startswith("session00000/")


def test_session_seeds_differ_between_streams_and_indices():
    seeds = {session_seed(a, i) for a in (11, 12, 13) for i in range(50)}
    assert len(seeds) == 150


def test_node_sessions_read_a_spine_folder_with_its_units(vertebrae_data, tmp_path, capsys):
    from usx_stream.cli import main
    from usx_stream.train.data import read_pairs

    out = tmp_path / "vh.h5"
    # the Visible Human meshes are in metres, in axes of their own: --scale and --frame reach the spine
    # every session sweeps
    assert main(["dataset", "--out", str(out), "--node-sessions", "1", "--spine",
                 str(vertebrae_data / "visible_human_male_L1-L5"), "--scale", "1000", "--frame", "auto",
                 "--workers", "1", "--no-progress"]) == 0
    pairs = read_pairs(out)
    assert pairs.attrs["spine_scale"] == "1000.0" and pairs.attrs["spine_frame"] == "auto"
    assert len(pairs.names) >= 4
    for name, complete in zip(pairs.names, pairs.complete):  # whole adult vertebrae, not a thousandth of one
        span_mm = np.ptp(complete, axis=0).max() * pairs.mm_per_unit
        assert 40.0 < span_mm < 120.0, (name, span_mm)
