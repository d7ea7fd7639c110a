"""Replay a PLUS sequence file (``.igs.mha`` / ``.igs.nrrd``) in process, as a :class:`FrameSource`.

A recording folder of the node (``record.dir``: sequence chunks ``inputs_NNNN.igs.mha``) replays too, its
chunks one after the other, so a session recorded in the operating room can be run through the node again.

Pacing (shared with the replay server): ``rate=None`` follows the recorded timestamps, ``rate=R > 0``
sends R frames per second, ``rate=0`` goes as fast as the consumer takes them (nothing dropped).
With ``loop=True`` the file repeats; each repetition's timestamps are shifted by the recording's
duration plus one frame period, so time keeps increasing as a live stream's would.

:func:`check_sequence` reads a whole file once before it is served, so a truncated or malformed file
is reported before the first frame goes out rather than in the middle of a stream.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from ..frames import TrackedFrame
from .base import FrameSource


@dataclasses.dataclass(frozen=True)
class SequenceCheck:
    """What one full read of a sequence file found.

    Attributes
    ----------
    frames : int
        Number of frames (every one readable).
    duration_s : float
        Last timestamp minus first, s.
    first : TrackedFrame
        Frame 0 (its transforms tell which chains a calibration must complete).
    """

    frames: int
    duration_s: float
    first: TrackedFrame


def sequence_path(path: str | Path) -> Path:
    """``path`` as a Path; InputError when it does not name an existing file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: sequence file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file (expected a PLUS sequence file, .igs.mha or .igs.nrrd)")
    return path


def sequence_files(path: str | Path) -> list[Path]:
    """The sequence file ``path`` names, or the chunks of the recording folder it names, in order.

    Raises
    ------
    InputError
        Nothing there, or a folder without recorded chunks.
    """
    from ..node.recording import chunk_paths

    path = Path(path)
    if path.is_dir():
        chunks = chunk_paths(path)
        if not chunks:
            raise InputError(f"{path}: a folder without recorded chunks (inputs_NNNN.igs.mha); expected a PLUS "
                             f"sequence file (.igs.mha, .igs.nrrd) or the node's record.dir")
        return chunks
    return [sequence_path(path)]


def sequence_frames(path: str | Path) -> Iterator[TrackedFrame]:
    """Every frame of :func:`sequence_files` (a file, or a recording folder's chunks), one at a time."""
    from ..io.sequence import iter_frames

    for file in sequence_files(path):
        yield from iter_frames(file)


def check_sequence(path: str | Path) -> SequenceCheck:
    """Read every frame of ``path`` once (one frame in memory at a time) and summarise the file.

    Raises
    ------
    InputError
        The file is missing, its header is malformed, its pixel data is shorter than the header says
        (the message names the first incomplete frame), or it holds no frame.
    """
    first = last = None
    n = 0
    for frame in sequence_frames(path):
        first = frame if first is None else first
        last = frame
        n += 1
    if first is None:
        raise InputError(f"{path}: the sequence holds no frame")
    return SequenceCheck(frames=n, duration_s=float(last.timestamp - first.timestamp), first=first)


class Pacer:
    """Waits until each frame is due; ``wait`` returns False when ``stop`` was set meanwhile.

    Parameters
    ----------
    rate : float or None
        None = recorded rate (timestamps, s), > 0 = frames per second, 0 = no waiting.
    stop : threading.Event
    speed : float
        With ``rate=None``: play the recording this many times faster than real time.
    """

    def __init__(self, rate: float | None, stop: threading.Event, *, speed: float = 1.0):
        if rate is not None and rate < 0:
            raise InputError(f"rate: must be None (recorded), 0 (as fast as possible) or > 0 fps, got {rate!r}")
        if speed <= 0:
            raise InputError(f"speed: must be > 0, got {speed!r}")
        self.rate = rate
        self.speed = speed
        self._stop = stop
        self._t0_wall: float | None = None
        self._t0_stream = 0.0
        self._n = 0

    def wait(self, timestamp: float) -> bool:
        if self._t0_wall is None:
            self._t0_wall, self._t0_stream = time.monotonic(), timestamp
        if self.rate == 0:
            due = self._t0_wall
        elif self.rate is None:
            due = self._t0_wall + (timestamp - self._t0_stream) / self.speed
        else:
            due = self._t0_wall + self._n / self.rate
        self._n += 1
        delay = due - time.monotonic()
        if delay > 0:
            return not self._stop.wait(delay)
        return not self._stop.is_set()


def looped_frames(path: str | Path, *, loop: bool, stop: threading.Event) -> Iterator[TrackedFrame]:
    """Frames of ``path`` (a file, or a recording folder's chunks: :func:`sequence_files`; read one at a
    time), repeated with shifted timestamps when ``loop``."""
    sequence_files(path)  # fails before the first frame, not in the middle of the stream
    shift, index = 0.0, 0
    while not stop.is_set():
        first = last = None
        period = 0.0
        for frame in sequence_frames(path):
            if first is None:
                first = frame.timestamp
            elif last is not None:
                period = frame.timestamp - last
            last = frame.timestamp
            yield dataclasses.replace(frame, timestamp=frame.timestamp + shift, index=index)
            index += 1
            if stop.is_set():
                return
        if not loop or first is None:
            return
        shift += (last - first) + max(period, 1e-3)


class SequenceReplay(FrameSource):
    """A sequence file as a live-like source.

    Parameters
    ----------
    path : str or Path
    rate : float or None
        See :class:`Pacer`.
    loop : bool
    speed : float
        Real-time factor when following the recorded timestamps (``rate=None``).
    queue_size : int
    """

    def __init__(self, path: str | Path, *, rate: float | None = None, loop: bool = False, speed: float = 1.0,
                 queue_size: int = 64):
        super().__init__(queue_size=queue_size, block_when_full=(rate == 0))
        self.path = Path(path)
        sequence_files(self.path)  # a missing file or an empty folder fails here, not in the thread
        self.pacer = Pacer(rate, self._stop, speed=speed)
        self.loop = loop

    def _run(self) -> None:
        for frame in looped_frames(self.path, loop=self.loop, stop=self._stop):
            if not self.pacer.wait(frame.timestamp):
                return
            self._emit(frame)
