"""Thread-safe counters and the bounded message queues between the socket threads and their users."""

from __future__ import annotations

import collections
import queue
import threading


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

    def add_each(self, *keys: str) -> None:
        """Add 1 to each of ``keys`` (one lock round trip for the per-message counters)."""
        with self._lock:
            for key in keys:
                self._n[key] += 1

    def peak(self, key: str, value: int) -> None:
        """Keep the largest ``value`` seen under ``key``."""
        with self._lock:
            self._n[key] = max(self._n[key], value)

    def reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1

    def closed(self, reason: str) -> int:
        """Count a connection closed for ``reason``; returns how many closed for it so far."""
        with self._lock:
            self._closed[reason] += 1
            return self._closed[reason]

    def snapshot(self) -> dict:
        """``{counter: int, ..., "rejected": {reason: n}, "closed": {reason: n}}``."""
        with self._lock:
            out = dict(self._n)
            out["rejected"] = dict(self._rejected)
            out["closed"] = dict(self._closed)
        return out


_CLOSED = object()  # queued by close(): every get() that reaches it returns None (and puts it back)


class MessageQueue:
    """Bounded FIFO between I/O threads and a consumer; ``put`` never blocks (drops are counted).

    Items travel through a ``queue.SimpleQueue``: a blocked ``get`` is woken from C, without the Python-level
    ``Condition`` machinery on either side (that hand-off sits on the latency path of every message).
    Producers serialise on ``_lock``, which keeps the bound exact with several of them.
    """

    def __init__(self, maxsize: int, stats: TransportStats, drop_counter: str):
        if maxsize < 1:
            raise ValueError(f"maxsize: must be >= 1, got {maxsize}")
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # producers waiting for room (put with timeout)
        self._space_waiters = 0
        self._maxsize = maxsize
        self._stats = stats
        self._drop_counter = drop_counter
        self._closed = False

    def close(self) -> None:
        """Refuse further items and wake every waiter (items already queued can still be read)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._q.put(_CLOSED)
            self._space.notify_all()

    def put(self, item, timeout: float = 0.0) -> bool:
        """Append ``item``; when full wait up to ``timeout`` s for space, then drop it (counted).

        Returns False without counting a drop when the queue is closed.
        """
        with self._lock:
            if not self._closed and self._q.qsize() >= self._maxsize and timeout > 0:
                self._space_waiters += 1
                try:
                    self._space.wait_for(lambda: self._q.qsize() < self._maxsize or self._closed, timeout)
                finally:
                    self._space_waiters -= 1
            if self._closed:
                return False
            if self._q.qsize() >= self._maxsize:
                self._stats.add(self._drop_counter)
                return False
            self._q.put(item)
        return True

    def get(self, timeout: float | None = None):
        """Oldest item, or None after ``timeout`` seconds (None = wait forever) or once closed and empty."""
        try:
            item = self._q.get(timeout=None if timeout is None else max(0.0, timeout))
        except queue.Empty:
            return None
        if item is _CLOSED:
            self._q.put(_CLOSED)  # for the next reader
            return None
        # Read after the item left: a producer that registers later sees the room itself (see put).
        if self._space_waiters:
            with self._lock:
                self._space.notify()
        return item

    def __len__(self) -> int:
        return max(0, self._q.qsize() - self._closed)
