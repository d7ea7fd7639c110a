"""The OpenIGTLink socket layer: one :class:`Connection` per socket, each with its own I/O threads.

Threads. A connection runs a *reader* thread (``recv_into`` -> :class:`~.framing.StreamParser` ->
:func:`~.codec.decode_body` -> the inbound :class:`MessageQueue`) and a *writer* thread (outbound queue ->
``sendmsg``; a keep-alive STATUS when nothing was sent for ``keepalive_interval_s``). Nothing polls:
``recv`` returns as soon as bytes arrive, the socket timeout only bounds how long a silent peer goes
unnoticed. Callers never block on the network; they enqueue and read from queues.

Guarantees. Messages from one connection reach the inbound queue in wire order. Queues are bounded;
when one is full the newest message is dropped and counted (``dropped_inbound`` / ``dropped_outbound``),
never silently. Every rejected byte range is counted by reason (:class:`TransportStats`). A peer that
closes, resets, stops sending for ``peer_timeout_s`` (half-open) or stops reading for ``send_timeout_s``
is declared dead and the connection closes with that reason.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from dataclasses import dataclass

from . import codec
from .codec import DecodeError, Message
from .codec_basic import StatusContent
from .framing import Rejection, StreamParser

logger = logging.getLogger(__name__)

KEEPALIVE_DEVICE = "KeepAlive"


@dataclass(frozen=True)
class TransportOptions:
    """Tunables of a connection (seconds, bytes, messages).

    keepalive_interval_s : send a STATUS(OK) named ``KeepAlive`` after this long without sending; 0 = never.
    peer_timeout_s : close when nothing arrived for this long (half-open or dead peer); 0 = never.
    send_timeout_s : close when the peer accepted no byte for this long.
    max_body_bytes : larger declared bodies are rejected without being read.
    check_crc : verify CRC64 of every received body.
    inbound_queue / outbound_queue : bounded queue depths (messages); overflow drops the newest, counted.
    deliver_keepalives : also hand ``KeepAlive`` STATUS messages to the consumer.
    """

    keepalive_interval_s: float = 0.25
    peer_timeout_s: float = 1.0
    send_timeout_s: float = 5.0
    max_body_bytes: int = 64 << 20
    check_crc: bool = True
    inbound_queue: int = 512
    outbound_queue: int = 256
    deliver_keepalives: bool = False

    def __post_init__(self) -> None:
        for name in ("keepalive_interval_s", "peer_timeout_s", "send_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"TransportOptions.{name}: must be >= 0, got {getattr(self, name)!r}")
        for name in ("max_body_bytes", "inbound_queue", "outbound_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransportOptions.{name}: must be >= 1, got {getattr(self, name)!r}")


class TransportStats:
    """Thread-safe counters shared by the connections of one endpoint. ``snapshot()`` copies them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n: collections.Counter = collections.Counter()
        self._rejected: collections.Counter = collections.Counter()
        self._closed: collections.Counter = collections.Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._n[key] += n

    def peak(self, key: str, value: int) -> None:
        """Keep the largest ``value`` seen under ``key``."""
        with self._lock:
            self._n[key] = max(self._n[key], value)

    def reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1

    def closed(self, reason: str) -> None:
        with self._lock:
            self._closed[reason] += 1

    def snapshot(self) -> dict:
        """``{counter: int, ..., "rejected": {reason: n}, "closed": {reason: n}}``."""
        with self._lock:
            out = dict(self._n)
            out["rejected"] = dict(self._rejected)
            out["closed"] = dict(self._closed)
        return out


class MessageQueue:
    """Bounded FIFO between I/O threads and a consumer; ``put`` never blocks (drops are counted)."""

    def __init__(self, maxsize: int, stats: TransportStats, drop_counter: str):
        if maxsize < 1:
            raise ValueError(f"maxsize: must be >= 1, got {maxsize}")
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._maxsize = maxsize
        self._stats = stats
        self._drop_counter = drop_counter
        self._closed = False

    def close(self) -> None:
        """Refuse further items and wake every waiter (items already queued can still be read)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def put(self, item, timeout: float = 0.0) -> bool:
        """Append ``item``; when full wait up to ``timeout`` s for space, then drop it (counted).

        Returns False without counting a drop when the queue is closed.
        """
        with self._cond:
            if len(self._items) >= self._maxsize and timeout > 0:
                self._cond.wait_for(lambda: len(self._items) < self._maxsize or self._closed, timeout)
            if self._closed:
                return False
            if len(self._items) >= self._maxsize:
                self._stats.add(self._drop_counter)
                return False
            self._items.append(item)
            self._cond.notify_all()
        return True

    def get(self, timeout: float | None = None):
        """Oldest item, or None after ``timeout`` seconds (None = wait forever) or once closed and empty."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()  # a producer may wait for space
            return item

    def __len__(self) -> int:
        return len(self._items)


class Connection:
    """One connected socket with its reader and writer threads.

    Parameters
    ----------
    sock : socket.socket
        Connected TCP socket; the connection owns and closes it.
    inbound : MessageQueue
        Where decoded messages go (shared by all connections of an endpoint).
    stats : TransportStats
    options : TransportOptions
    on_closed : callable(Connection, str) or None
        Called once, from an I/O thread, with the reason the connection ended.
    """

    def __init__(self, sock: socket.socket, *, inbound: MessageQueue, stats: TransportStats,
                 options: TransportOptions, on_closed=None):
        self.sock = sock
        self.options = options
        self.stats = stats
        self.peer = "%s:%d" % sock.getpeername()[:2]
        self.peer_header_version = 1  # highest header version this peer has sent (PlusServer-style)
        self.closed = threading.Event()
        self.first_message = threading.Event()  # set when the peer's first valid message arrived
        self.close_reason = ""
        self._inbound = inbound
        self._outbound = MessageQueue(options.outbound_queue, stats, "dropped_outbound")
        self._on_closed = on_closed
        self._close_lock = threading.Lock()
        self._flush_cond = threading.Condition()  # guards _queued/_written (caller vs writer thread)
        self._queued = self._written = 0
        poll = min(t for t in (options.keepalive_interval_s, options.peer_timeout_s, 0.5) if t > 0)
        sock.settimeout(poll)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._threads = [threading.Thread(target=self._read_loop, name=f"igtl-read-{self.peer}", daemon=True),
                         threading.Thread(target=self._write_loop, name=f"igtl-write-{self.peer}", daemon=True)]

    def start(self) -> "Connection":
        for t in self._threads:
            t.start()
        return self

    def send(self, msg: Message) -> bool:
        """Queue ``msg`` (encoded now, in the caller's thread); False when closed or the queue is full."""
        return self.send_encoded(codec.encode(msg))

    def send_encoded(self, parts: list, *, block_s: float = 0.0) -> bool:
        """Queue pre-encoded parts (see :func:`codec.encode`); lets a broadcast encode once.

        When the outbound queue is full, wait up to ``block_s`` seconds for space before dropping.
        """
        if self.closed.is_set():
            return False
        if not self._outbound.put(parts, timeout=block_s):
            return False
        with self._flush_cond:
            self._queued += 1
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far has been handed to the kernel; False on timeout/close."""
        with self._flush_cond:
            target = self._queued
            return self._flush_cond.wait_for(lambda: self._written >= target or self.closed.is_set(), timeout) \
                and self._written >= target

    def close(self, reason: str = "closed locally", *, wait: bool = True) -> None:
        """Close the socket and stop both threads (idempotent)."""
        with self._close_lock:
            first = not self.closed.is_set()
            if first:
                self.close_reason = reason
                self.closed.set()
        if first:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already disconnected
            self.sock.close()
            self._outbound.close()  # wakes the writer and any sender waiting for queue space
            self.stats.closed(reason)
            logger.info("connection %s closed: %s", self.peer, reason)
            if self._on_closed is not None:
                self._on_closed(self, reason)
        with self._flush_cond:
            self._flush_cond.notify_all()
        if wait:
            for t in self._threads:
                if t.is_alive() and t is not threading.current_thread():
                    t.join(timeout=2.0)

    # -- reader thread ----------------------------------------------------------------------------
    def _read_loop(self) -> None:
        parser = StreamParser(max_body_bytes=self.options.max_body_bytes, check_crc=self.options.check_crc)
        last_rx = time.monotonic()
        reason = "peer closed"
        try:
            while not self.closed.is_set():
                try:
                    n = self.sock.recv_into(parser.writable())
                except socket.timeout:
                    if self.options.peer_timeout_s and time.monotonic() - last_rx > self.options.peer_timeout_s:
                        reason = f"peer silent for {self.options.peer_timeout_s} s"
                        break
                    continue
                if n == 0:
                    break
                last_rx = time.monotonic()
                parser.commit(n)
                self.stats.add("bytes_received", n)
                self._dispatch(parser.frames())
            if self.closed.is_set():
                return  # closed locally: a message cut short by our own close is not the peer's fault
            self._dispatch(parser.finish())
        except OSError as e:
            reason = f"socket error: {e}"
        finally:
            self.stats.add("bytes_skipped", parser.bytes_skipped)
            self.stats.peak("peak_receive_buffer_bytes", parser.peak_capacity)
        self.close(reason, wait=False)

    def _dispatch(self, items) -> None:
        for item in items:
            if isinstance(item, Rejection):
                self._reject(item.reason, item.detail)
                continue
            header, body = item
            try:
                msg = codec.decode_body(header, memoryview(body))
            except DecodeError as e:
                self._reject(e.reason, str(e))
                continue
            except Exception as e:  # a codec bug must cost one message, not the connection
                logger.exception("decoding %s %r from %s failed", header.type, header.device_name, self.peer)
                self._reject("decoder_error", repr(e))
                continue
            msg.peer = self.peer
            msg.received_at = time.time()
            self.peer_header_version = max(self.peer_header_version, header.version)
            self.first_message.set()
            self.stats.add("messages_received")
            if (msg.type == "STATUS" and msg.device_name == KEEPALIVE_DEVICE
                    and not self.options.deliver_keepalives):
                self.stats.add("keepalives_received")
                continue
            if self._inbound.put(msg):
                self.stats.add("delivered")

    def _reject(self, reason: str, detail: str) -> None:
        self.stats.reject(reason)
        logger.debug("rejected from %s: %s", self.peer, detail)

    # -- writer thread ----------------------------------------------------------------------------
    def _write_loop(self) -> None:
        interval = self.options.keepalive_interval_s or None
        reason = None
        try:
            while not self.closed.is_set():
                parts = self._outbound.get(timeout=interval)
                if self.closed.is_set():
                    return
                keepalive = parts is None  # nothing to send for a keep-alive interval
                if keepalive:
                    parts = codec.encode(Message("STATUS", KEEPALIVE_DEVICE, StatusContent(), time.time()))
                if not self._send_all(parts):
                    reason = f"peer accepted nothing for {self.options.send_timeout_s} s"
                    break
                if keepalive:
                    self.stats.add("keepalives_sent")
                    continue
                self.stats.add("messages_sent")
                with self._flush_cond:
                    self._written += 1
                    self._flush_cond.notify_all()
        except OSError as e:
            reason = f"socket error on send: {e}"
        if reason is not None:
            self.close(reason, wait=False)

    def _send_all(self, parts: list) -> bool:
        views = [memoryview(p).cast("B") for p in parts]
        last_progress = time.monotonic()
        while views:
            try:
                n = self.sock.sendmsg(views)
            except socket.timeout:
                if time.monotonic() - last_progress > self.options.send_timeout_s:
                    return False
                continue
            self.stats.add("bytes_sent", n)
            last_progress = time.monotonic()
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]
        return True

