"""A tiny paired-data file with the small model's point counts, shared by the training tests."""

from __future__ import annotations

import pytest

from usx_stream.datasets.pairs import PairConfig, generate


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory):
    """Five vertebrae (one procedural spine): 1024 partial, 256 labelmap, 1024 ground-truth points."""
    cfg = PairConfig(partial_points=1024, labelmap_points=256, complete_points=1024, mesh_spacing_mm=2.0)
    out = tmp_path_factory.mktemp("train_data") / "tiny.h5"
    generate(out, procedural=1, seed=11, workers=1, cfg=cfg, progress=False)
    return out
