"""Session recording: the node's inputs and every published surface, written as they happen.

Layout under ``record.dir``::

    inputs_0000.igs.mha, inputs_0001.igs.mha, ...   tracked frames, PLUS sequence files of ``chunk_frames``
                                                    frames each (memory stays bounded in long sessions)
    xray_0000.npz, ...                              each X-ray item received: pixels and/or labelmap, spacing, timestamp
    surfaces/NNNNNN_L3_Completed.ply                every published surface, numbered by update
    surfaces/index.jsonl                            one line per surface: update, name, timestamp, metadata

Writing happens on the calling thread (ingest or completion): a chunk is written when it fills, which
costs about as much as compressing it (level 1 zlib).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .frames import Surface, TrackedFrame, XrayImage

log = logging.getLogger(__name__)


class SessionRecorder:
    """Record a session under ``record.dir`` (launch-file table ``[record]``)."""

    def __init__(self, record, *, chunk_frames: int = 300) -> None:
        if chunk_frames < 1:
            raise ValueError(f"record.chunk_frames: must be >= 1, got {chunk_frames}")
        self.dir = Path(record.dir)
        self.inputs, self.surfaces, self.compress = record.inputs, record.surfaces, record.compress
        self.chunk_frames = chunk_frames
        self._frames: list[TrackedFrame] = []
        self._chunks = self._xrays = self._updates = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.surfaces:
            (self.dir / "surfaces").mkdir(exist_ok=True)

    def add_frame(self, frame: TrackedFrame) -> None:
        if not self.inputs:
            return
        self._frames.append(frame)
        if len(self._frames) >= self.chunk_frames:
            self._write_chunk()

    def add_xray(self, xray: XrayImage) -> None:
        if not self.inputs:
            return
        path = self.dir / f"xray_{self._xrays:04d}.npz"
        arrays = {"pixel_spacing_mm": np.asarray(xray.pixel_spacing_mm), "timestamp": np.float64(xray.timestamp)}
        for name in ("pixels", "labelmap"):  # an item may carry either part alone
            if getattr(xray, name) is not None:
                arrays[name] = getattr(xray, name)
        np.savez_compressed(path, **arrays)
        self._xrays += 1

    def add_surfaces(self, surfaces: dict[str, Surface]) -> None:
        if not (self.surfaces and surfaces):
            return
        from .io.meshes import write_mesh

        with open(self.dir / "surfaces" / "index.jsonl", "a", encoding="utf-8") as index:
            for surface in surfaces.values():
                name = f"{self._updates:06d}_{surface.name or 'surface'}.ply"
                write_mesh(self.dir / "surfaces" / name, surface)
                index.write(json.dumps({"update": self._updates, "file": name, "name": surface.name,
                                        "timestamp": surface.timestamp, "metadata": surface.metadata}) + "\n")
        self._updates += 1

    def _write_chunk(self) -> None:
        from .io.sequence import write_sequence

        path = self.dir / f"inputs_{self._chunks:04d}.igs.mha"
        write_sequence(path, self._frames, compress=self.compress)
        log.debug("recorded %d frames to %s", len(self._frames), path)
        self._frames = []
        self._chunks += 1

    def close(self) -> None:
        """Write the frames still held."""
        if self._frames:
            self._write_chunk()
