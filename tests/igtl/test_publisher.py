"""Surface publishing: POLYDATA to every client or to a server, and the ZeroMQ multipart schema."""

from __future__ import annotations

import time

import numpy as np
import pytest

from usx_stream.frames import Surface
from usx_stream.igtl.codec import Message
from usx_stream.igtl.endpoints import Client, Server
from usx_stream.igtl.publisher import SurfacePublisher, message_to_surface
from usx_stream.igtl.zmq_publisher import ZmqSurfacePublisher, decode_surface, encode_surface


def make_surface(name: str = "L1_Completed", seed: int = 0) -> Surface:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(30, 3)) * 20
    t = rng.integers(0, 30, size=(40, 3))
    n = rng.normal(size=(30, 3))
    return Surface(v, t, n, frame="Reference", name=name, metadata={"fusion": "us_xray"}, timestamp=1700000000.5)


def assert_surface_equal(got: Surface, want: Surface) -> None:
    np.testing.assert_array_equal(got.vertices_mm, want.vertices_mm.astype(np.float32))  # float32 on the wire
    np.testing.assert_array_equal(got.triangles, want.triangles)
    np.testing.assert_array_equal(got.normals, want.normals.astype(np.float32))
    assert (got.name, got.frame, got.metadata) == (want.name, want.frame, want.metadata)
    assert got.timestamp == pytest.approx(want.timestamp, abs=1e-6)


def test_publish_to_every_connected_client():
    with SurfacePublisher(port=0) as pub:
        clients = [Client("127.0.0.1", pub.port).start() for _ in range(2)]
        assert pub.endpoint.wait_for_clients(2, 10)
        surfaces = [make_surface(f"L{k}_Completed", k) for k in range(1, 6)]
        for s in surfaces:
            assert pub.publish(s) == 2
        for c in clients:
            got = [c.get(timeout=10) for _ in surfaces]
            for msg, want in zip(got, surfaces):
                assert msg.type == "POLYDATA" and msg.metadata["MRMLNodeName"] == want.name
                assert_surface_equal(message_to_surface(msg), want)
            c.stop()


def test_publish_to_a_server_and_long_names():
    name = "L3_Completed_with_a_long_name"
    with Server(port=0) as slicer, SurfacePublisher(role="client", port=slicer.port) as pub:
        assert pub.endpoint.wait_connected(10)
        assert pub.publish(make_surface(name)) == 1
        msg = slicer.get(timeout=10)
        assert msg.device_name == name and msg.metadata["IGTL_DEVICE_NAME"] == name
        assert_surface_equal(message_to_surface(msg), make_surface(name))


def test_surface_without_name_rejected():
    with pytest.raises(ValueError, match="Surface.name"):
        from usx_stream.igtl.publisher import surface_to_message

        surface_to_message(make_surface(""))


def test_zmq_schema_roundtrip_and_pub_sub():
    zmq = pytest.importorskip("zmq")
    s = make_surface()
    parts = encode_surface(s)
    assert parts[0] == b"surface/L1_Completed"
    assert_surface_equal(decode_surface(parts), s)
    with pytest.raises(ValueError, match="arrays listed"):
        decode_surface(parts[:-1])
    with ZmqSurfacePublisher("tcp://127.0.0.1:*") as pub:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"surface/")
        sub.setsockopt(zmq.RCVTIMEO, 200)
        sub.connect(pub.endpoint)
        got = None
        for _ in range(100):  # PUB/SUB drops until the subscription has propagated: publish until one arrives
            pub.publish(s)
            try:
                got = sub.recv_multipart()
                break
            except zmq.Again:
                continue
        sub.close(linger=0)
    assert got is not None
    assert_surface_equal(decode_surface(got), s)


def test_status_line_and_landmarks_travel_both_ways_with_the_inbound_queue_bounded(caplog):
    from usx_stream.igtl.codec_basic import PointItem

    with SurfacePublisher(port=0, device_prefix="USX_") as pub:
        client = Client("127.0.0.1", pub.port).start()
        try:
            assert pub.endpoint.wait_for_clients(1, timeout=10)
            assert pub.publish_status("L1\u2013L5 multimodal") == 1
            msg = client.get(timeout=10)
            assert (msg.type, msg.device_name, msg.content) == ("STRING", "USX_Status", "L1\u2013L5 multimodal")
            pub.publish(make_surface("L2_Completed"))
            assert client.get(timeout=10).device_name == "USX_L2_Completed"
            points = [PointItem("L3", np.array([1.0, 2.0, 3.0])), PointItem("not a level", np.zeros(3)),
                      PointItem("l4 centre", np.array([4.0, 5.0, 6.0]))]
            sent = 0
            for _ in range(60):   # a flood of valid POINTs: at most the queue depth is kept
                assert client.wait_connected(timeout=10)
                sent += client.send(Message("POINT", "F", points, None, {}, 2))
            assert sent == 60
            client.send(Message("STRING", "Done", "x", None, {}, 2))
            deadline = time.monotonic() + 20
            def done(st):
                return st.get("dropped_inbound", 0) >= 60 - 16 and st.get("discarded_inbound", 0) >= 1

            while not done(pub.endpoint.stats.snapshot()) and time.monotonic() < deadline:
                time.sleep(0.01)
            stats = pub.endpoint.stats.snapshot()
            assert len(pub.endpoint.inbound) == 16 and stats.get("dropped_inbound", 0) == 60 - 16, stats
            assert stats.get("discarded_inbound", 0) >= 1, stats   # the STRING: not kept
            got = pub.take_landmarks()
            assert set(got) == {"L3", "L4"}
            np.testing.assert_allclose(got["L4"], [4.0, 5.0, 6.0])
            # a point the node cannot use is named once, not once per message (16 were kept)
            told = [r.getMessage() for r in caplog.records if "ignored: level landmarks" in r.getMessage()]
            assert len(told) == 1 and "['not a level']" in told[0], told
        finally:
            client.stop()


def test_both_outputs_implement_the_one_publisher_interface():
    from usx_stream.igtl.publishing import Publisher

    with SurfacePublisher(port=0) as pub, ZmqSurfacePublisher("tcp://127.0.0.1:*") as zpub:
        assert isinstance(pub, Publisher) and isinstance(zpub, Publisher)
        assert zpub.take_landmarks() == {} and pub.take_landmarks() == {}
