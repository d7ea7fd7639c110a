"""The one interface every frame source implements.

A source produces :class:`~usx_stream.frames.TrackedFrame` objects (and, for live OpenIGTLink,
:class:`~usx_stream.frames.XrayImage` objects) on its own thread into a bounded queue. Consumers call
``get(timeout)`` or iterate; iteration ends when the source is finished and its queue is drained.
When the queue is full the source either waits (``block_when_full``: file replay as fast as possible,
nothing is lost) or drops the newest item and counts it (live and paced sources must not stall).
"""

from __future__ import annotations

import abc
import collections
import logging
import threading
from typing import Iterator

logger = logging.getLogger(__name__)


class FrameSource(abc.ABC):
    """Base class: subclasses implement :meth:`_run` (the producing loop) and call :meth:`_emit`.

    Parameters
    ----------
    queue_size : int
        Output queue depth (items).
    block_when_full : bool
        Wait for the consumer instead of dropping when the queue is full.
    """

    def __init__(self, *, queue_size: int = 256, block_when_full: bool = False):
        if queue_size < 1:
            raise ValueError(f"queue_size: must be >= 1, got {queue_size}")
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()  # guards _items, _finished and counts
        self._queue_size = queue_size
        self._block = block_when_full
        self._finished = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.counts = collections.Counter()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "FrameSource":
        self._thread = threading.Thread(target=self._main, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            self._run()
        except Exception as e:  # hand the error to the consumer (iteration re-raises it) and log it here
            self.error = e
            logger.exception("%s stopped on an error", type(self).__name__)
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    @abc.abstractmethod
    def _run(self) -> None:
        """Produce items with :meth:`_emit` until done or ``self._stop`` is set."""

    # -- producer side ----------------------------------------------------------------------------
    def _emit(self, item) -> bool:
        with self._cond:
            if self._block:
                self._cond.wait_for(lambda: len(self._items) < self._queue_size or self._stop.is_set())
            if len(self._items) >= self._queue_size or self._stop.is_set():
                self.counts["dropped"] += 1
                return False
            self._items.append(item)
            self.counts["emitted"] += 1
            self._cond.notify_all()
        return True

    # -- consumer side ----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True once the source will produce nothing more (its queue may still hold items)."""
        return self._finished

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Block until the source has stopped producing; True if it has."""
        with self._cond:
            return self._cond.wait_for(lambda: self._finished, timeout)

    def get(self, timeout: float | None = None):
        """Oldest item, or None when ``timeout`` passed or the source finished with an empty queue."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._finished, timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def __iter__(self) -> Iterator:
        while True:
            item = self.get()
            if item is None:
                if self.error is not None:
                    raise RuntimeError(f"{type(self).__name__} failed") from self.error
                return
            yield item

    def stats(self) -> dict:
        """Counters (``emitted``, ``dropped`` and source-specific ones)."""
        with self._cond:
            return dict(self.counts)
