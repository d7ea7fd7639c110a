"""PLUS per-frame header fields (``Seq_FrameNNNN_<Field>``) <-> :class:`~usx_stream.frames.TrackedFrame` parts.

PLUS stores each tracked frame's metadata as header fields named ``Seq_Frame0000_ProbeToTrackerTransform``
(16 numbers, row-major 4x4), ``..._ProbeToTrackerTransformStatus`` (``OK`` / ``INVALID``),
``..._Timestamp`` (seconds), ``..._ImageStatus`` (``OK`` / ``INVALID``; NRRD files written by PLUS call it
``Status``) and any number of other fields, kept here verbatim so that write -> read is lossless.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..transforms import as_matrix, split_name

FRAME_PREFIX = "Seq_Frame"
_FRAME_FIELD = re.compile(r"^Seq_Frame(\d+)_(.+)$", re.IGNORECASE)
_TRANSFORM = "Transform"
_STATUS = "TransformStatus"


@dataclass
class FrameMeta:
    """Everything a sequence header says about one frame (its pixels live elsewhere)."""

    index: int
    timestamp: float = 0.0
    transforms: dict[str, np.ndarray] = field(default_factory=dict)
    transform_status: dict[str, bool] = field(default_factory=dict)
    image_status: bool = True
    fields: dict[str, str] = field(default_factory=dict)


def is_frame_field(name: str) -> bool:
    return name[: len(FRAME_PREFIX)].lower() == FRAME_PREFIX.lower()


def split_frame_field(name: str) -> tuple[int, str]:
    """``"Seq_Frame0012_Timestamp"`` -> ``(12, "Timestamp")``; ValueError naming the field otherwise."""
    m = _FRAME_FIELD.match(name)
    if m is None:
        raise ValueError(f"malformed frame field name {name!r}: expected 'Seq_FrameNNNN_<Field>'")
    return int(m.group(1)), m.group(2)


def group_frame_fields(entries: list[tuple[str, str]]) -> dict[int, dict[str, str]]:
    """Collect ``Seq_FrameNNNN_<Field> = value`` entries into ``{frame: {field: value}}`` (file order)."""
    frames: dict[int, dict[str, str]] = {}
    for name, value in entries:
        if is_frame_field(name):
            index, fname = split_frame_field(name)
            frames.setdefault(index, {})[fname] = value
    return frames


def _transform_name(fname: str) -> str | None:
    """``"ProbeToTrackerTransform"`` -> ``"ProbeToTracker"``; None when it is not a PLUS transform field."""
    if not fname.endswith(_TRANSFORM) or len(fname) == len(_TRANSFORM):
        return None
    name = fname[: -len(_TRANSFORM)]
    try:
        split_name(name)
    except ValueError:
        return None
    return name


def parse_matrix(text: str, *, what: str) -> np.ndarray:
    """16 (or 12) whitespace-separated numbers, row-major -> ``(4, 4) float64``; ValueError names ``what``."""
    try:
        values = [float(v) for v in text.split()]
    except ValueError as e:
        raise ValueError(f"{what}: not a list of numbers: {text!r}") from e
    if len(values) not in (12, 16):
        raise ValueError(f"{what}: expected 16 numbers (row-major 4x4), got {len(values)}: {text!r}")
    return as_matrix(values, name=what)


def parse_frame(index: int, raw: dict[str, str], *, status_fields: tuple[str, ...] = ("ImageStatus",)) -> FrameMeta:
    """Interpret one frame's raw fields. Unknown fields, and status strings other than OK/INVALID,
    are kept verbatim in ``fields`` so a rewrite reproduces them."""
    meta = FrameMeta(index)
    statuses: dict[str, str] = {}
    for fname, value in raw.items():
        what = f"{FRAME_PREFIX}{index:04d}_{fname}"
        tname = _transform_name(fname)
        if fname.endswith(_STATUS) and _transform_name(fname[: -len("Status")]):
            statuses[fname[: -len(_STATUS)]] = value
        elif tname is not None:
            meta.transforms[tname] = parse_matrix(value, what=what)
        elif fname == "Timestamp":
            meta.timestamp = _parse_float(value, what)
        elif fname in status_fields:
            meta.image_status = value.strip().upper() == "OK"
            if value.strip().upper() not in ("OK", "INVALID"):
                meta.fields[fname] = value
        else:
            meta.fields[fname] = value
    for tname, value in statuses.items():
        key = tname + _STATUS
        if tname not in meta.transforms:
            meta.fields[key] = value  # a status without its matrix: keep it as it was
            continue
        meta.transform_status[tname] = value.strip().upper() == "OK"
        if value.strip().upper() not in ("OK", "INVALID"):
            meta.fields[key] = value
    return meta


def _parse_float(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError as e:
        raise ValueError(f"{what}: not a number: {value!r}") from e


def format_matrix(m: np.ndarray) -> str:
    """Row-major 16 numbers, each printed so that it parses back to the identical float64."""
    return " ".join(repr(float(v)) if not float(v).is_integer() else str(int(v)) for v in np.asarray(m).ravel())


def format_frame(meta: FrameMeta, *, image_status_field: str = "ImageStatus") -> list[tuple[str, str]]:
    """The ``(field, value)`` pairs of one frame, without the ``Seq_FrameNNNN_`` prefix, PLUS order:
    each transform followed by its status, then other fields, then Timestamp and the image status."""
    out: list[tuple[str, str]] = []
    written: set[str] = set()
    for tname, m in meta.transforms.items():
        as_matrix(m, name=f"frame {meta.index} transform {tname}")
        key = tname + _STATUS
        ok = meta.transform_status.get(tname, True)
        out += [(tname + _TRANSFORM, format_matrix(m)), (key, "OK" if ok else meta.fields.get(key, "INVALID"))]
        written |= {tname + _TRANSFORM, key}
    for fname, value in meta.fields.items():
        if fname in written or fname in ("Timestamp", image_status_field):
            continue
        if "\n" in value or "\r" in value:
            raise ValueError(f"frame {meta.index} field {fname!r}: value must be one line, got {value!r}")
        out.append((fname, value))
    out.append(("Timestamp", repr(float(meta.timestamp))))
    out.append((image_status_field, "OK" if meta.image_status else meta.fields.get(image_status_field, "INVALID")))
    return out
