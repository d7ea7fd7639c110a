"""Frames already in memory (a simulated session, frames a library user holds) as a frame source.

The source hands its items over in order, as fast as the consumer takes them (it waits rather than
drops), then finishes: the node compounds every frame exactly as it would from a file or a socket.
"""

from __future__ import annotations

from typing import Iterable

from .base import FrameSource


class MemorySource(FrameSource):
    """Serve ``items`` (:class:`~usx_stream.frames.TrackedFrame` and/or ``XrayImage``) once, in order.

    Parameters
    ----------
    items : iterable
        Consumed lazily on the source's thread (an iterator is fine: every item is emitted once).
    queue_size : int
        Output queue depth (items); the source waits when it is full.
    """

    def __init__(self, items: Iterable, *, queue_size: int = 256):
        super().__init__(queue_size=queue_size, block_when_full=True)
        self._source_items = items

    def _run(self) -> None:
        for item in self._source_items:
            if self._stop.is_set() or not self._emit(item):
                return
