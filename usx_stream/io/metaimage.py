"""MetaImage (``.mha``/``.mhd``) and NRRD (``.nrrd``/``.nhdr``) header and pixel-data layer.

Shared by :mod:`usx_stream.io.sequence` (PLUS sequence files) and :mod:`usx_stream.io.volumes`.
Headers are kept as ordered ``(name, value)`` entries exactly as written; :func:`pixel_layout` turns
the structural ones into a :class:`PixelLayout` (axis sizes, dtype, compression, where the bytes are),
and :class:`PixelReader` streams the pixel bytes sequentially, inflating zlib/gzip data on the fly so a
large file is never held in memory at once. A malformed header or short/corrupt pixel data raises
:class:`~usx_stream.errors.InputError` naming the file, the field and the value. Writing:
:mod:`usx_stream.io.metaimage_write`.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

_MAX_LINE = 1 << 20  # a header line longer than this means we are reading binary data, not a header
_CHUNK = 1 << 20  # compressed bytes read per call when inflating


class CorruptPixelData(InputError):
    """The compressed pixel data does not inflate, or fails its checksum: some bytes already delivered
    may be wrong, not only the ones still to come."""


# MetaIO element types (sizes as in MetaIO's metaTypes.h: MET_LONG is 4 bytes there).
_MET_TO_DTYPE = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
    "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4",
    "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
# NRRD type names (teem's format spec, section "type").
_NRRD_TYPES = {
    "i1": ("signed char", "int8", "int8_t"),
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"),
    "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long", "signed long long int",
           "int64", "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "f4": ("float",),
    "f8": ("double",),
}
_NRRD_TO_DTYPE = {name: code for code, names in _NRRD_TYPES.items() for name in names}
# NRRD per-axis kinds that are not spatial/list axes: the axis holds the components of one pixel.
_NRRD_COMPONENT_KINDS = {"vector", "covariant-vector", "normal", "rgb-color", "rgba-color", "hsv-color",
                         "xyz-color", "2-vector", "3-vector", "4-vector", "3-gradient", "3-normal",
                         "quaternion", "complex", "point", "2d-symmetric-matrix", "2d-matrix",
                         "3d-symmetric-matrix", "3d-matrix"}


@dataclass
class Header:
    """A MetaImage or NRRD header as written in the file.

    Attributes
    ----------
    kind : str
        ``"mha"`` (MetaImage, also ``.mhd``) or ``"nrrd"``.
    entries : list of (str, str)
        Every ``name = value`` (MetaImage) or ``name: value`` / ``name:=value`` (NRRD) line in order.
    keyvalues : set of str
        NRRD only: names written as key/value pairs (``:=``) rather than NRRD fields.
    data_offset : int
        Byte offset of the first pixel byte in the header file (when the data is local).
    path : Path
    """

    kind: str
    entries: list[tuple[str, str]]
    data_offset: int
    path: Path
    keyvalues: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._lower = {name.lower(): value for name, value in self.entries}

    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of field ``name`` (case-insensitive, as PLUS and MetaIO match them)."""
        return self._lower.get(name.lower(), default)

    def require(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise InputError(f"{self.path}: header field {name!r} is missing")
        return value


@dataclass
class PixelLayout:
    """Where and how the pixel bytes of a MetaImage/NRRD file are stored.

    ``sizes`` lists the spatial/list axes fastest first (x, y, [z], [frames]) and ``kinds`` their
    kinds (``"domain"``, ``"list"``, ``"time"``, ...); pixel components are in ``components``.
    """

    sizes: tuple[int, ...]
    kinds: tuple[str, ...]
    dtype: np.dtype
    components: int
    compression: str  # "none" | "zlib" | "gzip"
    data_path: Path
    data_offset: int
    compressed_size: int | None = None

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.components


def _parse_int_list(header: Header, name: str, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split())
    except ValueError as e:
        raise InputError(f"{header.path}: header field {name!r} must be integers, got {value!r}") from e


def _read_line(f: BinaryIO, path: Path) -> bytes:
    line = f.readline(_MAX_LINE)
    if len(line) == _MAX_LINE and not line.endswith(b"\n"):
        raise InputError(f"{path}: header line at byte {f.tell() - len(line)} is longer than {_MAX_LINE} "
                         "bytes: not a MetaImage/NRRD header")
    return line


def read_header(path: str | Path) -> Header:
    """Parse the header of a ``.mha``/``.mhd`` (MetaImage) or ``.nrrd``/``.nhdr`` file."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(8)
        f.seek(0)
        if magic.startswith(b"NRRD000"):
            return _read_nrrd_header(f, path)
        return _read_mha_header(f, path)


def _read_mha_header(f: BinaryIO, path: Path) -> Header:
    entries: list[tuple[str, str]] = []
    lineno = 0
    while True:
        raw = _read_line(f, path)
        lineno += 1
        if not raw:
            raise InputError(f"{path}: MetaImage header has no 'ElementDataFile' field "
                             f"(file ends after {lineno - 1} lines)")
        text = raw.decode("latin-1").strip()
        if not text:
            continue
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise InputError(f"{path}: malformed MetaImage header line {lineno}: {text[:200]!r} "
                             "(expected 'Name = value')")
        entries.append((name.strip(), value.strip()))
        if name.strip().lower() == "elementdatafile":
            return Header("mha", entries, f.tell(), path)


def _read_nrrd_header(f: BinaryIO, path: Path) -> Header:
    entries: list[tuple[str, str]] = []
    keyvalues: set[str] = set()
    magic = _read_line(f, path).decode("latin-1").strip()
    lineno = 1
    while True:
        raw = _read_line(f, path)
        lineno += 1
        if not raw or raw in (b"\n", b"\r\n"):
            break  # a blank line ends the header; EOF ends a detached header (.nhdr)
        text = raw.decode("latin-1").rstrip("\r\n")
        if text.startswith("#"):
            continue
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            raise InputError(f"{path}: malformed NRRD header line {lineno}: {text[:200]!r} "
                             "(expected 'field: value' or 'key:=value')")
        if value.startswith("="):
            value = value[1:]
            keyvalues.add(name.strip())
        entries.append((name.strip(), value.strip()))
    log.debug("%s: %s header with %d entries", path, magic, len(entries))
    return Header("nrrd", entries, f.tell(), path, keyvalues)


def pixel_layout(header: Header) -> PixelLayout:
    """Structural fields of ``header`` -> :class:`PixelLayout`; InputError names any bad field."""
    if header.kind == "nrrd":
        return _nrrd_layout(header)
    return _mha_layout(header)


def _mha_layout(h: Header) -> PixelLayout:
    ndims = _parse_int_list(h, "NDims", h.require("NDims"))
    sizes = _parse_int_list(h, "DimSize", h.require("DimSize"))
    if len(ndims) != 1 or not 1 <= ndims[0] <= 4 or len(sizes) != ndims[0] or min(sizes) < 0:
        raise InputError(f"{h.path}: NDims={h.get('NDims')!r} and DimSize={h.get('DimSize')!r} disagree "
                         "or are out of range (1-4 non-negative sizes)")
    # Without Kinds, PLUS treats the last of 3+ axes as the frame list.
    default = ("domain",) * (len(sizes) - 1) + ("list",) if len(sizes) >= 3 else ("domain",) * len(sizes)
    kinds = tuple(h.get("Kinds", "").split()) or default
    if len(kinds) != len(sizes):
        raise InputError(f"{h.path}: Kinds={h.get('Kinds')!r} has {len(kinds)} entries, DimSize has {len(sizes)}")
    etype = h.require("ElementType").upper()
    if etype not in _MET_TO_DTYPE:
        raise InputError(f"{h.path}: unsupported ElementType {etype!r} (known: {sorted(_MET_TO_DTYPE)})")
    msb = (h.get("BinaryDataByteOrderMSB") or h.get("ElementByteOrderMSB") or "False").lower() == "true"
    dtype = np.dtype(_MET_TO_DTYPE[etype]).newbyteorder(">" if msb else "<")
    if (h.get("BinaryData") or "True").lower() != "true":
        raise InputError(f"{h.path}: BinaryData={h.get('BinaryData')!r}: only binary pixel data is supported")
    channels = _parse_int_list(h, "ElementNumberOfChannels", h.get("ElementNumberOfChannels", "1"))
    if len(channels) != 1 or channels[0] < 1:
        raise InputError(f"{h.path}: ElementNumberOfChannels must be one positive integer, got "
                         f"{h.get('ElementNumberOfChannels')!r}")
    compressed = (h.get("CompressedData") or "False").lower() == "true"
    csize = h.get("CompressedDataSize")
    csize_val = _parse_int_list(h, "CompressedDataSize", csize)[0] if compressed and csize else None
    data_path, offset = _mha_data_location(h)
    return PixelLayout(sizes, kinds, dtype, channels[0], "zlib" if compressed else "none",
                       data_path, offset, csize_val)


def _mha_data_location(h: Header) -> tuple[Path, int]:
    value = h.require("ElementDataFile")
    if value.upper() == "LOCAL":
        return h.path, h.data_offset
    if value.upper().startswith("LIST") or "%" in value:
        raise InputError(f"{h.path}: ElementDataFile={value!r}: file lists and patterns are not supported, "
                         "only LOCAL or a single data file")
    data_path = h.path.parent / value
    skip = _parse_int_list(h, "HeaderSize", h.get("HeaderSize", "0"))[0]
    if skip < 0:
        raise InputError(f"{h.path}: HeaderSize={skip} (read from the end of the file) is not supported")
    return data_path, skip


def _nrrd_layout(h: Header) -> PixelLayout:
    dim = _parse_int_list(h, "dimension", h.require("dimension"))
    sizes = _parse_int_list(h, "sizes", h.require("sizes"))
    if len(dim) != 1 or len(sizes) != dim[0] or min(sizes, default=0) < 0:
        raise InputError(f"{h.path}: dimension={h.get('dimension')!r} and sizes={h.get('sizes')!r} disagree")
    kinds = [k.lower() for k in (h.get("kinds") or " ".join(["domain"] * len(sizes))).split()]
    if len(kinds) != len(sizes):
        raise InputError(f"{h.path}: kinds={h.get('kinds')!r} has {len(kinds)} entries, sizes has {len(sizes)}")
    components = 1
    if kinds and kinds[0] in _NRRD_COMPONENT_KINDS:
        components, sizes, kinds = sizes[0], sizes[1:], kinds[1:]
    tname = " ".join(h.require("type").split()).lower()
    if tname not in _NRRD_TO_DTYPE:
        raise InputError(f"{h.path}: unsupported NRRD type {h.get('type')!r}")
    dtype = np.dtype(_NRRD_TO_DTYPE[tname])
    if dtype.itemsize > 1:
        endian = (h.get("endian") or "").lower()
        if endian not in ("little", "big"):
            raise InputError(f"{h.path}: NRRD 'endian' must be 'little' or 'big' for type {tname!r}, got {endian!r}")
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    encoding = (h.get("encoding") or "").lower()
    if encoding not in ("raw", "gzip", "gz"):
        raise InputError(f"{h.path}: NRRD encoding {encoding!r} is not supported (raw, gzip)")
    data_path, offset = _nrrd_data_location(h)
    return PixelLayout(tuple(sizes), tuple(kinds), dtype, components,
                       "none" if encoding == "raw" else "gzip", data_path, offset)


def _nrrd_data_location(h: Header) -> tuple[Path, int]:
    data_file = h.get("data file") or h.get("datafile")
    path, offset = (h.path, h.data_offset) if data_file is None else (h.path.parent / data_file, 0)
    if data_file is not None and (data_file.upper().startswith("LIST") or len(data_file.split()) > 1):
        raise InputError(f"{h.path}: 'data file: {data_file}': multiple data files are not supported")
    line_skip = _parse_int_list(h, "line skip", h.get("line skip", "0"))[0]
    byte_skip = _parse_int_list(h, "byte skip", h.get("byte skip", "0"))[0]
    if line_skip < 0 or byte_skip < 0:
        raise InputError(f"{h.path}: negative 'line skip'/'byte skip' ({line_skip}, {byte_skip}) is not supported")
    if line_skip:
        with open(path, "rb") as f:
            f.seek(offset)
            for _ in range(line_skip):
                f.readline()
            offset = f.tell()
    return path, offset + byte_skip


class PixelReader:
    """Sequential reader of the pixel bytes described by a :class:`PixelLayout`.

    ``read(n)`` returns exactly ``n`` bytes or raises InputError naming the file and how much was
    available. Compressed data is inflated incrementally (zlib for MetaImage, gzip for NRRD; several
    concatenated streams are accepted, as PLUS writes when it appends frames).
    """

    def __init__(self, layout: PixelLayout) -> None:
        self.layout = layout
        self._f = open(layout.data_path, "rb")
        self._f.seek(layout.data_offset)
        self._wbits = {"zlib": zlib.MAX_WBITS, "gzip": 16 + zlib.MAX_WBITS}.get(layout.compression)
        self._inflater = zlib.decompressobj(self._wbits) if self._wbits else None
        self._pending = b""
        self._raw_left = layout.compressed_size  # None: until end of file
        self.position = 0  # uncompressed bytes delivered so far

    def __enter__(self) -> "PixelReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def _raw_read(self) -> bytes:
        n = _CHUNK if self._raw_left is None else min(_CHUNK, self._raw_left)
        chunk = self._f.read(n) if n > 0 else b""
        if self._raw_left is not None:
            self._raw_left -= len(chunk)
        return chunk

    def read(self, n: int) -> bytes:
        data = self._f.read(n) if self._inflater is None else self._inflate(n)
        if len(data) != n:
            raise InputError(f"{self.layout.data_path}: pixel data ends after {self.position + len(data)} bytes, "
                             f"expected at least {self.position + n} (truncated or header sizes wrong)")
        self.position += n
        return data

    def check_end(self) -> None:
        """Inflate what is left of the current compressed stream, so that its checksum is verified.

        A corrupt deflate block often inflates to the right number of wrong bytes: only the stream's
        trailing checksum (adler32 for zlib, CRC32 for gzip) tells. Raises InputError when it does not
        match or the stream has no end; a no-op for raw data."""
        if self._inflater is None:
            return
        try:
            while not self._inflater.eof:
                if not self._pending:
                    self._pending = self._raw_read()
                    if not self._pending:
                        raise InputError(f"{self.layout.data_path}: the {self.layout.compression} pixel data "
                                         f"stops before the end of its stream (truncated)")
                self._inflater.decompress(self._pending, 1 << 20)
                self._pending = self._inflater.unconsumed_tail
        except zlib.error as e:
            raise CorruptPixelData(f"{self.layout.data_path}: corrupt {self.layout.compression} pixel data "
                                   f"(the decoded bytes do not match the stream's checksum): {e}") from e

    def _inflate(self, n: int) -> bytes:
        parts: list[bytes] = []
        need = n
        try:
            while need > 0:
                if self._inflater.eof:
                    # Another stream may follow (gzip members / appended zlib streams).
                    self._pending = self._inflater.unused_data + self._pending
                    if not self._pending:
                        self._pending = self._raw_read()
                    if not self._pending:
                        break
                    self._inflater = zlib.decompressobj(self._wbits)
                if not self._pending:
                    self._pending = self._raw_read()
                    if not self._pending:
                        break
                out = self._inflater.decompress(self._pending, need)
                self._pending = self._inflater.unconsumed_tail
                parts.append(out)
                need -= len(out)
        except zlib.error as e:
            raise CorruptPixelData(f"{self.layout.data_path}: corrupt {self.layout.compression} pixel data after "
                                   f"{self.position + n - need} bytes: {e}") from e
        return b"".join(parts)
