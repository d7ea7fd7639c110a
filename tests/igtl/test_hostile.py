"""Hostile peers over real sockets on 127.0.0.1: a POLYDATA port flooded by its clients, clients at the
limit, the allow-list, and a PlusServer-like server whose header declares a body that never comes.
Waits are on events (sockets closing, messages arriving); timeouts are safety bounds only."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from igtl_hostile import HostilePlusServer, declared_header, flood_declared, flood_valid, frame_index
from usx_stream.frames import Surface
from usx_stream.igtl import ImageContent, Message, codec
from usx_stream.igtl.codec import HEADER_SIZE, encode_bytes
from usx_stream.igtl.codec_basic import StatusContent
from usx_stream.igtl.endpoints import Client, Server, hello_message, is_allowed, parse_allow_list
from usx_stream.igtl.framing import Rejection, StreamParser
from usx_stream.igtl.publisher import SurfacePublisher
from usx_stream.igtl.transport import PUBLISH_ONLY_MAX_BODY, TransportOptions

SAFETY_S = 20.0


def surface(name: str = "L1_Completed") -> Surface:
    verts = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], float)
    return Surface(vertices_mm=verts, triangles=np.array([[0, 1, 2], [0, 1, 3]]), name=name)


def wait_all_served(server: Server, connects: int) -> None:
    """Block until ``connects`` connections were accepted in all and every one has ended."""
    with server._cond:  # notified on every connection change
        assert server._cond.wait_for(
            lambda: server.stats.snapshot().get("connects", 0) >= connects and not server.connections, SAFETY_S)


def closed_by_peer(sock: socket.socket) -> bool:
    """Block until the server closes ``sock`` (True), reading and dropping anything it sends first."""
    sock.settimeout(SAFETY_S)
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass  # closed with our unread bytes still queued on its side: a reset
    except socket.timeout:
        return False
    return True


def connect_from(source: str, port: int) -> socket.socket:
    """A client socket bound to ``source`` (any 127.x.y.z address is local on Linux)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def next_polydata(sock: socket.socket, parser: StreamParser) -> Message:
    """Read ``sock`` until a POLYDATA message arrives (keep-alives skipped)."""
    sock.settimeout(SAFETY_S)
    while True:
        for item in parser.frames():
            if not isinstance(item, Rejection):
                msg = codec.decode_body(*item)
                if msg.type == "POLYDATA":
                    return msg
        n = sock.recv_into(parser.writable())
        assert n, "the server closed the connection"
        parser.commit(n)


# -- the POLYDATA port ------------------------------------------------------------------------------------
def test_publisher_discards_what_clients_send_and_holds_no_more_than_one_small_buffer_each():
    with SurfacePublisher(role="server", port=0) as pub:
        server = pub.endpoint
        # many valid small messages (STATUS, as a viewer might send): counted, never queued
        sock = socket.create_connection(("127.0.0.1", pub.port))
        status = encode_bytes(Message("STATUS", "Viewer", StatusContent(message="x" * 1000), 1.0))
        sock.sendall(status * 2000)
        sock.close()
        wait_all_served(server, 1)
        stats = server.stats.snapshot()
        assert stats["discarded_inbound"] == 2000
        assert len(server.inbound) == 0 and stats.get("delivered", 0) == 0
        # valid 16 MiB IMAGEs: each connection is closed at the header, nothing of the body is kept
        sent, connections = flood_valid(pub.port, n_messages=6, clients=2, body_mib=16)
        wait_all_served(server, 1 + connections)
        stats = server.stats.snapshot()
        assert sent < 6  # the server cut the senders off
        assert stats["rejected"]["body_too_large"] >= 2
        assert stats["closed"][f"declared body over the {PUBLISH_ONLY_MAX_BODY} byte limit"] >= 2
        # the endpoint's own accounting: one receive buffer of ~128 KiB was ever held per connection
        assert stats["peak_receive_buffer_bytes"] <= 2 * PUBLISH_ONLY_MAX_BODY + HEADER_SIZE
        assert len(server.inbound) == 0 and server.buffered_bytes == 0


def test_clients_declaring_huge_bodies_are_cut_off_before_any_allocation_and_slicer_still_served():
    with SurfacePublisher(role="server", port=0, max_clients=16) as pub:
        socks = flood_declared(pub.port, clients=16, declared=64 << 20, sent_kib=16)
        assert all(closed_by_peer(s) for s in socks)
        for s in socks:
            s.close()
        wait_all_served(pub.endpoint, 16)
        stats = pub.endpoint.stats.snapshot()
        assert stats["rejected"]["body_too_large"] == 16
        assert stats["peak_receive_buffer_bytes"] <= 2 * PUBLISH_ONLY_MAX_BODY + HEADER_SIZE  # never 64 MiB
        slicer = Client("127.0.0.1", pub.port).start()
        try:
            assert slicer.wait_connected(SAFETY_S) and pub.endpoint.wait_for_clients(1, SAFETY_S)
            assert pub.publish(surface()) == 1
            msg = slicer.get(timeout=SAFETY_S)
            assert msg is not None and msg.type == "POLYDATA" and msg.device_name == "L1_Completed"
        finally:
            slicer.stop()


def test_at_the_limit_a_flooding_host_evicts_its_own_connections_and_slicer_gets_back_in():
    with SurfacePublisher(role="server", port=0, max_clients=4) as pub:
        slicer = connect_from("127.0.0.2", pub.port)
        assert pub.endpoint.wait_for_clients(1, SAFETY_S)
        junk = [connect_from("127.0.0.3", pub.port) for _ in range(3)]
        assert pub.endpoint.wait_for_clients(4, SAFETY_S)
        junk.append(connect_from("127.0.0.3", pub.port))  # over the limit: the flooding host's oldest goes
        assert closed_by_peer(junk[0])
        pub.publish(surface("L2_Completed"))
        assert next_polydata(slicer, StreamParser()).device_name == "L2_Completed"
        # Slicer reconnects while its old connection is still held (e.g. it crashed): it gets in at once
        slicer_again = connect_from("127.0.0.2", pub.port)
        assert closed_by_peer(junk[1])
        pub.publish(surface("L3_Completed"))
        assert next_polydata(slicer_again, StreamParser()).device_name == "L3_Completed"
        assert pub.endpoint.stats.snapshot()["evicted"] == 2
        for s in [slicer, slicer_again, *junk]:
            s.close()


def test_allow_list_closes_other_addresses_at_once():
    with SurfacePublisher(role="server", port=0, allow_clients=["127.0.0.2", "10.0.0.0/8"]) as pub:
        stranger = connect_from("127.0.0.1", pub.port)
        assert closed_by_peer(stranger)
        stranger.close()
        friend = connect_from("127.0.0.2", pub.port)
        assert pub.endpoint.wait_for_clients(1, SAFETY_S)
        pub.publish(surface())
        assert next_polydata(friend, StreamParser()).device_name == "L1_Completed"
        friend.close()
        assert pub.endpoint.stats.snapshot()["refused_not_allowed"] == 1


def test_allow_list_parsing():
    nets = parse_allow_list(["127.0.0.1", "10.0.0.0/8", "192.168.1.7/24"])
    assert is_allowed("10.20.30.40", nets) and is_allowed("192.168.1.200", nets)
    assert is_allowed("::ffff:127.0.0.1", nets) and not is_allowed("11.0.0.1", nets)
    assert is_allowed("8.8.8.8", parse_allow_list(None)) and is_allowed("8.8.8.8", parse_allow_list([]))
    with pytest.raises(ValueError, match=r"allow_clients\[1\].*'10.0.0.300'"):
        parse_allow_list(["127.0.0.1", "10.0.0.300"])
    with pytest.raises(ValueError, match="allow_clients: expected a list"):
        parse_allow_list("127.0.0.1")
    with pytest.raises(ValueError, match="allow_clients: only for role 'server'"):
        SurfacePublisher(role="client", port=1, allow_clients=["127.0.0.1"])
    with pytest.raises(ValueError, match="max_clients"):
        Server(port=0, max_clients=0)


# -- a declared body that never comes ---------------------------------------------------------------------
def test_parser_holds_what_arrived_not_what_was_declared_and_expire_recovers_what_followed():
    rng = np.random.default_rng(0)
    frames = [encode_bytes(Message("IMAGE", f"f{i}", ImageContent.from_2d(rng.integers(0, 255, (64, 64), np.uint8)),
                                   float(i))) for i in range(5)]
    parser = StreamParser()
    parser.feed(declared_header(64 << 20) + bytes(100) + b"".join(frames))
    assert list(parser.frames()) == []  # the frames are being read as the 64 MiB body
    assert parser.buffered_bytes <= 3 << 20  # the common buffer and a 1 MiB start of the body
    items = list(parser.expire())
    assert isinstance(items[0], Rejection) and items[0].reason == "stalled_body"
    assert [h.device_name for h, _ in items[1:]] == [f"f{i}" for i in range(5)]


def test_large_bodies_grow_past_the_first_buffer_intact():
    rng = np.random.default_rng(1)
    raw = [encode_bytes(Message("IMAGE", f"big{i}", ImageContent.from_2d(rng.integers(0, 255, (1500, 2000), np.uint8)),
                                float(i))) for i in range(3)]  # 3 MB bodies
    stream = raw[0] + raw[1][:-7] + raw[2]  # the middle one cut short: a CRC error, the third still found
    for max_read in (1000, 70_000, 1 << 22):
        parser, pos, items = StreamParser(), 0, []
        reads = rng.integers(1, max_read + 1, 100_000)
        k = 0
        while pos < len(stream):
            view = parser.writable()
            n = min(len(view), len(stream) - pos, int(reads[k]))
            view[:n] = stream[pos:pos + n]
            parser.commit(n)
            pos, k = pos + n, k + 1
            items += list(parser.frames())
        items += list(parser.finish())
        good = [(h.device_name, bytes(b)) for h, b in (i for i in items if isinstance(i, tuple))]
        assert good == [("big0", raw[0][HEADER_SIZE:]), ("big2", raw[2][HEADER_SIZE:])], max_read
        assert [r.reason for r in items if isinstance(r, Rejection)] == ["crc_mismatch"]


@pytest.mark.parametrize("mode", ["inline", "trickle"])
def test_a_stalled_declared_body_costs_at_most_body_timeout(mode):
    """inline: valid frames keep coming behind the header (they are read as its body until the deadline,
    then recovered: none lost). trickle: one byte at a time, never complete; the node drops the connection
    and reconnects, and frames flow again."""
    fps, bad_at, timeout_s = 100.0, 10, 0.5
    options = TransportOptions(body_timeout_s=timeout_s)
    with HostilePlusServer(mode=mode, fps=fps, bad_at=bad_at) as server:
        client = Client("127.0.0.1", server.port, options=options, hello=hello_message()).start()
        try:
            seen: list[int] = []
            while not seen or seen[-1] < bad_at + 20:
                msg = client.get(timeout=SAFETY_S)
                assert msg is not None, f"no frame for {SAFETY_S} s after {seen[-1:]}"
                if msg.type == "IMAGE":
                    seen.append(frame_index(msg, fps))
        finally:
            client.stop()
    stats = client.stats.snapshot()
    assert stats["rejected"]["stalled_body"] == 1
    if mode == "inline":
        # nothing lost, in order (frame bad_at itself was replaced by the bad header)
        assert seen == [i for i in range(seen[0], seen[-1] + 1) if i != bad_at]
        assert stats.get("reconnects", 0) == 0
    else:
        assert stats["reconnects"] == 1 and server.connections == 2
        assert seen[:bad_at - seen[0]] == list(range(seen[0], bad_at))
        assert seen == sorted(set(seen))


def test_stall_deadline_can_be_switched_off_and_is_validated():
    with pytest.raises(ValueError, match="body_timeout_s"):
        TransportOptions(body_timeout_s=-1)
    parser = StreamParser()
    parser.feed(b"\x00\x01abc")
    assert list(parser.expire())[0].reason == "stalled_body"
    assert list(StreamParser().expire()) == []  # nothing in progress: nothing to reject


def test_server_side_stall_closes_a_half_message_client():
    """A client that starts a message and never finishes it does not hold a slot for ever."""
    options = TransportOptions(peer_timeout_s=0, body_timeout_s=0.3)
    with Server(port=0, options=options) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(declared_header(1000, "Viewer")[:HEADER_SIZE] + bytes(10))
        assert closed_by_peer(sock)
        sock.close()
        wait_all_served(server, 1)
        assert server.stats.snapshot()["rejected"]["stalled_body"] == 1


def test_direct_and_discarded_counts_are_consistent_under_concurrent_clients():
    """Several clients flooding the publish-only port at once: every message is counted, none queued."""
    with SurfacePublisher(role="server", port=0) as pub:
        status = encode_bytes(Message("STATUS", "Viewer", StatusContent(message="ok"), 1.0))

        def flood() -> None:
            with socket.create_connection(("127.0.0.1", pub.port)) as s:
                s.sendall(status * 500)

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SAFETY_S)
        wait_all_served(pub.endpoint, 4)
        assert pub.endpoint.stats.snapshot()["discarded_inbound"] == 2000
        assert len(pub.endpoint.inbound) == 0
