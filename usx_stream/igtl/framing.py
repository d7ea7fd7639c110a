"""Split an OpenIGTLink byte stream into CRC-checked messages, surviving garbage in between.

No sockets here: the transport reads into :meth:`StreamParser.writable`, calls :meth:`commit`, then
iterates :meth:`frames`. Each item is either a ``(Header, body)`` pair whose body (a ``bytearray``, or a
uint8 ndarray for large bodies) passed the CRC64 check, or a :class:`Rejection` naming why bytes were
thrown away.

Resynchronisation. After a framing error (bad version, declared size over the limit, CRC mismatch,
stream ended mid-message) the parser scans forward for the next position whose 58 bytes look like a
header (version 1 or 2, printable NUL-padded type and device name, size within the limit) *and* whose
body passes the CRC check. Bytes skipped meanwhile are counted in :attr:`StreamParser.bytes_skipped`;
exactly one :class:`Rejection` is reported per error, so a stream where bad and good messages alternate
reports one rejection per bad message and delivers every good one. A header that declares a size within
the limit but larger than what follows is only resolved when more bytes (or the end of the stream)
arrive: valid messages behind it are then found by the rescan and delivered late, not lost.

Large bodies (at least 64 KiB) are received straight into a buffer of their own, which the message then
keeps: no copy of the pixels after the kernel's, and the CRC of the bytes already there is computed while
the rest is still arriving. Should such a message turn out bad, its bytes go back into the common buffer
and the usual resynchronisation runs on them, so results never depend on how the stream was read.

Memory follows the bytes that arrived, not the sizes that were declared: a large body is first received
into a buffer of at most 1 MiB; only once that has filled is a buffer of the declared size made (one copy
of that 1 MiB), and it is left uninitialised (``numpy.empty``), so the operating system commits its pages
as received bytes land in them. A peer that declares 64 MiB and sends a few bytes costs 1 MiB, never 64.
The common buffer starts at 1 MiB, or smaller when ``max_body_bytes`` is small (a publish-only port with
a 64 KiB limit holds ~128 KiB per connection).

Stalls. The parser has no clock: the transport calls :meth:`StreamParser.expire` when the message being
received took too long. That message is rejected (``stalled_body``) and its bytes are rescanned like any
other framing error, so valid messages that followed a header declaring a body that never came (they were
being read as that body) are delivered instead of waiting for the declared size to fill up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .codec import HEADER, HEADER_SIZE, DecodeError, parse_header
from .crc import crc64

_INITIAL_CAPACITY = 1 << 20  # 1 MiB: one 820x616 uint8 frame plus headroom
# Largest read while the next message's size is unknown: a big message's header arrives with at most this
# much of its body (copied once into the body's own buffer), the rest is read into that buffer directly.
_RECV_CHUNK = 1 << 16
_DIRECT_MIN = 1 << 16  # bodies at least this large get their own buffer
_DIRECT_FIRST = 1 << 20  # such a body's first buffer (bytes); the declared size is allocated once this filled


@dataclass
class Rejection:
    """Bytes thrown away: ``reason`` is a stable tag (used as a counter key), ``offset`` the stream
    position of the rejected header."""

    reason: str
    detail: str
    offset: int


class StreamParser:
    """Incremental OpenIGTLink framer with CRC checking, size limits and resynchronisation.

    Parameters
    ----------
    max_body_bytes : int
        Larger declared body sizes are rejected (``body_too_large``) without reading the body.
    check_crc : bool
        Verify CRC64 ECMA-182 of each body (on by default; off only for peers known to send zeros).
    """

    def __init__(self, *, max_body_bytes: int = 64 << 20, check_crc: bool = True):
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes: must be >= 0, got {max_body_bytes}")
        self.max_body_bytes = max_body_bytes
        self.check_crc = check_crc
        # Enough for the largest admissible message plus one read, and never more than 1 MiB to start with.
        self._initial = min(_INITIAL_CAPACITY, HEADER_SIZE + max_body_bytes + _RECV_CHUNK)
        self._buf = bytearray(self._initial)
        self._start = 0  # first unparsed byte
        self._end = 0  # one past the last received byte
        self._offset = 0  # stream position of _buf[0]
        self._resync = False  # an error was reported; skip silently until the next good message
        self._eof = False
        # Direct mode: the header of the message at _start is the last thing in _buf; its body goes here.
        self._body: np.ndarray | None = None  # uint8; uninitialised beyond _body_len
        self._body_size = 0  # declared size of the body being received (len(_body) reaches it in one step)
        self._body_len = 0  # bytes of _body received
        self._crc_len = 0  # bytes of _body covered by _body_crc
        self._body_crc = 0
        self.bytes_skipped = 0
        self.peak_capacity = len(self._buf)  # largest buffer ever held (bytes): bounded by the size limit

    # -- feeding -------------------------------------------------------------------------------
    def writable(self) -> memoryview:
        """A writable view for ``socket.recv_into``; large enough for the message being read."""
        if self._body is not None:
            if self._body_len == len(self._body) < self._body_size:
                self._grow_body()
            if self._body_len < len(self._body):
                return memoryview(self._body)[self._body_len:]
            self._end_body()  # complete but not parsed yet (feed() of several messages): back to _buf
        need = _RECV_CHUNK
        pending = self._end - self._start
        if pending >= HEADER_SIZE:
            fields = HEADER.unpack_from(self._buf, self._start)
            version, size = fields[0], fields[5]
            if version in (1, 2) and size <= self.max_body_bytes:
                missing = HEADER_SIZE + size - pending
                if missing > 0 and size >= _DIRECT_MIN:
                    return self._begin_body(size)
                need = max(need, missing)
        if len(self._buf) - self._end < need:
            self._compact(need)
        return memoryview(self._buf)[self._end:self._end + need]

    def commit(self, n: int) -> None:
        """Record that ``n`` bytes were written into the last :meth:`writable` view."""
        if self._body is not None:
            self._body_len += n
        else:
            self._end += n

    def feed(self, data: bytes) -> None:
        """Append ``data`` (for callers that already hold bytes)."""
        pos = 0
        while pos < len(data):
            view = self.writable()
            n = min(len(view), len(data) - pos)
            view[:n] = data[pos:pos + n]
            self.commit(n)
            pos += n

    def _begin_body(self, size: int) -> memoryview:
        """Enter direct mode for the header at ``_start``: move the body bytes already read into its buffer."""
        s = self._start + HEADER_SIZE
        have = self._end - s
        body = np.empty(min(size, max(_DIRECT_FIRST, have)), np.uint8)  # never sized by the declaration alone
        body[:have] = np.frombuffer(self._buf, np.uint8, have, s)
        self._end = s
        self._body, self._body_size, self._body_len, self._crc_len, self._body_crc = body, size, have, 0, 0
        self.peak_capacity = max(self.peak_capacity, self.buffered_bytes)
        return memoryview(body)[have:]

    def _grow_body(self) -> None:
        """The first part of a large body arrived: continue in a buffer of the declared size."""
        body = np.empty(self._body_size, np.uint8)
        body[:self._body_len] = self._body
        self._body = body
        self.peak_capacity = max(self.peak_capacity, self.buffered_bytes)

    def _end_body(self) -> None:
        """Leave direct mode, putting the body bytes back behind their header (for the generic path)."""
        body, have = self._body, self._body_len
        self._body = None
        if len(self._buf) - self._end < have:
            self._compact(have)
        self._buf[self._end:self._end + have] = memoryview(body)[:have]
        self._end += have

    def _compact(self, need: int) -> None:
        pending = self._end - self._start
        capacity = len(self._buf)
        if pending + need > capacity or (capacity > 8 * self._initial and pending + need < self._initial):
            capacity = max(self._initial, pending + need)
            new = bytearray(capacity)  # grow for a big message, or shrink back after one
            new[:pending] = self._buf[self._start:self._end]
            self._buf = new
            self.peak_capacity = max(self.peak_capacity, capacity)
        else:
            self._buf[:pending] = self._buf[self._start:self._end]
        self._offset += self._start
        self._start, self._end = 0, pending

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet parsed (bounded by the size limit plus one read)."""
        return self._end - self._start + (self._body_len if self._body is not None else 0)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of receive buffers held now (allocated, whether filled or not)."""
        return len(self._buf) + (len(self._body) if self._body is not None else 0)

    # -- parsing -------------------------------------------------------------------------------
    def frames(self):
        """Yield every complete ``(Header, body)`` or :class:`Rejection` available now."""
        while True:
            item = self._next()
            if item is None:
                return
            if item is not True:
                yield item

    def finish(self):
        """The stream ended: report an incomplete message and deliver any complete ones behind it."""
        self._eof = True
        yield from self.frames()
        self.bytes_skipped += self._end - self._start
        self._start = self._end
        self._eof = False
        self._resync = False

    def expire(self, reason: str = "stalled_body"):
        """The message being received took too long: reject it and rescan what arrived behind its header.

        Yields a :class:`Rejection` with ``reason`` (when a message was in progress), then every complete
        message found in the bytes already received, as :meth:`frames` does.
        """
        if self._body is not None:
            have, size = self._body_len, self._body_size
            self._end_body()
            detail = f"{have} of {size} declared body bytes arrived in time"
        else:
            detail = f"{self._end - self._start} bytes of an incomplete message"
        if self._end == self._start:
            return
        self._resync = False  # always reported: the stall is a new error even while resynchronising
        item = self._fail(reason, detail)
        if item is not True:
            yield item
        yield from self.frames()

    def _next(self):
        """One step: an item, True (progress without an item), or None (need more bytes)."""
        if self._body is not None:
            return self._next_direct()
        s, avail = self._start, self._end - self._start
        if avail < HEADER_SIZE:
            if self._eof and avail:
                return self._fail("truncated", f"{avail} bytes of header at end of stream", skip_all=True)
            return None
        version, _, _, _, _, size, crc = HEADER.unpack_from(self._buf, s)
        if version not in (1, 2):
            return self._fail("bad_header_version", f"version {version}")
        if size > self.max_body_bytes:
            return self._fail("body_too_large", f"declared body of {size} bytes > limit {self.max_body_bytes}")
        if avail < HEADER_SIZE + size:
            if self._eof:
                return self._fail("truncated", f"body of {size} bytes, {avail - HEADER_SIZE} present at end of stream")
            return None
        body_start = s + HEADER_SIZE
        body = self._buf[body_start:body_start + size]
        if self.check_crc and crc64(body) != crc:
            # Rescan from the next byte, not from the declared end: a truncated message followed by a good
            # one fails here too, and the good one starts inside the bytes read as this body.
            return self._fail("crc_mismatch", f"CRC64 {crc:#018x} != computed")
        try:
            header = parse_header(self._buf[s:body_start])
        except DecodeError as e:
            # Not trusted as framing even though the CRC matched: a truncated header followed by a good
            # message can read NUL padding as "size 0, CRC 0", and the good message starts inside it.
            return self._fail(e.reason, str(e))
        self._start = body_start + size
        self._resync = False
        return header, body

    def _next_direct(self):
        """:meth:`_next` in direct mode; anything but a complete good message goes back to the generic path."""
        body, have = self._body, self._body_len
        if self.check_crc and self._crc_len < have:  # overlaps the CRC with the arrival of the rest
            self._body_crc = crc64(memoryview(body)[self._crc_len:have], self._body_crc)
            self._crc_len = have
        if have < self._body_size and not self._eof:
            return None
        s = self._start
        header = None
        if have == self._body_size and (not self.check_crc or self._body_crc == HEADER.unpack_from(self._buf, s)[6]):
            try:
                header = parse_header(self._buf[s:s + HEADER_SIZE])
            except DecodeError:
                pass
        if header is None:  # truncated, CRC mismatch or bad header: report and resynchronise as usual
            self._end_body()
            return True
        self._body = None
        self._start = s + HEADER_SIZE
        self._offset += len(body)  # the body's stream bytes never passed through _buf
        self._resync = False
        return header, body

    def _fail(self, reason: str, detail: str, *, skip_all: bool = False):
        s = self._start
        report = None if self._resync else Rejection(reason, detail, self._offset + s)
        self._resync = True
        nxt = self._end if skip_all else self._scan(s + 1)
        self.bytes_skipped += nxt - s
        self._start = nxt
        return report if report is not None else True

    def _scan(self, pos: int) -> int:
        """First position >= ``pos`` that may start a header; keeps a possible partial header."""
        buf, end = self._buf, self._end
        while True:
            cands = [i for i in (buf.find(b"\x00\x01", pos, end), buf.find(b"\x00\x02", pos, end)) if i >= 0]
            if not cands:
                return max(pos, end - 1) if not self._eof else end
            p = min(cands)
            if end - p < HEADER_SIZE:
                return p if not self._eof else end
            if self._plausible(p):
                return p
            pos = p + 1

    def _plausible(self, p: int) -> bool:
        if self._end - p < HEADER_SIZE:
            return False
        try:
            header = parse_header(self._buf[p:p + HEADER_SIZE])
        except DecodeError:
            return False
        return header.body_size <= self.max_body_bytes
