"""Bad input over a real socket: >= 10,000 malformed messages interleaved with valid ones.

Every valid message must arrive, in order and intact; every malformed one must be counted exactly once
with a reason from the family its corruption belongs to; nothing crashes and memory stays bounded.
"""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest

from usx_stream.igtl import ImageContent, Message, PointItem, PolyData, StatusContent
from usx_stream.igtl.codec import HEADER, HEADER_SIZE, encode_bytes
from usx_stream.igtl.crc import crc64
from usx_stream.igtl.endpoints import Server
from usx_stream.igtl.framing import StreamParser
from usx_stream.igtl.transport import TransportOptions

N_MALFORMED = 10_000
LIMIT = 1 << 20  # max_body_bytes for this test

# corruption kind -> reasons it may legitimately be reported as (a truncated header, for instance, is
# read together with the next message's first bytes, so its size field decides how it fails)
FRAMING = {"bad_header_version", "body_too_large", "crc_mismatch", "truncated"}
EXPECTED = {
    "truncated_header": FRAMING,
    "truncated_body": FRAMING,
    "wrong_body_size": FRAMING,
    "bad_crc": {"crc_mismatch"},
    "unknown_type": {"unknown_type"},
    "huge_size": {"body_too_large"},
    "bad_version": {"bad_header_version"},
    "bad_metadata": {"bad_metadata"},
    "bad_extended_header": {"bad_extended_header"},
    "bad_device_name": {"bad_device_name"},
    "bad_type_name": {"bad_type_name"},
    "bad_content": {"bad_content"},
}


def valid_message(i: int, rng: np.random.Generator) -> Message:
    kind = i % 6
    name = f"dev{i}"
    version = 1 + (i % 2)
    meta = {"Index": str(i)} if version == 2 else {}
    if kind == 0:
        content = np.eye(4)
        content[:3, 3] = rng.normal(size=3)
        return Message("TRANSFORM", name, content, 1000.0 + i, meta, version)
    if kind == 1:
        return Message("IMAGE", name, ImageContent.from_2d(rng.integers(0, 255, (8, 12), dtype=np.uint8)), 1000.0 + i, meta, version)
    if kind == 2:
        return Message("STRING", name, f"text {i} " * (i % 5), 1000.0 + i, meta, version)
    if kind == 3:
        return Message("STATUS", name, StatusContent(1, i, "", f"s{i}"), 1000.0 + i, meta, version)
    if kind == 4:
        return Message("POINT", name, [PointItem(f"p{i}", rng.normal(size=3), rgba=(255, 255, 255, 255))], 1000.0 + i, meta, version)
    return Message("POLYDATA", name, PolyData.from_triangles(rng.normal(size=(4, 3)), [[0, 1, 2], [0, 2, 3]]), 1000.0 + i, meta, version)


def _reframe(header: bytes, body: bytes, *, version=None, type_=None, name=None) -> bytes:
    v, t, n, s, f, _, _ = HEADER.unpack(header)
    v = v if version is None else version
    t = t if type_ is None else type_.ljust(12, b"\0")
    n = n if name is None else name.ljust(20, b"\0")[:20]
    return HEADER.pack(v, t, n, s, f, len(body), crc64(body)) + body


def malformed(kind: str, raw: bytes, rng: np.random.Generator) -> bytes:
    """Corrupt the valid encoding ``raw`` according to ``kind``."""
    header, body = raw[:HEADER_SIZE], raw[HEADER_SIZE:]
    if kind == "truncated_header":
        return header[: int(rng.integers(1, HEADER_SIZE))]
    if kind == "truncated_body":
        return raw[: HEADER_SIZE + int(rng.integers(0, len(body)))]
    if kind == "wrong_body_size":
        delta = int(rng.choice([-3, -1, 1, 2, 7, 64]))
        size = max(0, len(body) + delta)
        return header[:42] + struct.pack(">Q", size) + header[50:] + body
    if kind == "bad_crc":
        return header[:50] + struct.pack(">Q", crc64(body) ^ 0x1) + body
    if kind == "unknown_type":
        return _reframe(header, body, type_=b"NOSUCHTYPE")
    if kind == "huge_size":
        return header[:42] + struct.pack(">Q", 1 << 40) + header[50:] + body[:16]
    if kind == "bad_version":
        return bytes([0, int(rng.choice([0, 3, 9]))]) + raw[2:]
    if kind == "bad_metadata":  # version 2 body whose metadata count claims more entries than present
        v2 = encode_bytes(Message("STRING", "meta", "x", 5.0, {"Key": "Value"}, 2))
        b = bytearray(v2[HEADER_SIZE:])
        end = len(b) - struct.unpack_from(">H", b, 2)[0] - struct.unpack_from(">I", b, 4)[0]
        struct.pack_into(">H", b, end, 3)
        return _reframe(v2[:HEADER_SIZE], bytes(b))
    if kind == "bad_extended_header":
        v2 = encode_bytes(Message("STRING", "ext", "x", 5.0, {"K": "V"}, 2))
        b = bytearray(v2[HEADER_SIZE:])
        struct.pack_into(">I", b, 4, 10_000)  # metadata size larger than the body
        return _reframe(v2[:HEADER_SIZE], bytes(b))
    if kind == "bad_device_name":
        return _reframe(header, body, name=rng.choice([b"bad\x01name", b"caf\xe9", b"a\0b"]))
    if kind == "bad_type_name":
        return _reframe(header, body, type_=b"IM\x7fAGE")
    if kind == "bad_content":  # a TRANSFORM whose content is 4 bytes short, correctly framed
        t = encode_bytes(Message("TRANSFORM", "short", np.eye(4), 5.0))
        return _reframe(t[:HEADER_SIZE], t[HEADER_SIZE:-4])
    raise ValueError(kind)


def build_stream(seed: int = 0):
    rng = np.random.default_rng(seed)
    kinds = list(EXPECTED)
    chunks, valid, bad_kinds = [], [], []
    for i in range(N_MALFORMED):
        msg = valid_message(i, rng)
        raw = encode_bytes(msg)
        chunks.append(raw)
        valid.append(msg)
        kind = kinds[i % len(kinds)]
        bad_kinds.append(kind)
        chunks.append(malformed(kind, raw, rng))
    last = valid_message(N_MALFORMED, rng)  # a valid message after the last malformed one
    chunks.append(encode_bytes(last))
    valid.append(last)
    return b"".join(chunks), valid, bad_kinds


def assert_same(got: Message, want: Message) -> None:
    assert (got.type, got.device_name, got.header_version) == (want.type, want.device_name, want.header_version)
    assert got.metadata == want.metadata
    assert got.timestamp == pytest.approx(want.timestamp, abs=1e-6)
    if want.type == "TRANSFORM":
        np.testing.assert_allclose(got.content, want.content, atol=1e-6)
    elif want.type == "IMAGE":
        np.testing.assert_array_equal(got.content.voxels, want.content.voxels)
    elif want.type in ("STRING",):
        assert got.content == want.content
    elif want.type == "STATUS":
        assert (got.content.subcode, got.content.message) == (want.content.subcode, want.content.message)
    elif want.type == "POINT":
        assert got.content[0].name == want.content[0].name
    else:
        np.testing.assert_array_equal(got.content.polygons, want.content.polygons)


def test_fuzz_over_socket_every_valid_delivered_every_invalid_counted():
    stream, valid, bad_kinds = build_stream()
    options = TransportOptions(max_body_bytes=LIMIT, inbound_queue=len(valid) + 10, peer_timeout_s=0,
                               keepalive_interval_s=0)
    with Server(port=0, options=options) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(stream)
        # The server side sees the close after reading everything; its connection then leaves the list.
        assert server.wait_for_clients(1, timeout=30) or server.stats.snapshot().get("connects")
        with server._cond:
            assert server._cond.wait_for(lambda: not server.connections, timeout=60)
        got = []
        while (msg := server.get(timeout=0)) is not None:
            got.append(msg)
        stats = server.stats.snapshot()
    assert len(got) == len(valid)
    for g, w in zip(got, valid):
        assert_same(g, w)
    assert sum(stats["rejected"].values()) == N_MALFORMED, stats["rejected"]
    allowed = set().union(*EXPECTED.values())
    assert set(stats["rejected"]) <= allowed
    # kinds with a single possible reason are counted exactly
    for kind, reasons in EXPECTED.items():
        if len(reasons) == 1:
            (reason,) = reasons
            n_kind = sum(1 for k in bad_kinds if k == kind)
            assert stats["rejected"].get(reason, 0) >= n_kind, (kind, stats["rejected"])
    # memory bounded: the receive buffer never grew past one maximal message plus one read; the queue
    # is bounded by its configured depth
    assert stats["peak_receive_buffer_bytes"] <= LIMIT + HEADER_SIZE + (1 << 20)
    assert stats["closed"] == {"peer closed": 1}


def test_parser_resynchronises_byte_by_byte():
    """Feeding one byte at a time gives the same result as one big read (no dependence on read sizes)."""
    rng = np.random.default_rng(5)
    msgs = [valid_message(i, rng) for i in range(30)]
    raws = [encode_bytes(m) for m in msgs]
    stream = b"".join(r + malformed(k, r, rng) for r, k in zip(raws, ["truncated_header", "wrong_body_size", "bad_crc"] * 10))
    stream += raws[0]
    parser = StreamParser(max_body_bytes=LIMIT)
    items = []
    for b in stream:
        parser.feed(bytes([b]))
        items += list(parser.frames())
    items += list(parser.finish())
    good = [i for i in items if isinstance(i, tuple)]
    bad = [i for i in items if not isinstance(i, tuple)]
    assert len(good) == 31 and len(bad) == 30
    assert parser.pending_bytes == 0
