"""What a launch file turns into on this machine: ``auto`` compute choices, and the X-ray geometry a user
must make (a missing or broken file is one ConfigError naming file, key and the command that makes it)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from usx_stream.node.assemble import make_xray_cache
from usx_stream.node.compute import choose_compute, resolve_compute
from usx_stream.node.launch import ConfigError, load_launch, parse_launch

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH = REPO_ROOT / "launch"


@pytest.mark.parametrize("name", ["demo.toml", "or_live_plus.toml", "phantom_session.toml", "latency_bench.toml"])
def test_every_launch_file_resolves_to_cpu_values_without_cuda(name):
    choice = choose_compute(load_launch(LAUNCH / name), cuda=False)
    assert (choice.completion_device, choice.precision, choice.compound_backend) == ("cpu", "fp32", "numba")
    assert (choice.surface_backend, choice.surface_device) == ("scipy", "cpu")


def test_auto_takes_the_gpu_when_there_is_one_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="usx_stream.node.compute"):
        cfg = resolve_compute(load_launch(LAUNCH / "or_live_plus.toml"), cuda=True)
    assert (cfg.completion.device, cfg.completion.precision) == ("cuda", "fp16")
    assert (cfg.compound.backend, cfg.compound.device) == ("torch", "cuda")
    assert (cfg.surface.backend, cfg.surface.device) == ("torch", "cuda")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "CUDA device found" in lines[0] and "fp16" in lines[0]
    assert "meshing with torch on cuda" in lines[0]


@pytest.mark.parametrize("surface, cuda, want", [
    ({}, False, ("scipy", "cpu")),
    ({"backend": "torch"}, False, ("torch", "cpu")),
    ({"device": "cpu"}, True, ("scipy", "cpu")),                  # pinned to the CPU: the fast CPU mesher
    ({"backend": "torch", "device": "cpu"}, True, ("torch", "cpu")),
    ({"backend": "scipy"}, True, ("scipy", "cpu")),
    ({"device": "cuda"}, True, ("torch", "cuda")),
])
def test_surface_backend_and_device(surface, cuda, want):
    choice = choose_compute(parse_launch({"surface": surface}), cuda=cuda)
    assert (choice.surface_backend, choice.surface_device) == want
    assert choice.overrides()["surface.backend"] == want[0] and choice.overrides()["surface.device"] == want[1]


@pytest.mark.parametrize("keys, cuda, want", [
    ({}, False, "host"),
    ({}, True, "compound"),                                              # torch on the GPU: points there
    ({"compound": {"backend": "torch", "device": "cpu"}}, True, "host"),  # torch on a CPU: the copy is faster
    ({"compound": {"backend": "torch"}}, False, "host"),
    ({"compound": {"backend": "torch"}, "bone": {"points_device": "compound"}}, False, "compound"),
    ({"compound": {"backend": "torch", "device": "cuda"}, "bone": {"points_device": "host"}}, True, "host"),
])
def test_bone_points_device(keys, cuda, want):
    choice = choose_compute(parse_launch(keys), cuda=cuda)
    assert choice.bone_points_device == want and choice.overrides()["bone.points_device"] == want
    assert ("bone points there too" in choice.describe()) == (want == "compound")


def test_bone_points_on_the_device_without_torch_compounding_is_a_config_error():
    with pytest.raises(ConfigError, match="bone.points_device: 'compound' needs compound.backend = 'torch', "
                                          "got 'numba'"):
        choose_compute(parse_launch({"bone": {"points_device": "compound"}}), cuda=False)
    with pytest.raises(ConfigError, match="bone.points_device: .*'gpu'"):
        parse_launch({"bone": {"points_device": "gpu"}})


@pytest.mark.parametrize("overrides, key", [
    ({"completion": {"precision": "fp16"}}, "completion.precision"),
    ({"completion": {"device": "cuda"}}, "completion.device"),
    ({"compound": {"device": "cuda"}}, "compound.device"),
    ({"surface": {"device": "cuda"}}, "surface.device: 'cuda' needs a CUDA device"),
    ({"surface": {"backend": "torch", "device": "cuda"}}, "surface.device"),
])
def test_explicit_gpu_values_without_cuda_are_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key):
        choose_compute(parse_launch(overrides), cuda=False)


def test_scipy_on_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="surface.device: 'cuda' needs surface.backend = 'torch' or 'auto', "
                                          "got 'scipy'"):
        choose_compute(parse_launch({"surface": {"backend": "scipy", "device": "cuda"}}), cuda=True)
    with pytest.raises(ConfigError, match="surface.backend: .*'numpy'"):
        parse_launch({"surface": {"backend": "numpy"}})


def test_missing_geometry_names_file_key_and_the_command_that_makes_it(tmp_path):
    cfg = load_launch(LAUNCH / "or_live_plus.toml")
    with pytest.raises(ConfigError) as e:
        make_xray_cache(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("xray.geometry:") and "carm_geometry.json" in msg and "usx-stream calibrate-xray" in msg
    broken = tmp_path / "carm.json"
    broken.write_text('{"source_to_detector_mm": 1000}')
    with pytest.raises(ConfigError, match=r"xray.geometry: .*carm.json is not a usable C-arm geometry"):
        make_xray_cache(cfg.with_overrides({"xray.geometry": str(broken)}))


def test_a_disabled_xray_needs_no_geometry():
    cfg = load_launch(LAUNCH / "or_live_plus.toml").with_overrides({"xray.enabled": False})
    assert not make_xray_cache(cfg).snapshot().ready


def test_the_example_geometry_loads_and_calibrates(tmp_path):
    from usx_stream.cli import main
    from usx_stream.xray.geometry import load_carm_geometry

    out = tmp_path / "carm_geometry.json"
    assert main(["calibrate-xray", "--geometry", str(REPO_ROOT / "calibration" / "carm_geometry.example.json"),
                 "--pairs", str(REPO_ROOT / "calibration" / "fiducials.example.csv"), "--out", str(out),
                 "--max-rms-mm", "0.5"]) == 0
    cfg = load_launch(LAUNCH / "or_live_plus.toml").with_overrides({"xray.geometry": str(out)})
    import numpy as np

    got, want = make_xray_cache(cfg).snapshot().geometry, load_carm_geometry(out)
    np.testing.assert_allclose(got.xray_to_reference, want.xray_to_reference)


@pytest.mark.parametrize("key", ["weights", "weights_us_only"])
def test_weights_that_are_missing_or_not_a_checkpoint_name_the_launch_key(tmp_path, key):
    """Like completion.error_head: one ConfigError naming the key and the file, not a traceback."""
    import torch

    from usx_stream.node.assemble import make_engines

    torch.save({"a": 1}, tmp_path / "other.pt")
    for name, why in (("missing.pt", "completion checkpoint not found"), ("other.pt", "is not a usx-completion")):
        cfg = parse_launch({"completion": {key: str(tmp_path / name), "backend": "eager"}})
        with pytest.raises(ConfigError, match=rf"^completion\.{key}: .*{why}") as info:
            make_engines(cfg)
        assert name in str(info.value)


def test_a_publishing_port_already_taken_names_the_key_and_stops_what_started():
    """A second node on the same machine: one line naming the key, not an OSError traceback."""
    import socket

    from usx_stream.node.assemble import make_publishers

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = parse_launch({"publish": {"igtl_port": port}})
        with pytest.raises(ConfigError, match=rf"publish\.igtl_port: cannot listen on 127\.0\.0\.1:{port}: "
                                              r"Address already in use"):
            make_publishers(cfg)
        # ZeroMQ on the taken port, after an OpenIGTLink server that did start: that one is closed again
        igtl_port = _free_port()
        cfg = parse_launch({"publish": {"igtl_port": igtl_port, "zmq_enabled": True,
                                        "zmq_endpoint": f"tcp://127.0.0.1:{port}"}})
        with pytest.raises(ConfigError, match=rf"publish\.zmq_endpoint: cannot bind tcp://127\.0\.0\.1:{port}"):
            make_publishers(cfg)
    again = parse_launch({"publish": {"igtl_port": igtl_port}})
    publishers = make_publishers(again)  # the server the failed attempt had started was closed: its port is free
    try:
        assert len(publishers) == 1
    finally:
        for p in publishers:
            p.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
