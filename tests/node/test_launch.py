"""Launch-file schema: defaults, types, ranges, unknown keys, and every shipped launch file."""

from __future__ import annotations

from pathlib import Path

import pytest

from usx_stream.node.launch import SCHEMA, ConfigError, default_launch, describe_schema, load_launch, parse_launch

LAUNCH_DIR = Path(__file__).resolve().parents[2] / "launch"
SHIPPED = ("demo.toml", "or_live_plus.toml", "latency_bench.toml", "phantom_session.toml")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_launch_files_validate(name):
    cfg = load_launch(LAUNCH_DIR / name)
    assert cfg.description
    assert set(cfg.as_dict()) == set(SCHEMA)


def test_or_live_plus_ports():
    cfg = load_launch(LAUNCH_DIR / "or_live_plus.toml")
    assert (cfg.source.kind, cfg.source.port) == ("igtl", 18944)
    assert (cfg.publish.igtl_mode, cfg.publish.igtl_port) == ("server", 18945)


def test_latency_bench_streams_at_30_fps_for_as_long_as_asked():
    # one simulated sweep, looped: the benchmark's --duration (default 180 s) sets the run length
    cfg = load_launch(LAUNCH_DIR / "latency_bench.toml")
    assert cfg.source.fps == 30.0 and cfg.source.loop
    assert cfg.compound.origin_mm and cfg.compound.extent_mm  # fixed grid: no bootstrap in the timing


def test_defaults_fill_every_key():
    cfg = default_launch()
    for stage, keys in SCHEMA.items():
        section = getattr(cfg, stage)
        for key, spec in keys.items():
            assert getattr(section, key) == spec.default
    assert cfg.compound.spacing_mm == 0.5


@pytest.mark.parametrize("data, message", [
    ({"compound": {"spacing_mm": -1}}, "compound.spacing_mm: must be > 0, got -1"),
    ({"compound": {"spacing_mm": "fine"}}, "compound.spacing_mm: must be a number, got 'fine'"),
    ({"source": {"port": 70000}}, "source.port: must be <= 65535, got 70000"),
    ({"source": {"port": 1.5}}, "source.port: must be an integer, got 1.5"),
    ({"source": {"loop": 1}}, "source.loop: must be true or false, got 1"),
    ({"source": {"kind": "tcp"}}, "source.kind: must be one of ['igtl', 'replay', 'sim'], got 'tcp'"),
    ({"source": {"kind": "replay"}}, "source.path: required when source.kind = 'replay', got ''"),
    ({"bone": {"shadow_threshold": 1.5}}, "bone.shadow_threshold: must be <= 1, got 1.5"),
    ({"compound": {"origin_mm": [0, 0]}}, "compound.origin_mm: must have 3 numbers (or be empty), got [0, 0]"),
    ({"compound": {"origin_mm": [0, 0, 0]}}, "compound.extent_mm: origin_mm and extent_mm must be given together"),
    # metres typed as mm: a 3.6 TiB grid would be allocated at the first snapshot
    ({"compound": {"origin_mm": [0, 0, 0], "extent_mm": [10000, 10000, 10000], "spacing_mm": 1.0}},
     "compound.extent_mm: a grid of [10001, 10001, 10001] voxels at compound.spacing_mm = 1 is over 268435456"),
    ({"bone": {"landmarks_mm": {"L6": [0, 0, 0]}}}, "bone.landmarks_mm.L6: unknown level"),
    ({"bone": {"landmarks_mm": {"L1": [0, 0]}}}, "bone.landmarks_mm.L1: must have 3 numbers"),
    ({"bone": {"cranial_axis": [0, 0, 0]}}, "bone.cranial_axis: must be a non-zero direction (or empty), got [0.0"),
    ({"bone": {"cranial_axis": [0, 1]}}, "bone.cranial_axis: must have 3 numbers (or be empty)"),
    ({"xray": {"source": "file"}}, "xray.image_path: required when xray.source = 'file'"),
    ({"surface": {"triangle_budget": True}}, "surface.triangle_budget: must be an integer, got True"),
])
def test_errors_name_key_and_value(data, message):
    with pytest.raises(ConfigError) as exc:
        parse_launch(data)
    assert message in str(exc.value)


def test_unknown_key_and_table_are_named():
    with pytest.raises(ConfigError, match=r"compound: unknown key\(s\) \['spacing'\]"):
        parse_launch({"compound": {"spacing": 1.0}})
    with pytest.raises(ConfigError, match="meshing: unknown table"):
        parse_launch({"meshing": {}})
    with pytest.raises(ConfigError, match="source: must be a table"):
        parse_launch({"source": 3})


def test_relative_paths_resolve_against_the_launch_file(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "x.toml"
    f.write_text('[source]\nkind = "replay"\npath = "../data/seq.igs.mha"\n[record]\ndir = "/abs/rec"\n')
    cfg = load_launch(f)
    assert cfg.source.path == str(tmp_path / "data" / "seq.igs.mha")
    assert cfg.record.dir == "/abs/rec"
    assert cfg.source.calibration == ""          # empty means "none" and stays empty


def test_file_errors_name_the_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[compound]\nspacing_mm = -1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: compound.spacing_mm: must be > 0, got -1"):
        load_launch(f)
    f.write_text("[compound\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_launch(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_launch(tmp_path / "missing.toml")


def test_overrides_are_validated_and_values_read_only():
    cfg = parse_launch({"bone": {"landmarks_mm": {"L3": [1, 2, 3]}}})
    assert cfg.bone.landmarks_mm == {"L3": [1.0, 2.0, 3.0]}
    new = cfg.with_overrides({"compound.spacing_mm": 1, "source.port": 20000})
    assert (new.compound.spacing_mm, new.source.port, cfg.compound.spacing_mm) == (1.0, 20000, 0.5)
    with pytest.raises(ConfigError, match="compound.spacing_mm: must be > 0, got 0"):
        cfg.with_overrides({"compound.spacing_mm": 0})
    with pytest.raises(ConfigError, match="nope: unknown key"):
        cfg.with_overrides({"nope": 1})
    with pytest.raises(AttributeError, match="read-only"):
        cfg.compound.spacing_mm = 2.0
    with pytest.raises(AttributeError, match="compound.nope: no such key"):
        cfg.compound.nope


def test_describe_schema_lists_every_table():
    text = describe_schema()
    for stage in SCHEMA:
        assert f"[{stage}]" in text


def test_recording_reads_counts_attribute_reads_through_overrides():
    from usx_stream.node.launch import recording_reads

    cfg, reads = recording_reads(parse_launch({"compound": {"spacing_mm": 2.0}}))
    assert cfg.compound.spacing_mm == 2.0 and reads == {"compound.spacing_mm"}
    cfg.as_dict()                                  # a whole-table copy is no read of any key
    assert reads == {"compound.spacing_mm"}
    other = cfg.with_overrides({"telemetry.window": 50})
    assert other.telemetry.window == 50 and "telemetry.window" in reads
    with pytest.raises(AttributeError, match="compound.nope: no such key"):
        cfg.compound.nope


def test_completion_num_points_is_gone():
    # the network's output size is a property of its weights (ModelConfig.num_out), not a launch value
    with pytest.raises(ConfigError, match=r"completion: unknown key\(s\) \['num_points'\]"):
        parse_launch({"completion": {"num_points": 2048}})
