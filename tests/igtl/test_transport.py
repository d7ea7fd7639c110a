"""Transport over real sockets on 127.0.0.1: many clients, ordering, large messages, limits, counted drops,
keep-alive, and dead / half-open / restarting peers (waits are on events and queues, never sleeps)."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from usx_stream.igtl import ImageContent, Message
from usx_stream.igtl.codec import encode_bytes
from usx_stream.igtl.endpoints import Client, Server
from usx_stream.igtl.framing import StreamParser
from usx_stream.igtl.transport import TransportOptions

FAST = TransportOptions(keepalive_interval_s=0.05, peer_timeout_s=0.5)


def transform(i: int, name: str = "T", version: int = 1) -> Message:
    m = np.eye(4)
    m[:3, 3] = [i, 2 * i, 3 * i]
    return Message("TRANSFORM", name, m, 100.0 + i, header_version=version)


def receive(endpoint, n: int, timeout: float = 10.0) -> list[Message]:
    out = []
    while len(out) < n:
        msg = endpoint.get(timeout=timeout)
        assert msg is not None, f"only {len(out)} of {n} messages arrived"
        out.append(msg)
    return out


def wait_no_connections(server: Server, timeout: float = 10.0) -> None:
    with server._cond:
        assert server._cond.wait_for(lambda: not server.connections, timeout)


def test_many_clients_every_message_in_order():
    with Server(port=0) as server:
        clients = [Client("127.0.0.1", server.port).start() for _ in range(3)]
        assert all(c.wait_connected(10) for c in clients)
        assert server.wait_for_clients(3, 10)
        for i in range(300):
            assert server.broadcast(transform(i), block_s=10) == 3
        for c in clients:
            got = receive(c, 300)
            assert [m.content[0, 3] for m in got] == list(range(300))
        for k, c in enumerate(clients):  # and the other way: every client to the server
            for i in range(50):
                assert c.send(transform(i, name=f"c{k}"))
        got = receive(server, 150)
        for k in range(3):
            assert [m.content[0, 3] for m in got if m.device_name == f"c{k}"] == list(range(50))
        assert len({m.peer for m in got}) == 3
        for c in clients:
            c.stop()


def test_large_message_delivered_and_size_limit_enforced():
    big = np.random.default_rng(0).integers(0, 255, (40, 1024, 1024), dtype=np.uint8)  # 40 MiB
    options = TransportOptions(max_body_bytes=32 << 20)
    with Server(port=0) as server, Client("127.0.0.1", server.port, options=options) as client:
        assert server.wait_for_clients(1, 10)
        server.broadcast(Message("IMAGE", "Big", ImageContent(big[:20], np.eye(4)), 1.0))  # 20 MiB: fits
        server.broadcast(Message("IMAGE", "TooBig", ImageContent(big, np.eye(4)), 2.0))  # 40 MiB: over
        server.broadcast(transform(7))
        first, second = receive(client, 2, timeout=30)
        np.testing.assert_array_equal(first.content.voxels, big[:20])
        assert second.type == "TRANSFORM" and second.content[0, 3] == 7
        assert client.stats.snapshot()["rejected"] == {"body_too_large": 1}


def test_slow_consumer_drops_are_counted():
    options = TransportOptions(inbound_queue=5)
    with Server(port=0, options=options) as server:
        client = Client("127.0.0.1", server.port).start()
        assert client.wait_connected(10)
        for i in range(50):
            client.send(transform(i))
        client.stop()  # flushes the 50 messages, then closes; the server reads to the end
        wait_no_connections(server)
        stats = server.stats.snapshot()
        delivered = receive(server, stats["delivered"])
    assert [m.content[0, 3] for m in delivered] == list(range(len(delivered)))
    assert stats["delivered"] == 5
    assert stats["delivered"] + stats["dropped_inbound"] == stats["messages_received"] == 50


def test_keepalive_keeps_a_quiet_connection_alive():
    client_options = TransportOptions(keepalive_interval_s=0.02, peer_timeout_s=0.5, deliver_keepalives=True)
    server_options = TransportOptions(keepalive_interval_s=0.02, peer_timeout_s=0.5)
    with Server(port=0, options=server_options) as server, \
            Client("127.0.0.1", server.port, options=client_options) as client:
        assert client.wait_connected(10)
        got = receive(client, 50)  # 50 keep-alives span ~1 s: twice the peer timeout
        assert {(m.type, m.device_name, m.content.code) for m in got} == {("STATUS", "KeepAlive", 1)}
        assert client.generation == 1 and client.stats.snapshot()["closed"] == {}


def test_server_restart_detected_and_reconnected_nothing_lost():
    server = Server(port=0, options=FAST).start()
    port = server.port
    client = Client("127.0.0.1", port, options=FAST).start()
    try:
        assert client.wait_connected(10) and server.wait_for_clients(1, 10)
        for i in range(20):
            server.broadcast(transform(i))
        before = receive(client, 20)
        server.stop()
        server = Server(port=port, options=FAST).start()
        assert client.wait_connected(10, generation=2)
        assert server.wait_for_clients(1, 10)
        for i in range(20, 40):
            server.broadcast(transform(i))
        after = receive(client, 20)
        assert [m.content[0, 3] for m in before + after] == list(range(40))
        assert client.stats.snapshot()["reconnects"] >= 1 and len(client.downtimes_s) >= 1
    finally:
        client.stop()
        server.stop()


def _raw_server():
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    lst.settimeout(10)
    return lst


def test_half_open_peer_detected_and_reconnected():
    """A peer that keeps the socket open but sends nothing (and reads nothing) is declared dead."""
    lst = _raw_server()
    client = Client("127.0.0.1", lst.getsockname()[1], options=FAST).start()
    try:
        first, _ = lst.accept()
        first.sendall(b"".join(encode_bytes(transform(i)) for i in range(3)))
        # ... and then silence, socket left open (half-open from the client's point of view)
        second, _ = lst.accept()  # the client gave up on the silent peer and reconnected
        second.sendall(b"".join(encode_bytes(transform(i)) for i in range(3, 6)))
        got = receive(client, 6)
        assert [m.content[0, 3] for m in got] == list(range(6))
        closed = client.stats.snapshot()["closed"]
        assert list(closed) == ["peer silent for 0.5 s"]
        first.close()
        second.close()
    finally:
        client.stop()
        lst.close()


def test_reset_peer_detected_and_reconnected():
    lst = _raw_server()
    client = Client("127.0.0.1", lst.getsockname()[1], options=FAST).start()
    try:
        first, _ = lst.accept()
        first.sendall(encode_bytes(transform(0)))
        assert receive(client, 1)[0].content[0, 3] == 0
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        first.close()  # RST
        second, _ = lst.accept()
        second.sendall(encode_bytes(transform(1)))
        assert receive(client, 1)[0].content[0, 3] == 1
        second.close()
    finally:
        client.stop()
        lst.close()


def test_server_drops_a_silent_client():
    options = TransportOptions(keepalive_interval_s=0.05, peer_timeout_s=0.3)
    with Server(port=0, options=options) as server:
        with socket.create_connection(("127.0.0.1", server.port)):
            assert server.wait_for_clients(1, 10)
            wait_no_connections(server)
        assert server.stats.snapshot()["closed"] == {"peer silent for 0.3 s": 1}


def test_options_validated():
    with pytest.raises(ValueError, match="peer_timeout_s"):
        TransportOptions(peer_timeout_s=-1)
    with pytest.raises(ValueError, match="backoff_s"):
        Client("127.0.0.1", 1, backoff_s=(1.0, 0.5))


def test_closed_is_set_only_after_the_close_was_counted_and_reported():
    """Whoever wakes on ``closed`` (a reconnecting client) must find the reason counted and ``on_closed``
    done; a slow callback makes the old order (event first, bookkeeping after) visible every time."""
    import threading

    from usx_stream.igtl.transport import Connection, MessageQueue, TransportStats

    stats = TransportStats()
    reported = threading.Event()
    release = threading.Event()

    def on_closed(conn, reason):
        release.wait(10)  # hold the closing thread inside the callback
        reported.set()

    lst = _raw_server()
    client = socket.create_connection(lst.getsockname()[:2])
    peer, _ = lst.accept()
    conn = Connection(client, inbound=MessageQueue(8, stats, "dropped"), stats=stats, options=FAST,
                      on_closed=on_closed).start()
    try:
        peer.close()  # the reader sees the end of the stream and closes the connection
        assert not conn.closed.wait(0.3), "closed was set while on_closed was still running"
        release.set()
        assert conn.closed.wait(10)
        assert reported.is_set()
        assert stats.snapshot()["closed"] == {"peer closed": 1}
    finally:
        release.set()
        conn.close()
        lst.close()


def test_closing_a_full_queue_releases_a_blocked_sender():
    """Back-pressure (``block_s``) must end when the connection dies, not after the full wait."""
    import threading

    from usx_stream.igtl.transport import MessageQueue, TransportStats

    stats = TransportStats()
    q = MessageQueue(1, stats, "dropped")
    assert q.put("a")
    result = {}
    started = threading.Event()

    def blocked_put():
        started.set()
        result["ok"] = q.put("b", timeout=3600)

    t = threading.Thread(target=blocked_put)
    t.start()
    assert started.wait(10)
    q.close()
    t.join(timeout=10)
    assert not t.is_alive() and result["ok"] is False
    assert q.get(timeout=0) == "a" and q.get(timeout=0) is None
    assert stats.snapshot().get("dropped", 0) == 0


def test_direct_and_queued_writes_keep_the_send_order():
    """Messages too big for the socket buffers are written partly from the sender's thread and finished by
    the writer thread; small ones sent meanwhile (from two threads) must still follow them on the wire."""
    import threading

    rng = np.random.default_rng(3)
    # 8 MiB each: more than the largest send buffer (4 MiB) plus what an unread receive buffer takes
    frames = [rng.integers(0, 255, (2048, 4096), dtype=np.uint8) for _ in range(2)]
    with Server(port=0) as server:
        peer = socket.create_connection(("127.0.0.1", server.port))  # reads only once everything is sent
        assert server.wait_for_clients(1, 10)
        (conn,) = server.connections
        sent = []

        def sender(tag: str) -> None:
            for i in range(40):
                if tag == "a" and i % 20 == 0:
                    msg = Message("IMAGE", f"a{i}", ImageContent.from_2d(frames[i // 20]), 1.0)
                else:
                    msg = Message("STRING", f"{tag}{i}", f"{tag} {i}", 1.0)
                assert conn.send(msg)
                sent.append(msg.device_name)

        threads = [threading.Thread(target=sender, args=(t,)) for t in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        parser, got = StreamParser(), []
        peer.settimeout(30)  # a damaged stream would lose messages: fail rather than wait forever
        while len(got) < 80:
            view = parser.writable()
            n = peer.recv_into(view)
            assert n > 0, f"connection closed after {len(got)} messages"
            parser.commit(n)
            got += [h.device_name for h, _ in parser.frames()]
        peer.close()
        stats = server.stats.snapshot()
    for tag in "ab":
        assert [g for g in got if g[0] == tag] == [f"{tag}{i}" for i in range(40)]
    assert sorted(got) == sorted(sent)
    assert stats.get("dropped_outbound", 0) == 0
    assert stats["direct_partial"] >= 1  # the first frame did not fit: its rest went through the writer


def test_a_client_that_cannot_connect_says_why_once(caplog):
    """A wrong port or host name would otherwise only count connect_failures: the reason is logged once,
    after warn_after_s of failing (a server restarting, or one that stopped at the end of a session, is not
    worth a warning)."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client("127.0.0.1", port, backoff_s=(0.01, 0.02), warn_after_s=0.1).start()
    try:
        deadline = time.monotonic() + 10.0  # the failures come every 10-20 ms; nothing signals them
        while client.stats.snapshot().get("connect_failures", 0) < 20 and time.monotonic() < deadline:
            client._stop.wait(0.01)
    finally:
        client.stop()
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "cannot connect" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert f"127.0.0.1:{port}: Connection refused" in warnings[0].getMessage()
