"""OpenIGTLink I/O, one job per module:

- :mod:`codec` (header v1/v2, metadata, type table) with :mod:`codec_image`, :mod:`codec_basic`
  (TRANSFORM, STATUS, STRING, POINT) and :mod:`codec_polydata`; :mod:`crc` (CRC64 ECMA-182);
- :mod:`framing` (byte stream -> CRC-checked messages, resynchronisation), :mod:`transport` (one socket,
  its I/O threads, queues, keep-alive, dead-peer detection), :mod:`endpoints` (reconnecting Client,
  many-client Server);
- :mod:`receiver` (PLUS conventions -> TrackedFrame / XrayImage), :mod:`interpolate`;
- :mod:`publisher` (surfaces as POLYDATA to Slicer), :mod:`zmq_publisher` (ZeroMQ multipart schema).

Importing the package registers every content codec (IMAGE, TRANSFORM, STATUS, STRING, POINT, POLYDATA).
"""

from . import codec_basic, codec_image, codec_polydata  # noqa: F401  (registration side effect only)
from .codec import DecodeError, Message, decode_body, encode, encode_bytes
from .codec_basic import PointItem, StatusContent
from .codec_image import ImageContent
from .codec_polydata import PolyAttribute, PolyData

__all__ = ["DecodeError", "Message", "decode_body", "encode", "encode_bytes", "PointItem", "StatusContent",
           "ImageContent", "PolyAttribute", "PolyData"]
