"""MetaImage and NRRD writing: header lines, element types, and (optionally compressed) pixel bytes.

The reading side, and the header layout both formats share, is :mod:`usx_stream.io.metaimage`.
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

import numpy as np

# MetaIO element type written for each numpy dtype (MET_LONG_LONG for 8-byte integers: MET_LONG is 4 bytes).
_DTYPE_TO_MET = {
    "i1": "MET_CHAR", "u1": "MET_UCHAR", "i2": "MET_SHORT", "u2": "MET_USHORT", "i4": "MET_INT",
    "u4": "MET_UINT", "i8": "MET_LONG_LONG", "u8": "MET_ULONG_LONG", "f4": "MET_FLOAT", "f8": "MET_DOUBLE",
}
# NRRD type names as teem writes them.
_DTYPE_TO_NRRD = {"i1": "int8", "u1": "uint8", "i2": "int16", "u2": "uint16", "i4": "int32",
                  "u4": "uint32", "i8": "int64", "u8": "uint64", "f4": "float", "f8": "double"}


class PixelWriter:
    """Write pixel bytes raw, zlib-compressed (MetaImage) or gzip-compressed (NRRD) to an open file."""

    def __init__(self, f: BinaryIO, compression: str, *, level: int = 6) -> None:
        if compression not in ("none", "zlib", "gzip"):
            raise ValueError(f"compression must be 'none', 'zlib' or 'gzip', got {compression!r}")
        self._f = f
        wbits = {"zlib": zlib.MAX_WBITS, "gzip": 16 + zlib.MAX_WBITS}.get(compression)
        self._deflater = zlib.compressobj(level, zlib.DEFLATED, wbits) if wbits else None
        self.bytes_written = 0

    def write(self, data) -> None:
        out = self._deflater.compress(data) if self._deflater else bytes(memoryview(data).cast("B"))
        self._f.write(out)
        self.bytes_written += len(out)

    def close(self) -> int:
        """Flush the compressor; returns the number of bytes written to the file."""
        if self._deflater is not None:
            out = self._deflater.flush()
            self._f.write(out)
            self.bytes_written += len(out)
            self._deflater = None
        return self.bytes_written


def met_element_type(dtype: np.dtype) -> str:
    """MetaIO ``ElementType`` for a numpy dtype (ValueError for unsupported types)."""
    code = np.dtype(dtype).str[1:]
    if code not in _DTYPE_TO_MET:
        raise ValueError(f"dtype {np.dtype(dtype)} has no MetaImage ElementType")
    return _DTYPE_TO_MET[code]


def nrrd_type(dtype: np.dtype) -> str:
    """NRRD ``type`` for a numpy dtype (ValueError for unsupported types)."""
    code = np.dtype(dtype).str[1:]
    if code not in _DTYPE_TO_NRRD:
        raise ValueError(f"dtype {np.dtype(dtype)} has no NRRD type")
    return _DTYPE_TO_NRRD[code]


def format_mha_lines(entries: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k} = {v}\n" for k, v in entries).encode("latin-1")


def format_nrrd_lines(entries: list[tuple[str, str]], keyvalues: set[str]) -> bytes:
    lines = ["NRRD0004\n", "# Complete NRRD file format specification at:\n",
             "# http://teem.sourceforge.net/nrrd/format.html\n"]
    lines += [f"{k}:={v}\n" if k in keyvalues else f"{k}: {v}\n" for k, v in entries]
    return "".join(lines).encode("latin-1")
