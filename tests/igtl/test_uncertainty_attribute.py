"""Per-vertex ``uncertainty_mm`` on the wire: a POLYDATA point scalar attribute (big-endian float32, type 0x00,
one component) read by a real OpenIGTLink client over 127.0.0.1, and an extra ZeroMQ array of the same name."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from usx_stream.frames import Surface
from usx_stream.igtl.codec_polydata import POLY_HEAD, encode_polydata
from usx_stream.igtl.endpoints import Client
from usx_stream.igtl.publisher import SurfacePublisher, message_to_surface, surface_to_message
from usx_stream.igtl.zmq_publisher import ZmqSurfacePublisher, decode_surface, encode_surface


def make_surface(with_uncertainty: bool = True) -> Surface:
    rng = np.random.default_rng(3)
    v = rng.normal(size=(25, 3)) * 20
    surface = Surface(v, rng.integers(0, 25, size=(30, 3)), rng.normal(size=(25, 3)), name="L4_Completed",
                      metadata={"fusion": "multimodal", "uncertainty_mean_mm": 1.2}, timestamp=1700000000.25)
    if with_uncertainty:
        surface.point_data["uncertainty_mm"] = rng.uniform(0.0, 4.0, 25).astype(np.float32)
    return surface


def test_real_client_decodes_one_finite_non_negative_value_per_vertex():
    surface = make_surface()
    with SurfacePublisher(port=0) as pub:
        client = Client("127.0.0.1", pub.port).start()
        try:
            assert pub.endpoint.wait_for_clients(1, 10)
            assert pub.publish(surface) == 1
            msg = client.get(timeout=10)
        finally:
            client.stop()
    assert msg.type == "POLYDATA"
    attr = msg.content.attribute("uncertainty_mm")
    assert attr is not None and attr.kind == "scalar" and not attr.on_cells
    assert attr.data.shape == (len(surface.vertices_mm), 1)
    assert np.isfinite(attr.data).all() and (attr.data >= 0).all()
    np.testing.assert_array_equal(attr.data[:, 0], surface.point_data["uncertainty_mm"])
    got = message_to_surface(msg)
    np.testing.assert_array_equal(got.point_data["uncertainty_mm"], surface.point_data["uncertainty_mm"])
    assert got.metadata["uncertainty_mean_mm"] == "1.2"


def test_attribute_layout_on_the_wire():
    surface = make_surface()
    content = b"".join(bytes(p) for p in encode_polydata(surface_to_message(surface).content))
    head = POLY_HEAD.unpack_from(content)
    n_points, n_attr = head[0], head[9]
    assert (n_points, n_attr) == (25, 2)
    pos = POLY_HEAD.size + 12 * n_points + sum(head[2:9:2])
    heads = [struct.unpack_from(">BBI", content, pos + 6 * i) for i in range(n_attr)]
    assert heads == [(0x02, 3, 25), (0x00, 1, 25)]          # normals, then the point scalar
    names = content[pos + 12:pos + 12 + len(b"Normals\0uncertainty_mm\0")]
    assert names == b"Normals\0uncertainty_mm\0"                # 23 bytes: one pad byte follows
    values = np.frombuffer(content[-4 * 25:], ">f4")
    np.testing.assert_array_equal(values, surface.point_data["uncertainty_mm"])


def test_no_uncertainty_no_attribute_and_bad_length_refused():
    msg = surface_to_message(make_surface(with_uncertainty=False))
    assert [a.name for a in msg.content.attributes] == ["Normals"]
    surface = make_surface()
    surface.point_data["uncertainty_mm"] = surface.point_data["uncertainty_mm"][:-1]
    with pytest.raises(ValueError, match="uncertainty_mm"):
        surface_to_message(surface)
    with pytest.raises(ValueError, match="uncertainty_mm"):
        encode_surface(surface)


def test_zmq_message_carries_uncertainty_mm():
    zmq = pytest.importorskip("zmq")
    import json

    surface = make_surface()
    parts = encode_surface(surface)
    header = json.loads(parts[1])
    assert header["arrays"][-1] == {"name": "uncertainty_mm", "dtype": "<f4", "shape": [25]}
    assert decode_surface(encode_surface(make_surface(False))).point_data == {}
    with ZmqSurfacePublisher("tcp://127.0.0.1:*") as pub:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"surface/")
        sub.setsockopt(zmq.RCVTIMEO, 200)
        sub.connect(pub.endpoint)
        got = None
        for _ in range(100):  # PUB/SUB drops until the subscription has propagated
            pub.publish(surface)
            try:
                got = sub.recv_multipart()
                break
            except zmq.Again:
                continue
        sub.close(linger=0)
    assert got is not None
    decoded = decode_surface(got)
    np.testing.assert_array_equal(decoded.point_data["uncertainty_mm"], surface.point_data["uncertainty_mm"])
    np.testing.assert_array_equal(decoded.vertices_mm, surface.vertices_mm.astype(np.float32))
