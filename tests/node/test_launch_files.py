"""Every shipped launch file starts the node on this (CPU) machine against a replay of PLUS's real spine
phantom recording, as a user would start it (``usx-stream run --launch launch/<file>.toml``), and a real
OpenIGTLink client on the Slicer port sees what a user would see: the status line, and surfaces once
the node has what it needs. Ports, output folders and the grid (the simulator's fixed region does not
hold the phantom) are the only values overridden.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from usx_stream.igtl.codec import Message
from usx_stream.igtl.codec_basic import PointItem
from usx_stream.igtl.endpoints import Client
from usx_stream.io.plus_config import read_device_set
from usx_stream.sources.replay_server import ReplayServer


REPO_ROOT = Path(__file__).resolve().parents[2]
PHANTOM_CENTRE_MM = np.array([-41.5, 195.8, 51.6])   # centroid of the phantom's bone points (one vertebra)
SAFETY_S = 120.0                                     # a broken node fails the test here rather than hang CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def phantom_replay(plus_data):
    plus = plus_data
    calibration = read_device_set(plus / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml").transform_repository()
    server = ReplayServer(plus / "SpinePhantomFreehand.igs.mha", port=0, rate=30.0, loop=True,
                          calibration=calibration, min_clients=1)
    server.start()
    yield server
    server.stop()


def _toml(value) -> str:
    """A value in TOML syntax, as ``--set`` takes it."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps(value)


class NodeProcess:
    """``usx-stream run`` in a subprocess, stopped with SIGINT as a user's Ctrl-C."""

    def __init__(self, launch: str, overrides: dict, tmp: Path):
        sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={_toml(v)}")]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        self.stderr_path = tmp / "node.stderr"
        self.proc = subprocess.Popen([sys.executable, "-m", "usx_stream.cli", "run", "--launch",
                                      str(REPO_ROOT / "launch" / launch), *sets], cwd=tmp, env=env,
                                     stdout=subprocess.PIPE, stderr=self.stderr_path.open("w"), text=True)

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, self.stderr_path.read_text()


def _overrides(replay: ReplayServer, tmp: Path, slicer_port: int, **extra) -> dict:
    return {"source.kind": "igtl", "source.host": "127.0.0.1", "source.port": replay.port,
            "compound.origin_mm": [], "compound.extent_mm": [], "publish.igtl_port": slicer_port,
            "publish.igtl_host": "127.0.0.1", "publish.zmq_endpoint": "tcp://127.0.0.1:*",
            "record.dir": str(tmp / "recording"), "telemetry.report_path": str(tmp / "telemetry.json"), **extra}


def _collect(client: Client, until, node: NodeProcess) -> dict[str, list[Message]]:
    """Messages by type until ``until(messages)`` holds (or the node dies, or the safety time)."""
    got: dict[str, list[Message]] = {}
    deadline = time.monotonic() + SAFETY_S
    while time.monotonic() < deadline and node.proc.poll() is None and not until(got):
        msg = client.get(timeout=0.2)
        if msg is not None:
            got.setdefault(msg.type, []).append(msg)
    return got


def _statuses(got) -> list[str]:
    return [m.content for m in got.get("STRING", []) if m.device_name.endswith("Status")]


def _finish(node: NodeProcess, client: Client) -> dict:
    client.stop()
    rc, out, err = node.stop()
    assert "Traceback" not in err, err[-3000:]
    assert rc == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["frames"] > 0, out
    return summary


def _surfaces(got) -> set[str]:
    return {m.device_name for m in got.get("POLYDATA", [])}


def _run_until(launch, tmp_path, replay, until, **extra):
    port = _free_port()
    node = NodeProcess(launch, _overrides(replay, tmp_path, port, **extra), tmp_path)
    client = Client("127.0.0.1", port, backoff_s=(0.05, 0.2)).start()
    try:
        got = _collect(client, until, node)
    finally:
        summary = _finish(node, client)
    return got, summary, client


def test_demo_launch_file_fuses_the_simulated_xray(tmp_path, phantom_replay):
    # demo.toml fuses the simulated session's X-ray; on the real phantom its levels do not lie where the
    # phantom is, so the user is told which levels lack bone points: a status line, and no crash.
    got, summary, _ = _run_until("demo.toml", tmp_path, phantom_replay, lambda g: any(
        "bone points" in s or "multimodal" in s for s in _statuses(g)))
    assert any("bone points" in s or "multimodal" in s for s in _statuses(got)), _statuses(got)
    assert summary["updates"] >= 1


def test_or_live_plus_says_it_waits_then_completes_on_slicer_landmarks(tmp_path, phantom_replay):
    # X-ray enabled (the geometry a user makes from the example) but no X-ray arrives: the node says so.
    geometry = REPO_ROOT / "calibration" / "carm_geometry.example.json"
    port = _free_port()
    node = NodeProcess("or_live_plus.toml", _overrides(phantom_replay, tmp_path, port, **{
        "xray.geometry": str(geometry)}), tmp_path)
    client = Client("127.0.0.1", port, backoff_s=(0.05, 0.2)).start()
    try:
        got = _collect(client, lambda g: "waiting for X-ray or level landmarks" in _statuses(g), node)
        assert "waiting for X-ray or level landmarks" in _statuses(got), _statuses(got)
        # Slicer sends a markups list (POINT) with the level centres: the node completes those levels.
        points = [PointItem(name="L3", position=PHANTOM_CENTRE_MM),
                  PointItem(name="L4", position=PHANTOM_CENTRE_MM + [0.0, 35.0, 0.0])]
        assert client.wait_connected(timeout=10)
        client.send(Message("POINT", "Landmarks", points, None, {}, 2))
        got = _collect(client, lambda g: "USX_L3_Completed" in _surfaces(g), node)
    finally:
        summary = _finish(node, client)
    assert "USX_L3_Completed" in _surfaces(got)
    surface = next(m for m in got["POLYDATA"] if m.device_name == "USX_L3_Completed")
    assert surface.metadata["fusion"] == "us_only" and surface.metadata["centres"] == "landmarks"
    assert np.isfinite(surface.content.points).all() and len(surface.content.points) > 100
    assert summary["updates"] >= 1


def _phantom_xray(tmp: Path) -> tuple[Path, Path, Path]:
    """A C-arm calibrated on the phantom (the example intrinsics, isocentre at the phantom) and an X-ray
    labelmap marking L3 at the phantom's vertebra and L4 35 mm further along y, as files."""
    from usx_stream.io.volumes import write_volume
    from usx_stream.frames import Volume
    from usx_stream.xray.geometry import load_carm_geometry, save_carm_geometry

    example = load_carm_geometry(REPO_ROOT / "calibration" / "carm_geometry.example.json")
    pose = example.xray_to_reference.copy()
    pose[:3, 3] += PHANTOM_CENTRE_MM
    geometry = type(example)(example.source_to_detector_mm, example.source_to_isocenter_mm, example.detector_shape,
                             example.pixel_spacing_mm, example.principal_point_px, pose, name="phantom_carm")
    rows, cols = geometry.detector_shape
    labels = np.zeros((rows, cols), np.uint8)
    for level, offset in ((3, 0.0), (4, 35.0)):
        cube = np.stack(np.meshgrid(*[np.linspace(-12, 12, 7)] * 3, indexing="ij"), -1).reshape(-1, 3)
        # the body lies deeper along the beam (+z in the phantom's Reference) than the bone US sees
        uv = geometry.project(cube + PHANTOM_CENTRE_MM + [0.0, offset, 20.0])
        (u0, v0), (u1, v1) = np.floor(uv.min(0)).astype(int), np.ceil(uv.max(0)).astype(int)
        labels[max(v0, 0):max(v1, 0), max(u0, 0):max(u1, 0)] = level
    assert (labels == 3).sum() > 100 and (labels == 4).sum() > 100
    spacing = np.array([*geometry.pixel_spacing_mm, 1.0])
    image, labelmap = tmp / "xray.mha", tmp / "xray_labelmap.mha"
    write_volume(image, Volume(data=labels[None].astype(np.float32), origin_mm=np.zeros(3), spacing_mm=spacing))
    write_volume(labelmap, Volume(data=labels[None], origin_mm=np.zeros(3), spacing_mm=spacing))
    return image, labelmap, save_carm_geometry(geometry, tmp / "carm_geometry.json")


def test_phantom_session_fuses_a_recorded_xray(tmp_path, phantom_replay):
    image, labelmap, geometry = _phantom_xray(tmp_path)
    got, summary, _ = _run_until("phantom_session.toml", tmp_path, phantom_replay,
                                 lambda g: "L3_Completed" in _surfaces(g), **{
                                     "xray.image_path": str(image), "xray.labelmap_path": str(labelmap),
                                     "xray.geometry": str(geometry)})
    assert "L3_Completed" in _surfaces(got), _statuses(got)
    surface = next(m for m in got["POLYDATA"] if m.device_name == "L3_Completed")
    assert surface.metadata["fusion"] == "multimodal" and surface.metadata["centres"] == "xray"
    assert any("multimodal" in s for s in _statuses(got))


def test_latency_bench_launch_file_on_the_phantom(tmp_path, phantom_replay):
    # The benchmark's stream is simulated; here the same file runs on the real phantom with level landmarks
    # and no X-ray (its status messages are off: the benchmark keeps the wire to surfaces only).
    landmarks = {"L3": PHANTOM_CENTRE_MM, "L4": PHANTOM_CENTRE_MM + [0.0, 35.0, 0.0]}
    got, summary, _ = _run_until("latency_bench.toml", tmp_path, phantom_replay,
                                 lambda g: "L3_Completed" in _surfaces(g),
                                 **{"xray.enabled": False, "bone.landmarks_mm": landmarks})
    assert "L3_Completed" in _surfaces(got)
    assert not _statuses(got)
    report = json.loads((tmp_path / "telemetry.json").read_text())
    assert report["stages"]["compound"]["count"] > 0 and report["stages"]["end_to_end"]["count"] > 0
