"""Large bodies are read into a buffer of their own: results must not depend on how the stream is cut."""

from __future__ import annotations

import struct

import numpy as np

from usx_stream.igtl import ImageContent, Message, codec
from usx_stream.igtl.codec import HEADER_SIZE, encode_bytes
from usx_stream.igtl.crc import crc64
from usx_stream.igtl.framing import Rejection, StreamParser

LIMIT = 4 << 20


def big_image(i: int, rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 255, (300, 400), dtype=np.uint8)  # 120 kB body: over the direct-read size
    return encode_bytes(Message("IMAGE", f"img{i}", ImageContent.from_2d(pixels), 100.0 + i))


def build_stream(seed: int = 0):
    """Large images and small messages, with every kind of framing damage done to large ones."""
    rng = np.random.default_rng(seed)
    chunks, good = [], []
    for i in range(24):
        raw = big_image(i, rng)
        small = encode_bytes(Message("STRING", f"s{i}", f"small {i}", 50.0 + i))
        chunks += [raw, small]
        good += [raw, small]
        header, body = raw[:HEADER_SIZE], raw[HEADER_SIZE:]
        kind = i % 4
        if kind == 0:  # bad CRC on a large body
            chunks.append(header[:50] + struct.pack(">Q", crc64(body) ^ 1) + body)
        elif kind == 1:  # large message cut short, a good one right behind it
            chunks.append(raw[: HEADER_SIZE + len(body) // 2])
        elif kind == 2:  # declared size too small by a few bytes
            chunks.append(header[:42] + struct.pack(">Q", len(body) - 3) + header[50:] + body)
        else:  # bad device name on an otherwise valid large message
            chunks.append(header[:14] + b"bad\x01".ljust(20, b"\0") + header[34:] + body)
    last = big_image(99, rng)
    chunks.append(last)
    good.append(last)
    return b"".join(chunks), good


def parse(stream: bytes, reads) -> tuple[list, list, int]:
    """Parse as the transport does: each read fills at most ``reads[k]`` bytes of the parser's writable view
    (like ``recv_into``), then every complete frame is taken; with no ``reads``, one ``feed`` of everything."""
    parser = StreamParser(max_body_bytes=LIMIT)
    items, pos, k = [], 0, 0
    if not reads:
        parser.feed(stream)
        pos = len(stream)
    while pos < len(stream):
        view = parser.writable()
        n = min(len(view), reads[k % len(reads)], len(stream) - pos)
        view[:n] = stream[pos:pos + n]
        parser.commit(n)
        items += list(parser.frames())
        pos, k = pos + n, k + 1
    items += list(parser.frames())
    items += list(parser.finish())
    assert parser.pending_bytes == 0
    good = [(h.device_name, bytes(b)) for h, b in (i for i in items if isinstance(i, tuple))]
    bad = [(r.reason, r.offset) for r in items if isinstance(r, Rejection)]
    return good, bad, parser.bytes_skipped


def test_large_bodies_same_result_whatever_the_read_sizes():
    stream, good = build_stream()
    want = [(codec.parse_header(r[:HEADER_SIZE]).device_name, r[HEADER_SIZE:]) for r in good]
    whole = parse(stream, [])
    assert whole[0] == want
    assert len(whole[1]) == 24  # exactly one rejection per damaged message
    rng = np.random.default_rng(1)
    for max_read in (13, 1000, 70_000, 1 << 20):
        reads = rng.integers(1, max_read + 1, 1000).tolist()
        assert parse(stream, reads) == whole, max_read


def test_large_body_read_into_its_own_buffer_through_a_socket_sized_view():
    """The parser hands out views no larger than what is missing of a large body, and the body it yields
    is exactly that message's bytes (the decoded pixels need no further copy)."""
    rng = np.random.default_rng(2)
    raw = big_image(0, rng)
    parser = StreamParser(max_body_bytes=LIMIT)
    pos, sizes = 0, []
    while pos < len(raw):
        view = parser.writable()
        n = min(len(view), len(raw) - pos)
        view[:n] = raw[pos:pos + n]
        parser.commit(n)
        sizes.append(len(view))
        pos += n
    ((header, body),) = list(parser.frames())
    assert sizes[-1] == len(raw) - pos + n  # the last view ended exactly at the end of the message
    assert len(body) == header.body_size and bytes(body) == raw[HEADER_SIZE:]
    msg = codec.decode_body(header, memoryview(body))
    assert np.shares_memory(msg.content.voxels, np.frombuffer(body, np.uint8))
