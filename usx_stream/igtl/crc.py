"""CRC64 ECMA-182 as OpenIGTLink uses it (polynomial 0x42F0E1EBA9EA3693, init 0, no reflection, no xor-out).

Three implementations, fastest first, all giving the same value:

- ``anycrc`` (C, word-wise): ~0.06 ms for a 500 KB body on this machine;
- ``crcmod``'s C extension (installed with pyigtl): ~1.5 ms for 500 KB;
- a table-driven pure-Python fallback (slow; only used when neither package is present).

``crc64(data, crc=0)`` continues a running CRC, so a message body split into parts (header, pixels,
metadata) is checked without joining them first.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

POLY = 0x42F0E1EBA9EA3693
_MASK = 0xFFFFFFFFFFFFFFFF


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 56
        for _ in range(8):
            crc = ((crc << 1) ^ POLY) & _MASK if crc & (1 << 63) else (crc << 1) & _MASK
        table.append(crc)
    return table


_TABLE = _make_table()


def crc64_python(data, crc: int = 0) -> int:
    """Reference table-driven CRC64 ECMA-182 of ``data`` (bytes-like), continuing from ``crc``."""
    table = _TABLE
    for b in bytes(data):
        crc = table[((crc >> 56) ^ b) & 0xFF] ^ ((crc << 8) & _MASK)
    return crc


def _select():
    try:
        import anycrc

        engine = anycrc.CRC(width=64, poly=POLY, init=0, refin=False, refout=False, xorout=0)

        def crc64_anycrc(data, crc: int = 0) -> int:
            return engine.calc(data, crc)

        return crc64_anycrc, "anycrc"
    except ImportError:
        pass
    try:
        import crcmod

        fn = crcmod.mkCrcFun(0x1_0000_0000_0000_0000 | POLY, rev=False, initCrc=0, xorOut=0)

        def crc64_crcmod(data, crc: int = 0) -> int:
            return fn(data, crc)

        return crc64_crcmod, "crcmod"
    except ImportError:
        logger.warning("neither anycrc nor crcmod is installed: CRC64 runs in pure Python (slow)")
        return crc64_python, "python"


crc64, BACKEND = _select()
crc64.__doc__ = "CRC64 ECMA-182 of ``data`` (bytes-like), continuing from ``crc`` (0 to start)."
