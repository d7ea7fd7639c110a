"""Make per-frame metadata safe to write into a MetaImage/NRRD sequence header, and undo it on read.

A sequence header is text, one ``name = value`` line per field (``name:=value`` in NRRD), read by
PLUS, 3D Slicer and :mod:`usx_stream.io.sequence`. A frame's metadata arrives from the network
(OpenIGTLink metadata is UTF-8 of any content), so a name or value may hold a line break (which would
let it write its own header lines, ``ElementDataFile`` included), characters Latin-1 cannot encode,
or a name the reader would take for something else. The rule, applied per sequence file:

* A **name** (field name, or the ``X`` of an ``XToYTransform`` field) is safe when it is non-empty
  and made only of ``A-Z a-z 0-9 _ . -``. Any other character is written as ``%XX`` escapes of its
  UTF-8 bytes (``%`` itself is ``%25``). A field name the reader would parse as a transform
  (``...ToYTransform``) has its last letter escaped (``...Transfor%6D``) so it stays a plain field.
  An empty name cannot be written: that field is dropped (and counted).
* A **value** is safe when every character is printable ASCII (``0x20``-``0x7E``), it has no
  leading or trailing space (the reader strips those) and no ``%`` followed by two hex digits.
  Otherwise each offending character is written as ``%XX`` escapes of its UTF-8 bytes, a ``%``
  that is followed by two hex digits as ``%25``; the rest is kept.
* A file in which anything was escaped carries the header field ``UsxFieldEncoding = percent-utf8``,
  and :mod:`usx_stream.io.sequence` percent-decodes the frame field names, transform names and
  field values of such a file (``urllib.parse.unquote``), so write -> read returns the original
  strings. A file where nothing needed escaping is written verbatim and has no such field, so PLUS
  and Slicer see exactly the values they would have written themselves.

Every escaped header byte is printable ASCII and no name contains ``=``, ``:``, a space or a line
break: a frame field can never add a header line. Transforms that are not finite 4x4 matrices
(NaN/Inf, wrong shape) are written as PLUS writes an invalid transform: identity with status
``INVALID``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

import numpy as np

from ..transforms import split_name
from .frame_fields import FrameMeta

ENCODING_FIELD = "UsxFieldEncoding"
ENCODING_VALUE = "percent-utf8"

_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_SAFE_NAME_CHAR = re.compile(r"[A-Za-z0-9_.\-]")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")


def _pct(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def name_is_safe(name: str) -> bool:
    """True when ``name`` can be written as a header field name unchanged."""
    return bool(_SAFE_NAME.fullmatch(name))


def value_is_safe(value: str) -> bool:
    """True when ``value`` can be written as a header value unchanged and reads back identical."""
    return (all(" " <= c <= "~" for c in value) and value == value.strip(" ")
            and not any(value[i] == "%" and _HEX2.fullmatch(value[i + 1:i + 3]) for i in range(len(value))))


def escape_name(name: str) -> str:
    """``name`` with every character outside ``A-Z a-z 0-9 _ . -`` percent-escaped (UTF-8)."""
    return "".join(c if _SAFE_NAME_CHAR.fullmatch(c) else _pct(c) for c in name)


def escape_value(value: str) -> str:
    """``value`` with non-printable-ASCII characters, edge spaces and ``%XX`` look-alikes escaped."""
    out = []
    last = len(value) - 1
    for i, c in enumerate(value):
        if c == "%" and _HEX2.fullmatch(value[i + 1:i + 3]):
            out.append("%25")
        elif not " " <= c <= "~" or (c == " " and (i == 0 or i == last)):
            out.append(_pct(c))
        else:
            out.append(c)
    return "".join(out)


def unescape(text: str) -> str:
    """Inverse of :func:`escape_name` / :func:`escape_value` (``%XX`` runs decoded as UTF-8)."""
    return unquote(text, encoding="utf-8", errors="replace") if "%" in text else text


@dataclass
class SafeFrames:
    """Per-frame header metadata made safe to write, and what had to change.

    Attributes
    ----------
    metas : list of FrameMeta
        One per frame, names and values as they go into the header.
    escaped : bool
        True when any name or value was escaped: the file must carry ``UsxFieldEncoding``.
    fields_escaped : int
        Fields (or transform names) written escaped.
    fields_dropped : int
        Fields that could not be written at all (empty name).
    transforms_invalid : int
        Transforms written as identity with status INVALID because they were not finite 4x4 matrices.
    notes : list of str
        One line per change, naming the frame, the field and the value (for the caller's log).
    """

    metas: list[FrameMeta]
    escaped: bool = False
    fields_escaped: int = 0
    fields_dropped: int = 0
    transforms_invalid: int = 0
    notes: list[str] = field(default_factory=list)


def _finite_matrix(m) -> np.ndarray | None:
    try:
        a = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if a.shape in ((16,), (12,)):
        a = a.reshape(-1, 4)
    if a.shape == (3, 4):
        a = np.vstack([a, [0.0, 0.0, 0.0, 1.0]])
    return a if a.shape == (4, 4) and np.all(np.isfinite(a)) else None


def safe_frame_metas(frames) -> SafeFrames:
    """Header metadata of ``frames`` (TrackedFrame-like), escaped as the module docstring says.

    Parameters
    ----------
    frames : sequence of TrackedFrame
        ``transforms`` values ``(4, 4)`` (any float; non-finite ones are invalidated), ``fields`` and
        transform names any strings (non-strings are converted with ``str``).

    Returns
    -------
    SafeFrames
        Never raises for field content; a ``timestamp`` that is not a number raises ValueError naming it.
    """
    out = SafeFrames([])
    raw: list[tuple[int, float, dict, dict, bool, dict]] = []
    needs = False
    for i, f in enumerate(frames):
        try:
            ts = float(f.timestamp)
        except (TypeError, ValueError) as e:
            raise ValueError(f"frame {i}: timestamp {f.timestamp!r} is not a number") from e
        transforms, status = {}, {}
        for name, m in (f.transforms or {}).items():
            name = str(name)
            ok = bool((f.transform_status or {}).get(name, True))
            matrix = _finite_matrix(m)
            if matrix is None:
                out.transforms_invalid += 1
                out.notes.append(f"frame {i}: transform {name!r} = {np.asarray(m).tolist()!r} is not a finite "
                                 "4x4 matrix: written as identity with status INVALID")
                matrix, ok = np.eye(4), False
            needs |= not name_is_safe(name)
            transforms[name], status[name] = matrix, ok
        fields = {}
        for key, value in (f.fields or {}).items():
            key, value = str(key), str(value)
            if not key:
                out.fields_dropped += 1
                out.notes.append(f"frame {i}: field with an empty name (value {value!r}) cannot be written: dropped")
                continue
            needs |= not (name_is_safe(key) and value_is_safe(value)) or _reads_as_transform(key, transforms)
            fields[key] = value
        raw.append((i, ts, transforms, status, bool(f.image_status), fields))
    out.escaped = needs
    for i, ts, transforms, status, image_ok, fields in raw:
        if needs:
            transforms, status, fields = _escape_frame(i, transforms, status, fields, out)
        out.metas.append(FrameMeta(i, ts, transforms, status, image_ok, fields))
    return out


def _reads_as_transform(key: str, transforms: dict) -> bool:
    """A plain field the reader would parse as a transform matrix (``XToYTransform`` not in transforms)."""
    base = key[: -len("Transform")]
    if not key.endswith("Transform") or not base or base in transforms:
        return False
    try:
        split_name(base)
    except ValueError:
        return False
    return True


def _escape_frame(i: int, transforms: dict, status: dict, fields: dict, out: SafeFrames):
    renamed = {name: escape_name(name) for name in transforms}
    for name, new in renamed.items():
        if new != name:
            out.fields_escaped += 1
            out.notes.append(f"frame {i}: transform name {name!r} written escaped as {new!r}")
    new_fields = {}
    for key, value in fields.items():
        new_key, new_value = escape_name(key), escape_value(value)
        if _reads_as_transform(key, transforms):
            new_key = escape_name(key[:-1]) + _pct(key[-1])
        if not (name_is_safe(key) and value_is_safe(value)) or new_key != escape_name(key):
            out.fields_escaped += 1
            out.notes.append(f"frame {i}: field {key!r} = {value!r} written escaped as {new_key!r} = {new_value!r}")
        new_fields[new_key] = new_value
    return ({renamed[n]: m for n, m in transforms.items()}, {renamed[n]: s for n, s in status.items()},
            new_fields)


def decode_meta(meta: FrameMeta) -> FrameMeta:
    """Undo the escaping of one frame read from a file marked ``UsxFieldEncoding = percent-utf8``."""
    return FrameMeta(meta.index, meta.timestamp, {unescape(k): v for k, v in meta.transforms.items()},
                     {unescape(k): v for k, v in meta.transform_status.items()}, meta.image_status,
                     {unescape(k): unescape(v) for k, v in meta.fields.items()})
