"""Interop with the reference C++ OpenIGTLink library (Debian libopenigtlink-dev 1.11, header version 1).

A tiny peer (cpp/igtl_peer.cxx) is compiled with g++ into a temporary folder. It (1) sends IMAGE +
TRANSFORM like PlusServer, received by our receiver, and (2) unpacks our IMAGE, TRANSFORM, STRING and
POLYDATA with CRC checking on and prints the values, which must be identical to what we sent.
Skipped when the library or g++ is missing, unless USX_REQUIRE_INTEROP=1 or USX_REQUIRE_SHARED_DATA=1
(CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from usx_stream.frames import Surface
from usx_stream.igtl import ImageContent, Message
from usx_stream.igtl.codec import encode_bytes, timestamp_to_wire
from usx_stream.igtl.endpoints import Client, Server
from usx_stream.igtl.publisher import SurfacePublisher
from usx_stream.igtl.receiver import PlusReceiver, ReceiverConfig

pytestmark = pytest.mark.interop
SOURCE = Path(__file__).parent / "cpp" / "igtl_peer.cxx"


def _unavailable(msg: str):
    if os.environ.get("USX_REQUIRE_INTEROP") == "1" or os.environ.get("USX_REQUIRE_SHARED_DATA") == "1":
        pytest.fail(msg + " (USX_REQUIRE_INTEROP / USX_REQUIRE_SHARED_DATA is set)")
    pytest.skip(msg)


def _library_dirs() -> tuple[Path, Path] | None:
    """(include dir, library dir) of libopenigtlink-dev, from the package's file list or its CMake config."""
    files: list[str] = []
    try:
        files = subprocess.run(["dpkg", "-L", "libopenigtlink-dev"], capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pass
    config = Path("/usr/lib/openigtlink/OpenIGTLinkConfig.cmake")
    if config.exists():
        for line in config.read_text().splitlines():
            if "OpenIGTLink_INCLUDE_DIRS" in line or "OpenIGTLink_LIBRARY_DIRS" in line:
                files += [p for p in line.replace('"', " ").replace(")", " ").split() if p.startswith("/")]
    headers = [Path(f).parent for f in files if f.endswith("igtlMessageBase.h")]
    headers += [Path(f) for f in files if (Path(f) / "igtlMessageBase.h").exists()]
    libs = [Path(f).parent for f in files if Path(f).name.startswith("libOpenIGTLink.so")]
    libs += [Path(f) for f in files if Path(f).is_dir() and any(Path(f).glob("libOpenIGTLink.so*"))]
    return (headers[0], libs[0]) if headers and libs else None


@pytest.fixture(scope="module")
def peer(tmp_path_factory) -> Path:
    gxx = shutil.which("g++")
    dirs = _library_dirs()
    if gxx is None or dirs is None:
        _unavailable(f"g++ ({gxx}) or libopenigtlink-dev ({dirs}) not found")
    include, libdir = dirs
    exe = tmp_path_factory.mktemp("igtl_peer") / "igtl_peer"
    cmd = [gxx, "-O1", "-o", str(exe), str(SOURCE), f"-I{include}", f"-L{libdir}", "-lOpenIGTLink",
           f"-Wl,-rpath,{libdir}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building the C++ peer failed:\n{' '.join(cmd)}\n{result.stderr}")
    return exe


def test_cpp_plusserver_like_sender_received_by_our_receiver(peer):
    n = 5
    proc = subprocess.Popen([str(peer), "serve", str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split()[1])
        receiver = PlusReceiver(ReceiverConfig(transform_names=("ProbeToTracker", "ReferenceToTracker")))
        frames = []
        with Client("127.0.0.1", port) as client:  # no version-2 hello: this library speaks version 1 only
            while len(frames) < n:
                msg = client.get(timeout=20)
                assert msg is not None, f"{len(frames)} frames; {client.stats.snapshot()}"
                assert msg.header_version == 1
                frames += receiver.feed(msg)
            assert client.stats.snapshot()["rejected"] == {}
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    i, j = np.meshgrid(np.arange(64), np.arange(48))
    for f, frame in enumerate(frames):
        assert frame.timestamp == 1700000000 + f + f * 0.0625  # fraction 0x10000000 * f
        np.testing.assert_array_equal(frame.pixels, ((i + 2 * j + f) % 256).astype(np.uint8))
        expected = np.array([[0, -0.3, 0, 10 + f], [0.2, 0, 0, 20], [0, 0, 1, 30], [0, 0, 0, 1]])
        np.testing.assert_allclose(frame.transforms["ImageToReference"], expected, atol=2e-5)
        for k, name in enumerate(("ProbeToTracker", "ReferenceToTracker")):
            m = np.array([[0, -1, 0, 0.5 * f + k], [1, 0, 0, -0.25 * f], [0, 0, 1, 100 + k], [0, 0, 0, 1]])
            np.testing.assert_array_equal(frame.transforms[name], m)
            assert frame.transform_status[name]


def _parse(output: str) -> list[dict]:
    """The peer's lines grouped per message: {"MESSAGE": [...], "IMAGE": [...], ...}."""
    messages: list[dict] = []
    for line in output.splitlines():
        key, _, rest = line.partition(" ")
        if key == "MESSAGE":
            messages.append({})
        messages[-1][key] = rest
    return messages


def _floats(text: str, skip: int = 0) -> np.ndarray:
    return np.array(text.split()[skip:], dtype=np.float32)


def test_our_messages_unpacked_by_cpp_with_crc_check(peer):
    rng = np.random.default_rng(0)
    volume = rng.integers(-3000, 3000, (3, 5, 7), dtype=np.int16)
    ijk = np.array([[0.0, -0.5, 0.0, 1.25], [0.25, 0.0, 0.0, -2.5], [0.0, 0.0, 2.0, 3.0], [0, 0, 0, 1]])
    matrix = np.array([[0.0, -1.0, 0.0, 1.5], [1.0, 0.0, 0.0, -2.25], [0.0, 0.0, 1.0, 123.456], [0, 0, 0, 1]])
    text = "PLUS-like reply: ✓ done"
    surface = Surface(rng.normal(size=(12, 3)) * 10, rng.integers(0, 12, (8, 3)), rng.normal(size=(12, 3)),
                      name="L2_Completed", timestamp=1700000003.25)
    with Server(port=0, match_peer_version=False) as server, SurfacePublisher(port=0, header_version=1) as pub:
        proc = subprocess.Popen([str(peer), "receive", "127.0.0.1", str(server.port), "3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert server.wait_for_clients(1, 20)
        server.broadcast(Message("IMAGE", "Volume", ImageContent(volume, ijk), 1700000001.5))
        bad = bytearray(encode_bytes(Message("TRANSFORM", "Corrupted", matrix, 1700000002.0)))
        bad[-1] ^= 0xFF  # last content byte: the CRC no longer matches
        server.connections[0].send_encoded([bytes(bad)])
        server.broadcast(Message("TRANSFORM", "ProbeToTracker", matrix, 1700000002.125))
        out, err = proc.communicate(timeout=30)
        # the first peer has exited: wait until the server has dropped its connection, or the STRING below
        # could go to that closed connection alone and the second peer would wait for it forever
        deadline = time.monotonic() + 20
        while server.client_count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.client_count == 0
        proc2 = subprocess.Popen([str(peer), "receive", "127.0.0.1", str(server.port), "1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert server.wait_for_clients(1, 20)
        server.broadcast(Message("STRING", "Reply", text, 1700000002.75))
        out += proc2.communicate(timeout=30)[0]
        proc3 = subprocess.Popen([str(peer), "receive", "127.0.0.1", str(pub.port), "1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert pub.endpoint.wait_for_clients(1, 20)
        pub.publish(surface)
        out += proc3.communicate(timeout=30)[0]
    msgs = _parse(out)
    assert [m["MESSAGE"].split()[:2] for m in msgs] == [["IMAGE", "Volume"], ["TRANSFORM", "Corrupted"],
                                                         ["TRANSFORM", "ProbeToTracker"], ["STRING", "Reply"],
                                                         ["POLYDATA", "L2_Completed"]], out
    # IMAGE: every voxel, spacing, axes and the centre position, bit for bit (float32 printed with %.9g)
    image = msgs[0]
    assert image["IMAGE"].split()[1:] == ["type", "4", "comps", "1", "endian", "2", "coord", "1", "dims", "7", "5", "3"]
    assert list(map(int, image["MESSAGE"].split()[2:])) == list(timestamp_to_wire(1700000001.5))
    np.testing.assert_array_equal(np.array(image["bytes"].split(), dtype=np.uint8), np.frombuffer(volume.astype("<i2").tobytes(), np.uint8))
    spacing = np.linalg.norm(ijk[:3, :3], axis=0)
    np.testing.assert_array_equal(_floats(image["spacing"]), spacing.astype(np.float32))
    normals = (ijk[:3, :3] / spacing).T.reshape(-1)
    np.testing.assert_allclose(_floats(image["normals"]), normals.astype(np.float32), atol=1e-7)
    centre = ijk @ np.array([3.0, 2.0, 1.0, 1.0])
    np.testing.assert_array_equal(_floats(image["origin"]), centre[:3].astype(np.float32))
    # the corrupted message is refused by the C++ CRC check; the next one is read intact
    assert "UNPACK_FAILED" in msgs[1]
    np.testing.assert_array_equal(_floats(msgs[2]["TRANSFORM"], 2).reshape(4, 4), matrix.astype(np.float32))
    assert msgs[3]["STRING"].split()[-1] == "106" and msgs[3]["text"] == text
    poly = msgs[4]
    np.testing.assert_array_equal(_floats(poly["points"], 1).reshape(-1, 3), surface.vertices_mm.astype(np.float32))
    cells = np.array(poly["polygons"].split(), dtype=np.int64)
    assert cells[0] == len(surface.triangles)
    np.testing.assert_array_equal(cells[1:].reshape(-1, 4)[:, 1:], surface.triangles)
    assert np.all(cells[1:].reshape(-1, 4)[:, 0] == 3)
    attr = poly["attribute"].split()
    assert attr[:7] == ["Normals", "type", "2", "comps", "3", "n", "12"]
    np.testing.assert_array_equal(np.array(attr[8:], dtype=np.float32).reshape(-1, 3), surface.normals.astype(np.float32))


def test_uncertainty_point_scalar_read_by_cpp(peer):
    """The reference library reads ``uncertainty_mm`` as a point scalar (type 0) of one component per vertex."""
    rng = np.random.default_rng(1)
    surface = Surface(rng.normal(size=(10, 3)) * 10, rng.integers(0, 10, (6, 3)), rng.normal(size=(10, 3)),
                      name="L5_Completed", timestamp=1700000004.0,
                      point_data={"uncertainty_mm": rng.uniform(0.0, 3.0, 10).astype(np.float32)})
    with SurfacePublisher(port=0, header_version=1) as pub:
        proc = subprocess.Popen([str(peer), "receive", "127.0.0.1", str(pub.port), "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert pub.endpoint.wait_for_clients(1, 20)
        pub.publish(surface)
        out = proc.communicate(timeout=30)[0]
    attrs = {line.split()[1]: line.split()[2:] for line in out.splitlines() if line.startswith("attribute ")}
    assert "UNPACK_FAILED" not in out and set(attrs) == {"Normals", "uncertainty_mm"}, out
    assert attrs["uncertainty_mm"][:6] == ["type", "0", "comps", "1", "n", "10"]
    np.testing.assert_array_equal(np.array(attrs["uncertainty_mm"][7:], dtype=np.float32),
                                  surface.point_data["uncertainty_mm"])
