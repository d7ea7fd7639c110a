"""TRANSFORM, STATUS, STRING and POINT content codecs (big-endian, OpenIGTLink protocol 2/3).

- TRANSFORM: 12 float32, column-major rotation/scale then translation (R11 R21 R31 R12 ... TX TY TZ).
- STATUS: CODE u16 | SUBCODE i64 | ERROR_NAME char[20] | STATUS_MESSAGE NUL-terminated.
- STRING: ENCODING u16 (IANA MIBenum) | LENGTH u16 | bytes.
- POINT: per point NAME char[64] | GROUP char[32] | RGBA u8[4] | XYZ f32[3] | RADIUS f32 | OWNER char[20].
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from . import codec

TRANSFORM = struct.Struct(">12f")
STATUS_HEAD = struct.Struct(">Hq20s")
STRING_HEAD = struct.Struct(">HH")
POINT_ITEM = struct.Struct(">64s32s4B3ff20s")

STATUS_OK = 1  # the protocol's status codes used here; see the STATUS message specification
STATUS_GENERIC_ERROR = 2


@dataclass
class StatusContent:
    """STATUS message content: ``code`` 1 = OK (also the keep-alive), 2 = generic error, ..."""

    code: int = STATUS_OK
    subcode: int = 0
    error_name: str = ""
    message: str = ""


@dataclass
class PointItem:
    """One POINT entry; ``position`` (3,) in mm, ``rgba`` four 0..255 ints, ``radius`` mm."""

    name: str = ""
    position: np.ndarray = field(default_factory=lambda: np.zeros(3))
    group: str = ""
    rgba: tuple[int, int, int, int] = (255, 255, 0, 255)
    radius: float = 0.0
    owner: str = ""


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8")


def _fixed(text: str, size: int, field_name: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > size:
        raise ValueError(f"{field_name}: at most {size} bytes, got {len(raw)} ({text[:40]!r})")
    return raw.ljust(size, b"\0")


def encode_transform(matrix) -> list:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"TRANSFORM content: expected a finite 4x4 matrix, got {matrix!r}")
    return [TRANSFORM.pack(*m[:3, 0], *m[:3, 1], *m[:3, 2], *m[:3, 3])]


def decode_transform(view: memoryview) -> np.ndarray:
    if len(view) != TRANSFORM.size:
        raise codec.DecodeError("bad_content", f"TRANSFORM content of {len(view)} bytes, expected 48")
    v = TRANSFORM.unpack(view)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = v[0:3], v[3:6], v[6:9], v[9:12]
    return m


def encode_status(status: StatusContent) -> list:
    return [STATUS_HEAD.pack(status.code, status.subcode, _fixed(status.error_name, 20, "StatusContent.error_name")),
            status.message.encode("utf-8") + b"\0"]


def decode_status(view: memoryview) -> StatusContent:
    if len(view) < STATUS_HEAD.size:
        raise codec.DecodeError("bad_content", f"STATUS content of {len(view)} bytes < {STATUS_HEAD.size}")
    code, subcode, name = STATUS_HEAD.unpack_from(view)
    return StatusContent(code, subcode, _cstr(name), _cstr(bytes(view[STATUS_HEAD.size:])))


def encode_string(text: str) -> list:
    if not isinstance(text, str):
        raise ValueError(f"STRING content: expected str, got {type(text).__name__}")
    ascii_ = text.isascii()
    raw = text.encode("ascii" if ascii_ else "utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"STRING content: at most 65535 bytes, got {len(raw)}")
    return [STRING_HEAD.pack(codec.IANA_US_ASCII if ascii_ else codec.IANA_UTF8, len(raw)), raw]


def decode_string(view: memoryview) -> str:
    if len(view) < STRING_HEAD.size:
        raise codec.DecodeError("bad_content", f"STRING content of {len(view)} bytes < 4")
    encoding, length = STRING_HEAD.unpack_from(view)
    if STRING_HEAD.size + length != len(view):
        raise codec.DecodeError("bad_content", f"STRING declares {length} bytes, carries {len(view) - 4}")
    if encoding not in (codec.IANA_US_ASCII, codec.IANA_UTF8):
        raise codec.DecodeError("bad_content", f"STRING encoding {encoding} not supported (3 ASCII, 106 UTF-8)")
    return bytes(view[STRING_HEAD.size:]).decode("ascii" if encoding == codec.IANA_US_ASCII else "utf-8")


def encode_points(points: list[PointItem]) -> list:
    out = []
    for n, p in enumerate(points):
        xyz = np.asarray(p.position, dtype=np.float64).reshape(3)
        out.append(POINT_ITEM.pack(_fixed(p.name, 64, f"points[{n}].name"), _fixed(p.group, 32, f"points[{n}].group"),
                                   *(int(c) for c in p.rgba), *xyz, p.radius, _fixed(p.owner, 20, f"points[{n}].owner")))
    return [b"".join(out)]


def decode_points(view: memoryview) -> list[PointItem]:
    if len(view) % POINT_ITEM.size:
        raise codec.DecodeError("bad_content", f"POINT content of {len(view)} bytes is not a multiple of 136")
    items = []
    for values in POINT_ITEM.iter_unpack(view):
        items.append(PointItem(_cstr(values[0]), np.array(values[6:9], dtype=np.float64), _cstr(values[1]),
                               tuple(values[2:6]), values[9], _cstr(values[10])))
    return items


codec.register("TRANSFORM", encode_transform, decode_transform)
codec.register("STATUS", encode_status, decode_status)
codec.register("STRING", encode_string, decode_string)
codec.register("POINT", encode_points, decode_points)
