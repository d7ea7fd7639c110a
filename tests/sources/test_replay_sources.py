"""Replay of the real PLUS recording: over OpenIGTLink (PlusServer-like) and in process, compared frame by
frame with reading the file directly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from usx_stream.igtl.endpoints import Client
from usx_stream.igtl.receiver import PlusReceiver, ReceiverConfig
from usx_stream.io.sequence import read_sequence
from usx_stream.sources.igtl_source import IgtlFrameSource
from usx_stream.sources.replay import SequenceReplay
from usx_stream.sources.replay_server import ReplayServer

SEQUENCE = "SpinePhantomFreehand.igs.mha"
DEVICE_SET = "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml"


_CACHE: dict = {}


@pytest.fixture
def recording(plus_data):
    # read once per module (plus_data is function-scoped: it skips, or fails in CI, without the data)
    path = plus_data / SEQUENCE
    if "seq" not in _CACHE:
        _CACHE["seq"] = read_sequence(path)
    return path, _CACHE["seq"]


def collect(source, n: int) -> list:
    out = []
    while len(out) < n:
        item = source.get(timeout=20)
        assert item is not None, f"only {len(out)} of {n} frames arrived; stats {source.stats()}"
        out.append(item)
    return out


def assert_identical(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.pixels, w.pixels)
        assert g.pixels.dtype == w.pixels.dtype
        assert g.timestamp == w.timestamp
        assert g.index == w.index and g.image_status == w.image_status and g.fields == w.fields
        assert set(w.transforms) <= set(g.transforms)
        for name, m in w.transforms.items():
            np.testing.assert_array_equal(g.transforms[name], m)
            assert g.transform_status[name] == w.transform_status.get(name, True)


def test_replay_server_to_receiver_identical_to_file(recording):
    path, seq = recording
    with ReplayServer(path, port=0, rate=0, min_clients=1) as server:
        with IgtlFrameSource("127.0.0.1", server.port, config=ReceiverConfig(image_device="Image_Image")) as source:
            got = collect(source, len(seq.frames))
            assert server.done.wait(20) and server.frames_sent == len(seq.frames)
    assert_identical(got, seq.frames)


def test_after_the_end_of_a_replayed_file_the_source_stops_reconnecting(recording, caplog):
    """The replay server ends a file with EndOfStream and goes away: the source is finished, so its client
    must not keep knocking (make demo used to end on a 'cannot connect ... Connection refused' warning)."""
    path, seq = recording
    with ReplayServer(path, port=0, rate=0, min_clients=1) as server:
        source = IgtlFrameSource("127.0.0.1", server.port, config=ReceiverConfig(image_device="Image_Image"))
        with source:
            collect(source, len(seq.frames))
            assert source.wait_finished(20)
            source.client._thread.join(10)
            assert not source.client._thread.is_alive()  # stopped, not waiting to reconnect
    assert "cannot connect" not in caplog.text and source.client.stats.snapshot().get("connect_failures", 0) == 0


def test_version1_client_gets_plus_v1_stream_float32_transforms(recording):
    """A client that never sends version 2 gets version 1 (no metadata), as from PlusServer: transforms
    travel as float32 TRANSFORM messages and are paired with the images by timestamp."""
    path, seq = recording
    names = tuple(seq.frames[0].transforms)
    receiver = PlusReceiver(ReceiverConfig(image_device="Image_Image", transform_names=names))
    frames = []
    with ReplayServer(path, port=0, rate=0, min_clients=1) as server, Client("127.0.0.1", server.port) as client:
        while len(frames) < len(seq.frames):
            msg = client.get(timeout=20)
            assert msg is not None and msg.header_version == 1 and not msg.metadata
            frames += receiver.feed(msg)
    for g, w in zip(frames, seq.frames):
        np.testing.assert_array_equal(g.pixels, w.pixels)
        assert abs(g.timestamp - w.timestamp) < 2e-9 * 1000  # 32.32 fixed point: ~1 ns
        for name in names:
            np.testing.assert_array_equal(g.transforms[name], w.transforms[name].astype(np.float32))
    assert receiver.counts["exact"] == len(seq.frames) * len(names)


def test_embedded_image_to_reference_from_calibration(recording, plus_data):
    from usx_stream.io.plus_config import read_device_set

    path, seq = recording
    calibration = read_device_set(plus_data / DEVICE_SET).transform_repository()
    with ReplayServer(path, port=0, rate=0, min_clients=1, calibration=calibration) as server:
        with IgtlFrameSource("127.0.0.1", server.port) as source:  # default device Image_Reference
            got = collect(source, 3)
    for g, w in zip(got, seq.frames):
        expected = w.transform("ImageToReference", calibration)
        # axes travel as float32; the origin is rebuilt from the float32 image centre: ~1e-5 mm at 200 mm
        np.testing.assert_array_equal(g.transforms["ImageToReference"][:3, :3], expected[:3, :3].astype(np.float32))
        np.testing.assert_allclose(g.transforms["ImageToReference"], expected, rtol=0, atol=3e-5)


def test_in_process_replay_identical_and_looping(recording):
    path, seq = recording
    with SequenceReplay(path, rate=0) as source:
        got = list(source)
    assert_identical(got, seq.frames)
    n = len(seq.frames)
    with SequenceReplay(path, rate=2000.0, loop=True) as source:
        looped = collect(source, 2 * n + 3)
    times = [f.timestamp for f in looped]
    assert np.all(np.diff(times) > 0) and [f.index for f in looped] == list(range(2 * n + 3))
    np.testing.assert_array_equal(looped[n].pixels, seq.frames[0].pixels)
    assert looped[n].timestamp - looped[0].timestamp > seq.frames[-1].timestamp - seq.frames[0].timestamp


def test_a_node_recording_folder_replays_its_chunks_in_number_order(recording, tmp_path):
    """The node records 1 s chunks (inputs_NNNN.igs.mha): a session recorded in the OR runs through the node
    again as one stream, chunk 10000 after chunk 9999 (numbers, not names, give the order)."""
    from usx_stream.io.sequence import write_sequence
    from usx_stream.sources.replay import check_sequence

    _, seq = recording
    frames = seq.frames
    cut = [0, 7, 15, len(frames)]
    for number, (a, b) in zip((9998, 9999, 10000), zip(cut[:-1], cut[1:])):
        write_sequence(tmp_path / f"inputs_{number:04d}.igs.mha", frames[a:b])
    (tmp_path / "surfaces").mkdir()  # what else a recording folder holds is left alone
    assert check_sequence(tmp_path).frames == len(frames)
    with SequenceReplay(tmp_path, rate=0) as source:
        got = list(source)
    assert [f.timestamp for f in got] == [f.timestamp for f in frames]
    for g, w in zip(got, frames):
        np.testing.assert_array_equal(g.pixels, w.pixels)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_replay_and_listen(recording, capsys):
    path, seq = recording
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "usx_stream.cli", "replay", str(path), "--port", str(port),
                             "--rate", "0", "--wait-clients", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        with IgtlFrameSource("127.0.0.1", port, config=ReceiverConfig(image_device="Image_Image")) as source:
            got = collect(source, len(seq.frames))
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert f"sent {len(seq.frames)} frames" in out
    assert_identical(got, seq.frames)

    from usx_stream import cli

    with ReplayServer(path, port=0, rate=0, loop=True) as server:
        assert cli.main(["listen", "--port", str(server.port), "--frames", "--image-device", "Image_Image",
                         "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("frame ") for line in lines) == 3
    assert "ProbeToTracker" in lines[1] and lines[-1].startswith("stats:")


def test_paced_source_counts_drops_when_nobody_reads(recording):
    path, seq = recording
    with SequenceReplay(path, rate=1e6, queue_size=4) as source:  # paced (not rate 0): never blocks
        assert source.wait_finished(30)
        stats = source.stats()
        got = list(source)
    assert stats == {"emitted": 4, "dropped": len(seq.frames) - 4}
    assert [f.index for f in got] == [0, 1, 2, 3]


def test_source_error_reaches_the_consumer(tmp_path):
    bad = tmp_path / "broken.igs.mha"
    bad.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4\nElementDataFile = LOCAL\n")
    with SequenceReplay(bad, rate=0) as source:
        with pytest.raises(RuntimeError, match="SequenceReplay failed"):
            list(source)
    assert source.error is not None
    with pytest.raises(ValueError, match="rate"):
        SequenceReplay(bad, rate=-1)


def test_live_source_finishes_on_end_of_stream(recording):
    path, seq = recording
    with ReplayServer(path, port=0, rate=0, min_clients=1) as server:
        with IgtlFrameSource("127.0.0.1", server.port, config=ReceiverConfig(image_device="Image_Image")) as source:
            assert source.wait_finished(60)
            got = list(source)
    assert len(got) == len(seq.frames) and source.stats()["end_of_stream"] == 1
