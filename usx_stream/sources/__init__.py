"""Frame sources behind one interface (:class:`~usx_stream.sources.base.FrameSource`): live OpenIGTLink
(:mod:`igtl_source`), sequence-file replay in process (:mod:`replay`), and a PlusServer-like replay
server that streams a sequence file over OpenIGTLink (:mod:`replay_server`)."""

from .base import FrameSource

__all__ = ["FrameSource"]
