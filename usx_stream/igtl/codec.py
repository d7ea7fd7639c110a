"""OpenIGTLink wire format: the 58-byte header, the version-2 extended header and metadata, and a table
mapping each message type to the codec of its content.

Layout (all numbers big-endian)::

    header (58 B)  V u16 | TYPE char[12] | DEVICE_NAME char[20] | TIMESTAMP u32 s + u32 fraction
                   | BODY_SIZE u64 | CRC64 ECMA-182 of the body u64
    body, V == 1   content
    body, V == 2   extended header (12 B: EXT_HEADER_SIZE u16 = 12, METADATA_HEADER_SIZE u16,
                   METADATA_SIZE u32, MESSAGE_ID u32) | content | metadata header | metadata
    metadata header  COUNT u16, then per entry KEY_SIZE u16, VALUE_ENCODING u16 (IANA MIBenum),
                   VALUE_SIZE u32; metadata = keys and values concatenated in the same order.

Content codecs live in :mod:`codec_image`, :mod:`codec_basic` and :mod:`codec_polydata`; each registers
an ``encode(content) -> list[bytes-like]`` and ``decode(view) -> content`` pair under its type name.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .crc import crc64

HEADER = struct.Struct(">H12s20sIIQQ")
HEADER_SIZE = HEADER.size  # 58
EXT_HEADER = struct.Struct(">HHII")
EXT_HEADER_SIZE = EXT_HEADER.size  # 12
META_ENTRY = struct.Struct(">HHI")
IANA_US_ASCII = 3
IANA_UTF8 = 106
FULL_NAME_KEY = "IGTL_DEVICE_NAME"  # PLUS puts device names longer than 20 bytes here

_NANO_BASES = []
_b = 1_000_000_000
for _ in range(32):
    _b = (_b + 1) >> 1
    _NANO_BASES.append(_b)
del _b


class DecodeError(ValueError):
    """A message that cannot be decoded; ``reason`` is a short stable tag used in counters."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Header:
    """Decoded 58-byte header (see module docstring)."""

    version: int
    type: str
    device_name: str
    timestamp: float
    body_size: int
    crc: int


@dataclass
class Message:
    """One OpenIGTLink message.

    Attributes
    ----------
    type : str
        ``"IMAGE"``, ``"TRANSFORM"``, ``"STATUS"``, ``"STRING"``, ``"POINT"``, ``"POLYDATA"``.
    device_name : str
        Full device name (the header field holds at most 20 bytes; longer names travel in metadata
        ``IGTL_DEVICE_NAME`` when ``header_version == 2``).
    content : object
        Type-specific value: :class:`ImageContent`, (4, 4) float64 ndarray for TRANSFORM,
        :class:`StatusContent`, ``str`` for STRING, list of :class:`PointItem`, :class:`PolyData`.
    timestamp : float or None
        Seconds since the UTC epoch (as carried on the wire: ~1 ns resolution); None = now, at encoding.
    metadata : dict[str, str]
        Version-2 metadata (dropped on the wire when ``header_version == 1``).
    header_version : int
        1 or 2.
    message_id : int
        Version-2 message id.
    peer : str
        ``host:port`` of the connection it came from (set on receive).
    received_at : float
        ``time.time()`` when its last byte was read (set on receive).
    """

    type: str
    device_name: str
    content: Any
    timestamp: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    header_version: int = 1
    message_id: int = 0
    peer: str = ""
    received_at: float = 0.0


Encoder = Callable[[Any], list]
Decoder = Callable[[memoryview], Any]
CODECS: dict[str, tuple[Encoder, Decoder]] = {}


def register(type_name: str, encode: Encoder, decode: Decoder) -> None:
    """Register the content codec for ``type_name`` (at most 12 ASCII characters)."""
    if not type_name or len(type_name) > 12 or not type_name.isascii():
        raise ValueError(f"type_name: expected 1..12 ASCII characters, got {type_name!r}")
    CODECS[type_name] = (encode, decode)


def timestamp_to_wire(ts: float) -> tuple[int, int]:
    """Float seconds -> (seconds u32, fraction u32), bit-identical to the OpenIGTLink C library."""
    if not 0.0 <= ts < 2**32:
        raise ValueError(f"timestamp: expected 0 <= t < 2**32 s, got {ts!r}")
    sec = int(ts)
    nanosec = int((ts - sec) * 1e9)
    frac, mask = 0, 0x80000000
    for base in _NANO_BASES:  # igtl_nanosec_to_frac: binary long division, kept for exactness
        if nanosec >= base:
            frac |= mask
            nanosec -= base
        mask >>= 1
    return sec, frac


def _frac_byte_tables() -> list[list[int]]:
    """Per byte of the fraction (most significant first): nanoseconds its bits add, as igtl_frac_to_nanosec
    sums them; four look-ups replace a 32-step loop on every received header."""
    tables = []
    for pos in range(4):
        bases = _NANO_BASES[8 * pos:8 * pos + 8]
        tables.append([sum(b for bit, b in enumerate(bases) if value & (0x80 >> bit)) for value in range(256)])
    return tables


_FRAC_NS = _frac_byte_tables()


def timestamp_from_wire(sec: int, frac: int) -> float:
    t0, t1, t2, t3 = _FRAC_NS
    nanosec = t0[frac >> 24] + t1[(frac >> 16) & 0xFF] + t2[(frac >> 8) & 0xFF] + t3[frac & 0xFF]
    return sec + nanosec * 1e-9


def _fixed_ascii(text: str, size: int, *, field_name: str) -> bytes:
    """Printable ASCII, cut to ``size`` bytes and NUL-padded (what :func:`parse_header` accepts)."""
    if not (text.isascii() and text.isprintable()):  # for ASCII: exactly 0x20..0x7E
        raise ValueError(f"{field_name}: must be printable ASCII, got {text!r}")
    return text.encode("ascii")[:size].ljust(size, b"\0")


def parse_header(raw: bytes | memoryview) -> Header:
    """Decode 58 header bytes; raises :class:`DecodeError` for bad version, type or device name."""
    version, type_raw, name_raw, sec, frac, body_size, crc = HEADER.unpack(raw)
    if version not in (1, 2):
        raise DecodeError("bad_header_version", f"version {version}")
    type_name = _padded_text(type_raw)
    if type_name is None or not type_name:
        raise DecodeError("bad_type_name", repr(bytes(type_raw)))
    device = _padded_text(name_raw)
    if device is None:
        raise DecodeError("bad_device_name", repr(bytes(name_raw)))
    return Header(version, type_name, device, timestamp_from_wire(sec, frac), body_size, crc)


def _padded_text(raw: bytes) -> str | None:
    """Printable ASCII followed only by NUL padding, or None when the field is malformed."""
    text, _, pad = raw.partition(b"\0")
    if pad.strip(b"\0") or not text.isascii():
        return None
    text = text.decode("ascii")
    return text if text.isprintable() else None  # for ASCII: exactly 0x20..0x7E


def _pack_metadata(metadata: dict[str, str]) -> tuple[bytes, bytes]:
    if len(metadata) > 0xFFFF:
        raise ValueError(f"metadata: at most 65535 entries, got {len(metadata)}")
    head = [struct.pack(">H", len(metadata))]
    body = []
    for key, value in metadata.items():
        k = str(key).encode("utf-8")
        v = str(value)
        enc = IANA_US_ASCII if v.isascii() else IANA_UTF8
        vb = v.encode("ascii" if enc == IANA_US_ASCII else "utf-8")
        if len(k) > 0xFFFF:
            raise ValueError(f"metadata key: at most 65535 bytes, got {len(k)} for {key[:40]!r}")
        head.append(META_ENTRY.pack(len(k), enc, len(vb)))
        body += [k, vb]
    return b"".join(head), b"".join(body)


def _unpack_metadata(head: memoryview, body: memoryview) -> dict[str, str]:
    if len(head) < 2:
        raise DecodeError("bad_metadata", f"metadata header of {len(head)} bytes")
    (count,) = struct.unpack_from(">H", head)
    if len(head) != 2 + count * META_ENTRY.size:
        raise DecodeError("bad_metadata", f"{count} entries need {2 + 8 * count} header bytes, got {len(head)}")
    out, pos = {}, 0
    for i in range(count):
        klen, enc, vlen = META_ENTRY.unpack_from(head, 2 + i * META_ENTRY.size)
        if pos + klen + vlen > len(body):
            raise DecodeError("bad_metadata", f"entry {i} runs past the metadata ({len(body)} bytes)")
        try:
            key = bytes(body[pos:pos + klen]).decode("utf-8")
            value = bytes(body[pos + klen:pos + klen + vlen]).decode("ascii" if enc == IANA_US_ASCII else "utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError("bad_metadata", f"entry {i}: {e}") from e
        out[key] = value
        pos += klen + vlen
    if pos != len(body):
        raise DecodeError("bad_metadata", f"{len(body) - pos} unused metadata bytes")
    return out


def encode(msg: Message) -> list:
    """Encode ``msg`` as a list of bytes-like parts (header first) ready for ``socket.sendmsg``.

    Large arrays are passed through as memoryviews, not copied.
    """
    if msg.type not in CODECS:
        raise ValueError(f"Message.type: no codec for {msg.type!r} (known: {sorted(CODECS)})")
    if msg.header_version not in (1, 2):
        raise ValueError(f"Message.header_version: expected 1 or 2, got {msg.header_version!r}")
    content = CODECS[msg.type][0](msg.content)
    name = msg.device_name
    metadata = dict(msg.metadata)
    if len(name) > 20 and msg.header_version == 2:
        metadata.setdefault(FULL_NAME_KEY, name)
    body = list(content)
    if msg.header_version == 2:
        mhead, mbody = _pack_metadata(metadata)
        body = [EXT_HEADER.pack(EXT_HEADER_SIZE, len(mhead), len(mbody), msg.message_id & 0xFFFFFFFF),
                *body, mhead, mbody]
    size, crc = 0, 0
    for part in body:
        size += len(part) if not isinstance(part, memoryview) else part.nbytes
        crc = crc64(part, crc)
    sec, frac = timestamp_to_wire(time.time() if msg.timestamp is None else msg.timestamp)
    header = HEADER.pack(msg.header_version, _fixed_ascii(msg.type, 12, field_name="Message.type"),
                         _fixed_ascii(name, 20, field_name="Message.device_name"), sec, frac, size, crc)
    return [header, *body]


def encode_bytes(msg: Message) -> bytes:
    """:func:`encode` joined into one ``bytes``."""
    return b"".join(bytes(p) if isinstance(p, memoryview) else p for p in encode(msg))


def decode_body(header: Header, body: memoryview) -> Message:
    """Decode a CRC-checked body into a :class:`Message`; raises :class:`DecodeError` with a reason."""
    if header.type not in CODECS:
        raise DecodeError("unknown_type", repr(header.type))
    metadata: dict[str, str] = {}
    message_id = 0
    content = body
    if header.version == 2:
        if len(body) < EXT_HEADER_SIZE:
            raise DecodeError("bad_extended_header", f"body of {len(body)} bytes")
        ext_size, mhead_size, mbody_size, message_id = EXT_HEADER.unpack_from(body)
        if ext_size < EXT_HEADER_SIZE or ext_size + mhead_size + mbody_size > len(body):
            raise DecodeError("bad_extended_header",
                              f"sizes ext={ext_size} meta_header={mhead_size} meta={mbody_size} body={len(body)}")
        end = len(body) - mhead_size - mbody_size
        metadata = _unpack_metadata(body[end:end + mhead_size], body[end + mhead_size:])
        content = body[ext_size:end]
    try:
        value = CODECS[header.type][1](content)
    except DecodeError:
        raise
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise DecodeError("bad_content", f"{header.type}: {e}") from e
    name = metadata.get(FULL_NAME_KEY, header.device_name)
    return Message(header.type, name, value, header.timestamp, metadata, header.version, message_id)
