"""Session recording: the node's inputs and every published surface, written as they happen.

Layout under ``record.dir``::

    inputs_0000.igs.mha, inputs_0001.igs.mha, ...   tracked frames, PLUS sequence files ("chunks"), numbered
                                                    in order (sort numerically past 9999)
    xray_0000.npz, ...                              each X-ray item received: pixels and/or labelmap, spacing, timestamp
    surfaces/NNNNNN_L3_Completed.ply                every published surface, numbered by update
    surfaces/index.jsonl                            one line per surface: update, name, timestamp, metadata
    recording_stats.json                            the recorder's counters (:meth:`SessionRecorder.stats`) at close

What a kill can lose. Frames are held in memory and written as one chunk when the held frames cover
``max_chunk_s`` of stream (default 1 s), or have waited ``max_chunk_s`` of wall-clock time since the first
of them arrived, or number ``chunk_frames``, whichever comes first. Stream time is read from the frame
timestamps, each frame counting until the next one (so 30 frames at 30 fps cover 1 s): a replay
reproduces the same chunks. The wall-clock bound covers sources whose timestamps stand still or jump
back; it is checked when a frame arrives and when the node calls :meth:`SessionRecorder.flush_due`
(e.g. whenever ingest waits for a frame). So a SIGKILL loses at most the frames of the last
``max_chunk_s``. Every file is written as ``<name>.part`` and renamed when complete
(``os.replace``): a reader never sees a half-written file, and a ``*.part`` file a kill leaves behind
is an incomplete write to ignore (or delete). This survives the process being killed, not the machine
losing power (no fsync).

A chunk never mixes geometries: a frame whose pixel size, components or dtype differ from the held
frames' starts a new chunk. Frame metadata of any content is written escaped and non-finite transforms
as INVALID (see :mod:`usx_stream.io.header_escape`); the number of such fields is counted.

The recorder never stops the node: any failure to write is logged once per reason (then at the 10th,
100th, ... time), counted, the frames of a failed chunk are counted as lost, and recording goes on with
the next chunk (its number skipped: a missing number is a chunk that could not be written).
:meth:`SessionRecorder.close` never raises.

Threads: frames and X-rays come from the ingest thread, surfaces from the completion thread, ``close``
from whoever stops the node; each kind of state has its own lock. Writing happens on the calling thread
and costs about as much as compressing the chunk (level 1 zlib).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..frames import Surface, TrackedFrame, XrayImage

log = logging.getLogger(__name__)

_CHUNK_NAME = re.compile(r"^inputs_(\d+)\.igs\.(?:mha|nrrd)$")  # written as .mha; converted to NRRD reads too
_XRAY_NAME = re.compile(r"^xray_(\d+)\.npz$")
_SURFACE_NAME = re.compile(r"^(\d+)_.*\.ply$")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_COUNTERS = ("frames_recorded", "frames_lost", "frames_held", "chunks_written", "write_errors",
             "fields_sanitised", "fields_dropped", "transforms_invalid", "xrays_recorded", "surfaces_recorded")


class SessionRecorder:
    """Record a session under ``record.dir`` (launch-file table ``[record]``).

    Parameters
    ----------
    record
        The ``[record]`` table: ``dir`` (folder), ``inputs`` (record frames and X-rays), ``surfaces``
        (record published surfaces), ``compress`` (zlib-compress the sequence files).
    chunk_frames : int
        Most frames per chunk file (a cap; the time bound usually comes first).
    max_chunk_s : float
        Most stream time (frame timestamps) and most wall-clock time, seconds, that frames are held
        in memory before they are written; what a kill can lose.
    clock : callable
        Wall clock, seconds (``time.monotonic``); read once per frame and in :meth:`flush_due`.

    Notes
    -----
    Numbering continues after the files already in ``record.dir``, so a node restarted after a kill
    with the same folder adds to the recording instead of overwriting it.
    """

    def __init__(self, record, *, chunk_frames: int = 300, max_chunk_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if chunk_frames < 1:
            raise ValueError(f"record.chunk_frames: must be >= 1, got {chunk_frames}")
        if not max_chunk_s > 0:
            raise ValueError(f"record.max_chunk_s: must be > 0 seconds, got {max_chunk_s}")
        self.dir = Path(record.dir)
        self.inputs, self.surfaces, self.compress = record.inputs, record.surfaces, record.compress
        self.chunk_frames, self.max_chunk_s, self._clock = int(chunk_frames), float(max_chunk_s), clock
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.surfaces:
            (self.dir / "surfaces").mkdir(exist_ok=True)
        # ingest thread (and close): the held frames and the counters
        self._lock = threading.Lock()
        self._held: list[TrackedFrame] = []
        self._held_key: tuple | None = None
        self._held_since = 0.0  # clock() when the first held frame arrived
        self._held_ts: list[float] = []  # finite timestamps of the held frames, arrival order
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._lost_by_reason: dict[str, int] = {}
        self._reasons: dict[str, int] = {}  # log rate limit: occurrences per reason
        self._closed = False
        self._chunks = _next_number(self.dir, _CHUNK_NAME)
        self._xrays = _next_number(self.dir, _XRAY_NAME)
        # completion thread: surfaces
        self._surface_lock = threading.Lock()
        self._updates = _next_number(self.dir / "surfaces", _SURFACE_NAME)
        if self._chunks or self._xrays or self._updates:
            log.info("%s already holds a recording: numbering continues at chunk %d, X-ray %d, update %d",
                     self.dir, self._chunks, self._xrays, self._updates)

    # ------------------------------------------------------------------ frames
    def add_frame(self, frame: TrackedFrame) -> None:
        """Hold ``frame`` and write the held frames when a bound is reached; never raises."""
        if not self.inputs:
            return
        with self._lock:
            if self._closed:
                self._lose(1, "recorder closed", f"frame {getattr(frame, 'index', '?')} arrived after close()")
                return
            try:
                key = _geometry_key(frame)
                timestamp = float(frame.timestamp)
            except (TypeError, ValueError, AttributeError) as e:
                self._lose(1, "frame cannot be written", str(e))
                return
            try:
                if self._held and None not in (key, self._held_key) and key != self._held_key:
                    self._write_held()  # one file, one geometry
                if not self._held:
                    self._held_since = self._clock()
                self._held.append(frame)
                self._held_key = self._held_key or key
                if math.isfinite(timestamp):
                    self._held_ts.append(timestamp)
                if self._due():
                    self._write_held()
            except Exception as e:  # the recorder must never stop the node
                self._failed(e, "add_frame")

    def flush_due(self) -> None:
        """Write the held frames if the first of them arrived ``max_chunk_s`` ago or more; never raises.

        For the node to call while no frame arrives, so held frames never wait longer than that.
        """
        with self._lock:
            try:
                if self._held and self._clock() - self._held_since >= self.max_chunk_s:
                    self._write_held()
            except Exception as e:
                self._failed(e, "flush_due")

    def flush(self) -> None:
        """Write the held frames now; never raises."""
        with self._lock:
            try:
                self._write_held()
            except Exception as e:
                self._failed(e, "flush")

    def _due(self) -> bool:
        if len(self._held) >= self.chunk_frames:
            return True
        if self._clock() - self._held_since >= self.max_chunk_s:
            return True
        ts = self._held_ts
        if len(ts) >= 2 and ts[-1] >= ts[-2] >= ts[0]:
            covered = ts[-1] - ts[0] + (ts[-1] - ts[-2])  # the last frame lasts as long as the one before
            return covered >= self.max_chunk_s - 1e-9
        return False

    def _write_held(self) -> None:
        """Write the held frames as the next chunk (caller holds ``_lock``)."""
        if not self._held:
            return
        from ..io.sequence_write import write_sequence_report

        frames, self._held, self._held_key, self._held_ts = self._held, [], None, []
        path = self.dir / f"inputs_{self._chunks:04d}.igs.mha"
        self._chunks += 1
        try:
            report = write_sequence_report(path, frames, compress=self.compress)
        except Exception as e:  # anything: a full disk, a frame no header can hold, a bug
            self._counts["write_errors"] += 1
            self._lose(len(frames), f"write failed ({type(e).__name__})", f"{path.name}: {e}")
            return
        c = self._counts
        c["chunks_written"] += 1
        c["frames_recorded"] += report.frames
        c["fields_sanitised"] += report.fields_escaped
        c["fields_dropped"] += report.fields_dropped
        c["transforms_invalid"] += report.transforms_invalid
        for note in report.notes or ():
            self._log_rate_limited("metadata changed to be written", f"{path.name}: {note}")
        log.debug("recorded %d frames to %s", report.frames, path)

    def _lose(self, n: int, reason: str, detail: str) -> None:
        self._counts["frames_lost"] += n
        self._lost_by_reason[reason] = self._lost_by_reason.get(reason, 0) + n
        self._log_rate_limited(reason, f"{n} frame(s) not recorded: {detail}")

    def _failed(self, e: Exception, where: str) -> None:
        self._counts["write_errors"] += 1
        self._log_rate_limited(f"{where} failed ({type(e).__name__})", f"{self.dir}: {e!r}")

    def _log_rate_limited(self, reason: str, message: str) -> None:
        """Log the first occurrence of ``reason`` and then its 10th, 100th, ... (the rest at debug)."""
        n = self._reasons[reason] = self._reasons.get(reason, 0) + 1
        if n == 1 or str(n).rstrip("0") == "1":
            log.warning("recording: %s: %s%s", reason, message, f" ({n} times so far)" if n > 1 else "")
        else:
            log.debug("recording: %s: %s", reason, message)

    # ------------------------------------------------------------------ X-rays and surfaces
    def add_xray(self, xray: XrayImage) -> None:
        """Write one X-ray item as ``xray_NNNN.npz`` (atomically); never raises."""
        if not self.inputs:
            return
        with self._lock:
            path = self.dir / f"xray_{self._xrays:04d}.npz"
            self._xrays += 1
            try:
                arrays = {"pixel_spacing_mm": np.asarray(xray.pixel_spacing_mm),
                          "timestamp": np.float64(xray.timestamp)}
                for name in ("pixels", "labelmap"):  # an item may carry either part alone
                    if getattr(xray, name) is not None:
                        arrays[name] = np.asarray(getattr(xray, name))
                _write_atomic(path, lambda f: np.savez_compressed(f, **arrays))
                self._counts["xrays_recorded"] += 1
            except Exception as e:
                self._failed(e, f"X-ray {path.name}")

    def add_surfaces(self, surfaces: dict[str, Surface]) -> None:
        """Write the surfaces of one update under ``surfaces/`` and index them; never raises."""
        if not (self.surfaces and surfaces):
            return
        from ..io.meshes import write_mesh

        with self._surface_lock:
            update, self._updates = self._updates, self._updates + 1
            lines = []
            for surface in surfaces.values():
                name = f"{update:06d}_{_file_name(getattr(surface, 'name', '') or 'surface')}.ply"
                try:
                    write_mesh(self.dir / "surfaces" / name, surface)  # atomic (.part, renamed)
                    lines.append(json.dumps({"update": update, "file": name, "name": surface.name,
                                             "timestamp": surface.timestamp, "metadata": surface.metadata},
                                            default=_json_default) + "\n")
                except Exception as e:
                    with self._lock:
                        self._failed(e, f"surface {name}")
            try:
                with open(self.dir / "surfaces" / "index.jsonl", "a", encoding="utf-8") as index:
                    index.write("".join(lines))
            except Exception as e:
                with self._lock:
                    self._failed(e, "surfaces/index.jsonl")
            with self._lock:
                self._counts["surfaces_recorded"] += len(lines)

    # ------------------------------------------------------------------ end
    def stats(self) -> dict:
        """Counters since start.

        Returns
        -------
        dict
            ``frames_recorded`` (in chunk files), ``frames_lost`` (never written: failed chunks, frames no
            file can hold, frames after close), ``frames_held`` (in memory, not yet written),
            ``chunks_written``, ``write_errors`` (failed writes of any kind), ``fields_sanitised``
            (frame fields written escaped), ``fields_dropped`` (fields with an empty name),
            ``transforms_invalid`` (non-finite transforms written as INVALID identity),
            ``xrays_recorded``, ``surfaces_recorded``, and ``lost_by_reason`` (dict reason -> frames).
        """
        with self._lock:
            out = dict(self._counts, frames_held=len(self._held))
            out["lost_by_reason"] = dict(self._lost_by_reason)
        return out

    def close(self) -> None:
        """Write the frames still held and the counters (``recording_stats.json``); never raises.

        Safe to call twice; frames added afterwards are counted as lost.
        """
        with self._lock:
            if self._closed:
                return
            try:
                self._write_held()
            except Exception as e:
                self._failed(e, "close")
            self._closed = True
        stats = self.stats()
        try:
            text = json.dumps(stats, indent=1, sort_keys=True) + "\n"
            _write_atomic(self.dir / "recording_stats.json", lambda f: f.write(text.encode("utf-8")))
        except Exception as e:
            with self._lock:
                self._failed(e, "recording_stats.json")
        if stats["frames_lost"] or stats["write_errors"]:
            log.warning("recording %s: %d frames recorded, %d lost (%s), %d write errors", self.dir,
                        stats["frames_recorded"], stats["frames_lost"], stats["lost_by_reason"],
                        stats["write_errors"])


def _geometry_key(frame: TrackedFrame) -> tuple | None:
    """``(shape, dtype)`` of the frame's pixels, None for a frame without pixels; ValueError when no
    sequence file can hold them."""
    from ..io.metaimage_write import met_element_type

    pixels = frame.pixels
    if not isinstance(pixels, np.ndarray):
        raise ValueError(f"frame {frame.index}: pixels is a {type(pixels).__name__}, not an array")
    if pixels.size == 0:
        return None
    if pixels.ndim not in (2, 3):
        raise ValueError(f"frame {frame.index}: pixels must be (H, W) or (H, W, C), got shape {pixels.shape}")
    try:
        met_element_type(pixels.dtype)
    except ValueError as e:
        raise ValueError(f"frame {frame.index}: pixels dtype {pixels.dtype} cannot be written ({e})") from e
    return pixels.shape, pixels.dtype.str


def chunk_paths(recording: str | Path) -> list[Path]:
    """The sequence chunks of a recording folder (``inputs_NNNN.igs.mha``; ``.igs.nrrd`` too) in number order."""
    rec = Path(recording)
    numbered = [(int(m.group(1)), p) for p in rec.iterdir() if (m := _CHUNK_NAME.match(p.name))]
    return [p for _, p in sorted(numbered)]


def _next_number(folder: Path, pattern: re.Pattern) -> int:
    """One more than the highest number of the files in ``folder`` matching ``pattern`` (0 when none)."""
    if not folder.is_dir():
        return 0
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return max(numbers, default=-1) + 1


def _file_name(name: str) -> str:
    """A surface name as a file-name part: no path separators, no leading dot."""
    return _UNSAFE_FILE_CHARS.sub("_", str(name)).lstrip(".") or "surface"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _write_atomic(path: Path, write: Callable) -> None:
    """``write(file)`` into ``<path>.part``, then rename it to ``path``; the ``.part`` is removed on failure."""
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
