"""The OpenIGTLink socket layer: one :class:`Connection` per socket, each with its own I/O threads.

Threads. A connection runs a *reader* thread (``recv_into`` -> :class:`~.framing.StreamParser` ->
:func:`~.codec.decode_body` -> the inbound :class:`MessageQueue`) and a *writer* thread (outbound queue ->
``sendmsg``; a keep-alive STATUS when nothing was sent for ``keepalive_interval_s``). Nothing polls:
``recv`` returns as soon as bytes arrive, the socket timeout only bounds how long a silent peer goes
unnoticed. Callers never block on the network; they enqueue and read from queues.

Direct writes. When nothing is queued or being written, ``send`` writes the message from the caller's
thread with one non-blocking ``writev`` instead of waking the writer thread (a thread hand-off costs about
as much as encoding a frame). Whatever the kernel does not take at once goes to the writer, ahead of any
later message, so the wire order is the send order either way.

Guarantees. Messages from one connection reach the inbound queue in wire order. Queues are bounded;
when one is full the newest message is dropped and counted (``dropped_inbound`` / ``dropped_outbound``),
never silently. Every rejected byte range is counted by reason (:class:`TransportStats`). A peer that
closes, resets, stops sending for ``peer_timeout_s`` (half-open) or stops reading for ``send_timeout_s``
is declared dead and the connection closes with that reason.

Stalled messages. A message must arrive whole within ``body_timeout_s`` of its first bytes. One that does
not (a header declaring a body that never comes, or comes a byte at a time) is rejected as
``stalled_body`` and the bytes received behind its header are rescanned: valid messages that followed
it (read as its body until then) are delivered at once instead of after the declared size has filled.
If that rescan finds no valid message the peer is not streaming OpenIGTLink any more and the connection
closes (a :class:`~.endpoints.Client` reconnects at once). Memory held for one connection is bounded by
the bytes it actually sent (see :mod:`.framing`), never by what it declared.

Publish-only endpoints (:func:`publish_only_options`): messages from peers are framed and CRC-checked,
counted (``discarded_inbound``) and dropped without decoding or queueing; a declared body over
``max_body_bytes`` (64 KiB: room for STATUS and GET_/STT_ requests) closes the connection before any of
it is read, so a port that only sends cannot be made to hold what its clients send.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from . import codec
from .codec import DecodeError, Message
from .codec_basic import StatusContent
from .framing import Rejection, StreamParser
from .options import PUBLISH_ONLY_MAX_BODY, TransportOptions, publish_only_options  # noqa: F401 (re-exported)
from .queues import MessageQueue, TransportStats

logger = logging.getLogger(__name__)

KEEPALIVE_DEVICE = "KeepAlive"


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
        self.peer_host = sock.getpeername()[0]
        self.connected_at = time.monotonic()
        self.peer_header_version = 1  # highest header version this peer has sent (PlusServer-style)
        # ``_closing`` stops the threads at once; ``closed`` is set only after the close was counted and
        # ``on_closed`` ran, so whoever waits on it (a reconnecting client, a test) sees the whole close.
        self._closing = threading.Event()
        self.closed = threading.Event()
        self.first_message = threading.Event()  # set when the peer's first valid message arrived
        self.close_reason = ""
        self._inbound = inbound
        self._outbound = MessageQueue(options.outbound_queue, stats, "dropped_outbound")
        self._on_closed = on_closed
        self._close_lock = threading.Lock()
        self._flush_cond = threading.Condition()  # guards _queued/_written (caller vs writer thread)
        self._queued = self._written = 0  # messages handed to this connection / fully given to the kernel
        self._send_lock = threading.Lock()  # senders, one at a time: decide direct write vs queue, then do it
        self._io_lock = threading.Lock()  # held by whoever writes to the socket (never two at once)
        self._last_send = time.monotonic()  # for keep-alives: direct writes bypass the writer thread
        # Only the reader thread touches the parser; buffered_bytes reads its size from other threads.
        self._parser = StreamParser(max_body_bytes=options.max_body_bytes, check_crc=options.check_crc)
        poll = min(t for t in (options.keepalive_interval_s, options.peer_timeout_s, options.body_timeout_s / 4,
                               0.5) if t > 0)
        sock.settimeout(poll)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._threads = [threading.Thread(target=self._read_loop, name=f"igtl-read-{self.peer}", daemon=True),
                         threading.Thread(target=self._write_loop, name=f"igtl-write-{self.peer}", daemon=True)]

    @property
    def buffered_bytes(self) -> int:
        """Bytes of receive buffers this connection holds now (0 once closed)."""
        return 0 if self._closing.is_set() else self._parser.buffered_bytes

    def start(self) -> "Connection":
        for t in self._threads:
            t.start()
        return self

    def send(self, msg: Message) -> bool:
        """Queue ``msg`` (encoded now, in the caller's thread); False when closed or the queue is full."""
        return self.send_encoded(codec.encode(msg))

    def send_encoded(self, parts: list, *, block_s: float = 0.0, direct: bool = True) -> bool:
        """Queue pre-encoded parts (see :func:`codec.encode`); lets a broadcast encode once.

        When the outbound queue is full, wait up to ``block_s`` seconds for space before dropping. With
        ``direct`` and an idle writer the message is written from this thread (see the module docstring).
        """
        if self._closing.is_set():
            return False
        with self._send_lock:
            if direct and self._queued == self._written and self._io_lock.acquire(blocking=False):
                try:
                    parts = self._write_now(parts)
                finally:
                    self._io_lock.release()
                if parts is None:
                    return True
                # The kernel took only part of it: the writer sends the rest first (the queue is empty,
                # and later senders wait for _send_lock), so this put cannot be refused for space.
            if not self._outbound.put(parts, timeout=block_s):
                return False
            with self._flush_cond:
                self._queued += 1
        return True

    def _write_now(self, parts: list) -> list | None:
        """One non-blocking ``writev`` of ``parts`` (caller holds _io_lock); None when all of it went,
        else what is left. The socket is non-blocking at the OS level (it has a timeout), so this never waits."""
        views = [memoryview(p).cast("B") for p in parts]
        try:
            n = os.writev(self.sock.fileno(), views)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            return parts  # closed or broken: the writer thread meets the error and closes the connection
        self._last_send = time.monotonic()
        if n:
            self.stats.add("bytes_sent", n)
        rest = _advance(views, n)
        if rest:
            self.stats.add("direct_partial")
            return rest
        self.stats.add_each("messages_sent", "direct_sent")
        with self._flush_cond:
            self._queued += 1
            self._written += 1
            self._flush_cond.notify_all()
        return None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far has been handed to the kernel; False on timeout/close."""
        with self._flush_cond:
            target = self._queued
            return self._flush_cond.wait_for(lambda: self._written >= target or self._closing.is_set(), timeout) \
                and self._written >= target

    def close(self, reason: str = "closed locally", *, wait: bool = True) -> None:
        """Close the socket and stop both threads (idempotent)."""
        with self._close_lock:
            first = not self._closing.is_set()
            if first:
                self.close_reason = reason
                self._closing.set()
        if first:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already disconnected
            self.sock.close()
            self._outbound.close()  # wakes the writer and any sender waiting for queue space
            try:
                first_time = self.stats.closed(reason) == 1
                logger.log(logging.INFO if first_time else logging.DEBUG, "connection %s closed: %s%s", self.peer,
                           reason, "" if not first_time else " (further closes for this reason are logged at debug)")
                if self._on_closed is not None:
                    self._on_closed(self, reason)
            finally:
                self.closed.set()
        with self._flush_cond:
            self._flush_cond.notify_all()
        if wait:
            for t in self._threads:
                if t.is_alive() and t is not threading.current_thread():
                    t.join(timeout=2.0)

    # -- reader thread ----------------------------------------------------------------------------
    def _read_loop(self) -> None:
        parser, opts = self._parser, self.options
        last_rx = time.monotonic()
        started = None  # monotonic time the message being received began; None between messages
        reason, drain = "peer closed", True  # drain: deliver complete messages behind an incomplete one at the end
        try:
            while not self._closing.is_set():
                try:
                    n = self.sock.recv_into(parser.writable())
                except socket.timeout:
                    n = None
                now = time.monotonic()
                if n == 0:
                    break
                if n is None:
                    if opts.peer_timeout_s and now - last_rx > opts.peer_timeout_s:
                        reason = f"peer silent for {opts.peer_timeout_s} s"
                        break
                else:
                    last_rx = now
                    parser.commit(n)
                    self.stats.add("bytes_received", n)
                    items, _, fatal = self._dispatch(parser.frames())
                    if fatal:
                        reason, drain = fatal, False
                        break
                    if items:
                        started = None  # a message ended: whatever is pending started with this read
                if not parser.pending_bytes:
                    started = None
                elif started is None:
                    started = now
                if opts.body_timeout_s and started is not None and now - started > opts.body_timeout_s:
                    _, valid, fatal = self._dispatch(parser.expire())
                    if fatal or not valid:
                        reason = fatal or f"stalled body: no message completed within {opts.body_timeout_s} s"
                        drain = False  # what was there has just been rescanned
                        break
                    started = now if parser.pending_bytes else None
            if self._closing.is_set():
                return  # closed locally: a message cut short by our own close is not the peer's fault
            if drain:
                self._dispatch(parser.finish())
        except OSError as e:
            reason = f"socket error: {e}"
        finally:
            self.stats.add("bytes_skipped", parser.bytes_skipped)
            self.stats.peak("peak_receive_buffer_bytes", parser.peak_capacity)
        self.close(reason, wait=False)

    def _dispatch(self, items) -> tuple[int, int, str | None]:
        """Deliver (or discard) ``items`` from the parser; returns (items seen, valid messages, reason to
        close the connection or None)."""
        seen = valid = 0
        for item in items:
            seen += 1
            if isinstance(item, Rejection):
                self._reject(item.reason, item.detail)
                if item.reason == "body_too_large" and self.options.close_on_oversize:
                    return seen, valid, f"declared body over the {self.options.max_body_bytes} byte limit"
                continue
            header, body = item
            if self.options.discard_inbound and header.type not in self.options.keep_inbound_types:
                # framing and CRC were checked; the content is not wanted
                valid += 1
                self._note_peer(header.version)
                self.stats.add_each("messages_received", "discarded_inbound")
                continue
            try:
                msg = codec.decode_body(header, memoryview(body))
            except DecodeError as e:
                self._reject(e.reason, str(e))
                continue
            except Exception as e:  # a codec bug must cost one message, not the connection
                logger.exception("decoding %s %r from %s failed", header.type, header.device_name, self.peer)
                self._reject("decoder_error", repr(e))
                continue
            valid += 1
            msg.peer = self.peer
            msg.received_at = time.time()
            self._note_peer(header.version)
            if (msg.type == "STATUS" and msg.device_name == KEEPALIVE_DEVICE
                    and not self.options.deliver_keepalives):
                self.stats.add_each("messages_received", "keepalives_received")
                continue
            if self._inbound.put(msg):
                self.stats.add_each("messages_received", "delivered")
            else:
                self.stats.add("messages_received")  # the drop itself is counted by the queue
        return seen, valid, None

    def _note_peer(self, header_version: int) -> None:
        if header_version > self.peer_header_version:
            self.peer_header_version = header_version
        if not self.first_message.is_set():
            self.first_message.set()

    def _reject(self, reason: str, detail: str) -> None:
        self.stats.reject(reason)
        logger.debug("rejected from %s: %s", self.peer, detail)

    # -- writer thread ----------------------------------------------------------------------------
    def _write_loop(self) -> None:
        interval = self.options.keepalive_interval_s
        reason = None
        try:
            while not self._closing.is_set():
                wait = max(0.0, self._last_send + interval - time.monotonic()) if interval else None
                parts = self._outbound.get(timeout=wait)
                if self._closing.is_set():
                    return
                keepalive = parts is None
                if keepalive:
                    if time.monotonic() - self._last_send < interval:
                        continue  # direct writes kept the link busy
                    parts = codec.encode(Message("STATUS", KEEPALIVE_DEVICE, StatusContent(), time.time()))
                with self._io_lock:
                    sent = self._send_all(parts)
                    self._last_send = time.monotonic()
                if not sent:
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
            views = _advance(views, n)
        return True


def _advance(views: list, n: int) -> list:
    """``views`` (byte memoryviews) without their first ``n`` bytes."""
    i = 0
    while i < len(views) and n >= len(views[i]):
        n -= len(views[i])
        i += 1
    rest = views[i:]
    if rest and n:
        rest[0] = rest[0][n:]
    return rest
