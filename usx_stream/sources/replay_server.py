"""A PlusServer-like OpenIGTLink server that streams a PLUS sequence file.

Per frame, in PlusServer's order and all stamped with the frame's timestamp (plus ``time_offset_s``):

1. IMAGE ``Image_Reference`` with ``ImageToReference`` embedded when it can be computed from the frame's
   transforms and ``calibration`` (e.g. ImageToProbe from the device set); otherwise IMAGE ``Image_Image``
   with an identity matrix. Version-2 clients also get the frame's fields as metadata:
   ``<Name>Transform`` (16 numbers, row-major, full precision), ``<Name>TransformStatus``, ``ImageStatus``,
   ``Timestamp`` and every other per-frame field.
2. TRANSFORM ``XToY`` for every transform of the frame (metadata ``TransformStatus`` for version 2).

When the file has been sent (and ``loop`` is off) every client gets a STATUS(OK) named ``EndOfStream``
(:data:`END_OF_STREAM_DEVICE`): OpenIGTLink has no end-of-stream message, PLUS clients ignore unknown
STATUS devices, and :class:`~usx_stream.sources.igtl_source.IgtlFrameSource` finishes on it.

Like PlusServer, a client gets version-2 messages only after it sent one itself; our receiver does so
at connect. Binds 127.0.0.1 unless told otherwise. Rate and looping as in :mod:`.replay`.

If streaming fails (a file damaged after :func:`~.replay.check_sequence` passed, or a bug), the thread
stops, :attr:`ReplayServer.error` holds the exception and :attr:`ReplayServer.done` is set; the owner
reports it. A bug is also logged with its traceback here.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from ..frames import TrackedFrame
from ..igtl.codec import Message
from ..igtl.codec_basic import StatusContent
from ..igtl.codec_image import ImageContent
from ..igtl.endpoints import Server
from ..errors import InputError
from ..igtl.transport import TransportOptions
from ..transforms import TransformError, TransformRepository
from .replay import Pacer, looped_frames, sequence_files

logger = logging.getLogger(__name__)

END_OF_STREAM_DEVICE = "EndOfStream"


def frame_messages(frame: TrackedFrame, *, calibration: TransformRepository | None = None,
                   reference: str = "Reference", time_offset_s: float = 0.0) -> list[Message]:
    """The messages PlusServer would send for ``frame`` (header version 2; see the module docstring)."""
    t = frame.timestamp + time_offset_s
    name = f"ImageTo{reference}"
    device, matrix = "Image_Image", np.eye(4)
    try:
        matrix, embedded_ok = frame.repository(calibration).get_with_status(name)
        device = f"Image_{reference}"
    except TransformError:
        embedded_ok = True
    meta = {"Timestamp": repr(t), "ImageStatus": "OK" if frame.image_status else "INVALID"}
    if device != "Image_Image":
        meta["TransformStatus"] = "OK" if embedded_ok else "INVALID"
    for tname, m in frame.transforms.items():
        meta[f"{tname}Transform"] = " ".join(repr(float(v)) for v in np.asarray(m, dtype=np.float64).reshape(-1))
        meta[f"{tname}TransformStatus"] = "OK" if frame.transform_status.get(tname, True) else "INVALID"
    meta.update(frame.fields)
    msgs = [Message("IMAGE", device, ImageContent.from_2d(frame.pixels, matrix), t, meta, 2)]
    for tname, m in frame.transforms.items():
        status = "OK" if frame.transform_status.get(tname, True) else "INVALID"
        msgs.append(Message("TRANSFORM", tname, m, t, {"TransformStatus": status}, 2))
    return msgs


class ReplayServer:
    """Serve ``path`` to every client that connects.

    Parameters
    ----------
    path : str or Path
        PLUS sequence file.
    host, port : str, int
        Listening address (port 0 picks a free port; see :attr:`port`).
    rate : float or None
        None = recorded rate, > 0 = frames per second, 0 = as fast as possible.
    speed : float
        Real-time factor when following the recorded timestamps (``rate=None``).
    loop : bool
    calibration : TransformRepository or None
        Extra transforms (ImageToProbe) used to compute the embedded ImageToReference.
    min_clients : int
        Start streaming once this many clients are connected (0 = at once, like PlusServer).
    time_offset_s : float
        Added to every timestamp (e.g. to turn recorder time into UTC).

    Raises
    ------
    InputError
        ``path`` is neither a sequence file nor a recording folder, or ``min_clients`` < 0.
    """

    def __init__(self, path: str | Path, *, host: str = "127.0.0.1", port: int = 18944, rate: float | None = None,
                 loop: bool = False, calibration: TransformRepository | None = None, min_clients: int = 0,
                 time_offset_s: float = 0.0, options: TransportOptions | None = None, speed: float = 1.0):
        self.path = Path(path)
        sequence_files(self.path)  # a missing file or an empty folder fails here, not in the thread
        if min_clients < 0:
            raise InputError(f"min_clients: must be >= 0, got {min_clients}")
        self.server = Server(host, port, options=options, match_peer_version=True)
        self.loop, self.calibration, self.min_clients = loop, calibration, min_clients
        self.time_offset_s = time_offset_s
        self.frames_sent = 0
        self.done = threading.Event()  # set when the file (and every loop) has been sent, or streaming failed
        self.error: BaseException | None = None  # why streaming failed; written by the replay thread before done
        self._stop = threading.Event()
        self._pacer = Pacer(rate, self._stop, speed=speed)
        self._block_s = self.server.options.send_timeout_s if rate == 0 else 0.0
        self._thread = threading.Thread(target=self._run, name="replay-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> "ReplayServer":
        self.server.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.server.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_for_clients(self) -> bool:
        while not self.server.wait_for_clients(self.min_clients, timeout=0.2):
            if self._stop.is_set():
                return False
        # Give each client a moment to send its version-2 hello, so the first frame already goes out
        # in the version it asked for (waits on the connection's first-message event, not a sleep).
        for conn in list(self.server.connections):
            conn.first_message.wait(timeout=0.5)
        return True

    def _run(self) -> None:
        try:
            if self.min_clients and not self._wait_for_clients():
                return
            for frame in looped_frames(self.path, loop=self.loop, stop=self._stop):
                if not self._pacer.wait(frame.timestamp):
                    return
                for msg in frame_messages(frame, calibration=self.calibration, time_offset_s=self.time_offset_s):
                    # As fast as possible means as fast as the clients read: wait for queue space.
                    self.server.broadcast(msg, block_s=self._block_s)
                self.frames_sent += 1
            if not self._stop.is_set():
                eos = Message("STATUS", END_OF_STREAM_DEVICE, StatusContent(message="end of replay"), None, {}, 2)
                self.server.broadcast(eos, block_s=self.server.options.send_timeout_s)
        except InputError as e:  # the file went bad under us: the owner reports it (error, done)
            logger.debug("replay of %s stopped after %d frames: %s", self.path, self.frames_sent, e)
            self.error = e
        except Exception as e:  # a bug: keep the traceback, and let the owner know
            logger.exception("replay of %s failed after %d frames", self.path, self.frames_sent)
            self.error = e
        finally:
            self.done.set()
