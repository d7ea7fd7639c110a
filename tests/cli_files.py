"""Small real input files for the command-line tests, and a runner for ``python -m usx_stream.cli``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import usx_stream
from usx_stream.frames import TrackedFrame
from usx_stream.io.sequence import write_sequence

N_FRAMES = 5
FIRST_TIMESTAMP = 100.0

# A device set as PLUS writes them: ImageToProbe (0.1 mm pixels) and a VolumeReconstruction element.
DEVICE_SET = """<PlusConfiguration version="2.1">
  <CoordinateDefinitions>
    <Transform From="Image" To="Probe"
      Matrix="0.1 0 0 0
              0 0.1 0 0
              0 0 0.1 0
              0 0 0 1"
      Error="0.5" Date="010126_120000" />
  </CoordinateDefinitions>
  <VolumeReconstruction OutputSpacing="0.5 0.5 0.5" ClipRectangleOrigin="0 0" ClipRectangleSize="40 30"
    Interpolation="NEAREST_NEIGHBOR" CompoundingMode="MEAN" NumberOfThreads="1" />
</PlusConfiguration>
"""


def sequence_frames(n: int = N_FRAMES) -> list[TrackedFrame]:
    """``n`` frames of 30 x 40 uint8 pixels, 40 ms apart, sweeping 1 mm per frame along the probe's z."""
    rng = np.random.default_rng(7)
    frames = []
    for i in range(n):
        probe_to_tracker = np.eye(4)
        probe_to_tracker[:3, 3] = (10.0, 20.0, 30.0 + i)
        frames.append(TrackedFrame(pixels=rng.integers(1, 255, size=(30, 40), dtype=np.uint8),
                                   timestamp=FIRST_TIMESTAMP + 0.04 * i, index=i,
                                   transforms={"ProbeToTracker": probe_to_tracker, "ReferenceToTracker": np.eye(4)},
                                   transform_status={"ProbeToTracker": True, "ReferenceToTracker": True}))
    return frames


def write_sequence_file(path: Path, *, n: int = N_FRAMES, compress: bool = False) -> Path:
    return write_sequence(path, sequence_frames(n), compress=compress)


def truncate(path: Path, keep: float = 0.9) -> Path:
    """Cut ``path`` to ``keep`` of its size, in place (as a copy cut short by a full disk)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "usx_stream.cli", *map(str, args)]


def cli_env() -> dict[str, str]:
    """The environment for a subprocess that imports this checkout's usx_stream."""
    root = str(Path(usx_stream.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``usx-stream ARGS`` in ``cwd``; the timeout is a safety net, not a measurement."""
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)
