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
