"""The launch file's ``[compound]`` table and ``ReconstructionConfig``: one set of allowed values.

Every value the table accepts runs in the node's reconstructor; every other value fails at
``parse_launch`` naming the key; ``compound.fill_holes`` fills the holes of the node's snapshots.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from compound_frames import sweep_frames
from usx_stream.compound import config as recon_config
from usx_stream.compound.config import DEFAULT_HOLE_FILLING, HoleFillingElement, ReconstructionConfig
from usx_stream.compound.reconstructor import Reconstructor, output_geometry
from usx_stream.node.launch import SCHEMA, ConfigError, parse_launch
from usx_stream.node.ingest import IngestStage

ROI = {"origin_mm": [0.0, -1.0, 0.0], "extent_mm": [14.0, 12.0, 8.0], "spacing_mm": 0.5}


def test_launch_choices_are_the_reconstructors():
    table = SCHEMA["compound"]
    assert table["interpolation"].choices == recon_config.INTERPOLATIONS
    assert table["compounding_mode"].choices == recon_config.COMPOUNDING_MODES
    assert table["hole_filling"].choices == recon_config.HOLE_FILLING_TYPES


@pytest.mark.parametrize("key, value", [("compounding_mode", "IMPORTANCE_MASK"), ("interpolation", "CUBIC"),
                                        ("hole_filling", "MEDIAN")])
def test_a_value_the_reconstructor_cannot_run_fails_at_load_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=re.escape(f"compound.{key}: must be one of [") + r".*" +
                       re.escape(f"got {value!r}")):
        parse_launch({"compound": {key: value}})


@pytest.mark.parametrize("key, value", [("stick_length_limit", 0), ("number_of_sticks_to_use", 0),
                                        ("hole_filling_size", 0), ("hole_filling_stdev", 0.0),
                                        ("hole_filling_min_ratio", 1.5)])
def test_hole_filling_parameters_are_checked_at_load(key, value):
    with pytest.raises(ConfigError, match=re.escape(f"compound.{key}:")):
        parse_launch({"compound": {key: value}})


@pytest.mark.parametrize("interpolation", recon_config.INTERPOLATIONS)
@pytest.mark.parametrize("mode", recon_config.COMPOUNDING_MODES)
def test_every_valid_launch_value_runs_in_the_node(interpolation, mode):
    cfg = parse_launch({"compound": {**ROI, "interpolation": interpolation, "compounding_mode": mode,
                                     "backend": "numba", "fill_holes": True},
                        "bone": {"enabled": False}})
    stage = IngestStage(cfg.compound, cfg.bone)
    assert (stage.recon_config.interpolation, stage.recon_config.compounding_mode) == (interpolation, mode)
    for frame in sweep_frames(4):
        assert stage.add(frame)
    volume, info = stage.snapshot()
    assert info["frames"] == 4 and volume.data.any()


@pytest.mark.parametrize("kind", recon_config.HOLE_FILLING_TYPES)
def test_every_hole_filling_type_of_the_launch_table_runs(kind):
    cfg = parse_launch({"compound": {"hole_filling": kind, "fill_holes": True}})
    config = ReconstructionConfig.from_launch(cfg.compound)
    assert [e.type for e in config.hole_filling] == [kind] and config.fill_holes
    frames = sweep_frames(3, step_mm=1.2)
    recon = Reconstructor(config, output_geometry(config, frames), semantics="exact")
    for f in frames:
        recon.add(f)
    filled, raw = recon.snapshot(), recon.snapshot(fill_holes=False)
    assert np.count_nonzero(filled.data) >= np.count_nonzero(raw.data)


def test_from_launch_defaults_match_the_schema_and_plus_spine_phantom():
    config = ReconstructionConfig.from_launch(parse_launch({}).compound)
    assert config.hole_filling == DEFAULT_HOLE_FILLING == (
        HoleFillingElement("STICK", stick_length_limit=9, number_of_sticks_to_use=1),)
    assert not config.fill_holes and config.pixel_rejection_threshold is None
    assert config.clip_rectangle_origin is None and config.output_spacing.tolist() == [0.5, 0.5, 0.5]
    cfg = parse_launch({"compound": {"clip_rectangle_origin": [2, 3], "clip_rectangle_size": [40, 30],
                                     "pixel_rejection_threshold": 4.0, "spacing_mm": 0.25}})
    config = ReconstructionConfig.from_launch(cfg.compound)
    assert config.clip_rectangle_origin.tolist() == [2, 3] and config.clip_rectangle_size.tolist() == [40, 30]
    assert config.pixel_rejection_threshold == 4.0 and config.output_spacing.tolist() == [0.25] * 3


def test_from_launch_names_the_key_of_a_value_the_loader_lets_through():
    cfg = parse_launch({"compound": {"clip_rectangle_origin": [2.5, 3], "clip_rectangle_size": [40, 30]}})
    with pytest.raises(ValueError, match=re.escape("compound.clip_rectangle_origin: expected integers")):
        ReconstructionConfig.from_launch(cfg.compound)


@pytest.mark.parametrize("bone", [False, True])
def test_fill_holes_fills_the_node_snapshots(bone):
    """Frames 1.2 mm apart on a 0.5 mm grid leave empty slabs; compound.fill_holes fills them (STICK 9).

    With the bone channel the node reads that channel alone; it is filled as ``snapshot()`` fills it.
    """
    frames = sweep_frames(5, step_mm=1.2)
    volumes, stages = {}, {}
    for fill in (False, True):
        cfg = parse_launch({"compound": {**ROI, "backend": "numba", "fill_holes": fill}, "bone": {"enabled": bone}})
        stage = IngestStage(cfg.compound, cfg.bone)
        if bone:  # a stand-in detector: a probability everywhere (random B-mode pixels hold no bone)
            stage._detect = lambda frame, m: {"bone": (np.asarray(frame.pixels) / 255.0).astype(np.float32)}
        for frame in frames:
            assert stage.add(frame)
        volumes[fill], stages[fill] = stage.snapshot()[0], stage
    known = stages[False].reconstructor.snapshot(fill_holes=False).weights > 0
    assert np.count_nonzero(volumes[True].data) > np.count_nonzero(volumes[False].data)
    np.testing.assert_array_equal(volumes[True].data[known], volumes[False].data[known])  # known voxels kept
    if bone:
        assert set(volumes[True].channels) == {"bone"}
        full = stages[True].reconstructor.snapshot(fill_holes=True)
        np.testing.assert_array_equal(volumes[True].data, full.channels["bone"])
