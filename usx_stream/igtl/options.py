"""Tunables of an OpenIGTLink connection (:class:`TransportOptions`) and the publish-only preset.

Kept apart from :mod:`.transport` so that the launch loader and the publishers can name options without
the socket machinery; :mod:`.transport` re-exports everything here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

PUBLISH_ONLY_MAX_BODY = 64 << 10  # bytes: the largest message a publish-only port accepts from a client


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
    body_timeout_s : a message must arrive whole within this long of its first bytes, else it is rejected
        as ``stalled_body`` (see :mod:`.transport`); 0 = never. 2 s lets a 64 MiB body through at
        270 Mbit/s; B-mode frames (< 1 MiB) and C-arm images (a few MiB) need far less.
    discard_inbound : publish-only endpoint: frame, check and count what peers send, never decode or
        queue it — except message types listed in ``keep_inbound_types``.
    keep_inbound_types : with ``discard_inbound``, the message types still decoded and queued (the
        publisher keeps ``POINT``: level landmarks from the navigation display).
    close_on_oversize : close a connection whose peer declares a body over ``max_body_bytes`` (instead of
        skipping the body and resynchronising): for ports where no legitimate peer sends large messages.
    """

    keepalive_interval_s: float = 0.25
    peer_timeout_s: float = 1.0
    send_timeout_s: float = 5.0
    max_body_bytes: int = 64 << 20
    check_crc: bool = True
    inbound_queue: int = 512
    outbound_queue: int = 256
    deliver_keepalives: bool = False
    body_timeout_s: float = 2.0
    discard_inbound: bool = False
    keep_inbound_types: tuple[str, ...] = ()
    close_on_oversize: bool = False

    def __post_init__(self) -> None:
        for name in ("keepalive_interval_s", "peer_timeout_s", "send_timeout_s", "body_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"TransportOptions.{name}: must be >= 0, got {getattr(self, name)!r}")
        for name in ("max_body_bytes", "inbound_queue", "outbound_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransportOptions.{name}: must be >= 1, got {getattr(self, name)!r}")


def publish_only_options(**overrides) -> TransportOptions:
    """Options for a port that only sends (the POLYDATA server): inbound messages are discarded but for
    POINT (level landmarks, a few hundred bytes each, into a 16-message queue whose overflow is counted),
    bodies over :data:`PUBLISH_ONLY_MAX_BODY` (64 KiB) close the connection, and silent clients are kept
    (a viewer may never send anything). ``overrides`` replace any of these fields."""
    base = TransportOptions(peer_timeout_s=0, max_body_bytes=PUBLISH_ONLY_MAX_BODY, inbound_queue=16,
                            discard_inbound=True, keep_inbound_types=("POINT",), close_on_oversize=True)
    return replace(base, **overrides)
