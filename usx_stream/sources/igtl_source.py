"""Live frames from a PlusServer (or the replay server) over OpenIGTLink, as a :class:`FrameSource`.

Wiring: :class:`~usx_stream.igtl.endpoints.Client` (socket threads, reconnects, sends a version-2 hello
so PlusServer answers with metadata) -> this source's thread -> :class:`~usx_stream.igtl.receiver.PlusReceiver`
(pairing, interpolation, PLUS naming) -> the output queue of TrackedFrame and XrayImage objects.
A lost connection is re-established and frames keep coming; the source finishes only on an
``EndOfStream`` STATUS (sent by our replay server at the end of a file, never by PlusServer), after
releasing every frame still waiting for its transforms.
"""

from __future__ import annotations

import logging

from ..igtl.endpoints import Client, hello_message
from ..igtl.receiver import PlusReceiver, ReceiverConfig
from ..igtl.transport import TransportOptions
from .base import FrameSource
from .replay_server import END_OF_STREAM_DEVICE

logger = logging.getLogger(__name__)


class IgtlFrameSource(FrameSource):
    """Connect to ``host:port`` and turn what arrives into frames.

    Parameters
    ----------
    host, port : str, int
    config : ReceiverConfig or None
        Device names and pairing timing.
    options : TransportOptions or None
    queue_size : int
        Output depth (frames); when the consumer falls behind the newest frame is dropped and counted.
    backoff_s : (float, float)
        First and largest wait between reconnection attempts, s.
    connect_timeout_s : float
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 18944, *, config: ReceiverConfig | None = None,
                 options: TransportOptions | None = None, queue_size: int = 256,
                 backoff_s: tuple[float, float] = (0.05, 0.5), connect_timeout_s: float = 1.0):
        super().__init__(queue_size=queue_size, block_when_full=False)
        self.receiver = PlusReceiver(config)
        self.client = Client(host, port, options=options, hello=hello_message(), backoff_s=backoff_s,
                             connect_timeout_s=connect_timeout_s)
        self._rejected_kinds: set[str] = set()
        # Wake often enough to release images whose pairing wait ran out.
        self._poll_s = max(0.005, self.receiver.config.max_wait_s / 4)

    def start(self) -> "IgtlFrameSource":
        self.client.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self.client.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.client.get(timeout=self._poll_s)
            if msg is not None and msg.type == "STATUS" and msg.device_name == END_OF_STREAM_DEVICE:
                for item in self.receiver.flush():
                    self._emit(item)
                self.counts["end_of_stream"] += 1
                self.client.stop()  # the stream ended on purpose: no reconnecting to a server that is going away
                return
            try:
                items = self.receiver.poll() if msg is None else self.receiver.feed(msg)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                # A message our codecs decoded but PLUS conventions cannot place (a garbled Timestamp field,
                # an X-ray IMAGE without a plane...): skip it, count it, log the first of each kind; the
                # source thread must outlive whatever the upstream sends.
                self._reject(msg, e)
                continue
            for item in items:
                self._emit(item)

    def _reject(self, msg, error: Exception) -> None:
        key = f"{getattr(msg, 'type', '?')}:{type(error).__name__}"
        self.counts["messages_rejected"] += 1
        if key not in self._rejected_kinds:
            self._rejected_kinds.add(key)
            logger.warning("message %s %r skipped: %s (later %s errors are only counted)",
                           getattr(msg, "type", "?"), getattr(msg, "device_name", "?"), error, key)

    def stats(self) -> dict:
        out = super().stats()
        out["receiver"] = dict(self.receiver.counts)
        out["transport"] = self.client.stats.snapshot()
        return out
