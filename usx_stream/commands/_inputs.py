"""Checks of input files shared by the commands: each failure is an InputError naming the file.

The readers validate their own format; what is checked here is what one command needs from the files
together (a device set whose calibration places the frames of a sequence).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import InputError
from ..frames import TrackedFrame
from ..transforms import TransformError, TransformRepository

log = logging.getLogger(__name__)


def read_calibration(path: str | Path) -> TransformRepository:
    """The ``CoordinateDefinitions`` of a PLUS device set, for a command that reads it for ImageToProbe.

    Raises
    ------
    InputError
        Malformed XML or transform, or no ``CoordinateDefinitions/Transform`` at all.
    """
    from ..io.plus_config import read_device_set

    device_set = read_device_set(path)
    if not device_set.coordinate_definitions:
        raise InputError(f"{path}: no <CoordinateDefinitions><Transform> element: the device set must give "
                         "ImageToProbe (the spatial calibration)")
    return device_set.transform_repository()


def require_transform(frame: TrackedFrame, calibration: TransformRepository | None, name: str, *,
                      config: str | Path | None, sequence: str | Path) -> None:
    """InputError unless ``name`` (e.g. ImageToReference) follows from the frame's transforms and ``calibration``.

    The message names the device set (``config``) and the sequence, and lists the transforms known.
    """
    try:
        frame.repository(calibration).get(name)
    except TransformError as e:
        blame = f"{config}: with the transforms of {sequence}" if config else f"{sequence}:"
        raise InputError(f"{blame} {e}; the device set's <CoordinateDefinitions> must complete the chain "
                         "(usually with ImageToProbe, the spatial calibration)") from e
