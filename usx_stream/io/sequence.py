"""Read and write PLUS tracked-ultrasound sequence files (``.igs.mha``, ``.igs.mhd``, ``.igs.nrrd``).

A sequence file is a MetaImage or NRRD image whose last axis lists the frames; every frame's tracking
data sits in the header as ``Seq_FrameNNNN_<Field>`` fields (see :mod:`usx_stream.io.frame_fields`).
Field names and values that could not be written as they were are percent-escaped in a file marked
``UsxFieldEncoding = percent-utf8`` and decoded here (see :mod:`usx_stream.io.header_escape`).

Pixel orientation follows PLUS (igsioVideoFrame::GetFlipAxes): the file's ``UltrasoundImageOrientation``
says which transducer directions the image axes run along (first letter: x axis towards the Marked or
Unmarked side; second: y axis towards the Far or Near field; optional third: slice axis Ascending or
Descending). On read, PLUS converts B-mode images to ``MF``: a ``U`` first letter reverses the pixel
columns, an ``N`` second letter reverses the rows. The third letter only reorders the slices of a
volumetric frame; for the 2D frames handled here it changes nothing, exactly as in PLUS. Frames are
written in ``MF`` orientation, so no flip is needed when PLUS reads them back.

Pixel spacing in the header (``ElementSpacing``) is informational: the spatial calibration
``ImageToProbe`` carries the pixel size, as in PLUS.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from ..frames import TrackedFrame
from .frame_fields import FrameMeta, group_frame_fields, is_frame_field, parse_frame
from .header_escape import ENCODING_FIELD, ENCODING_VALUE, decode_meta
from .metaimage import CorruptPixelData, Header, PixelLayout, PixelReader, pixel_layout, read_header
from .sequence_write import write_sequence, write_sequence_report

log = logging.getLogger(__name__)

__all__ = ["Sequence", "read_sequence", "iter_frames", "write_sequence", "write_sequence_report",
           "orientation_flips"]

_ORIENTATION_KEYS = ("UltrasoundImageOrientation", "ultrasound image orientation")
_TYPE_KEYS = ("UltrasoundImageType", "ultrasound image type")
_SUPPORTED_TYPES = ("BRIGHTNESS", "RGB_COLOR")


@dataclass
class Sequence:
    """A PLUS sequence file in memory.

    Attributes
    ----------
    frames : list of TrackedFrame
        Pixels ``(H, W)`` (or ``(H, W, C)`` for multi-component images) in MF orientation.
    header : dict[str, str]
        Every non-frame header field as written in the file (structural ones included).
    orientation : str
        ``UltrasoundImageOrientation`` as written in the file (e.g. ``"MFA"``).
    spacing : tuple of float
        Pixel spacing ``(sx, sy)`` from the header, mm (informational; ImageToProbe carries the scale).
    image_type : str
        ``UltrasoundImageType`` (``"BRIGHTNESS"`` when absent).
    path : Path or None
    """

    frames: list[TrackedFrame]
    header: dict[str, str]
    orientation: str
    spacing: tuple[float, ...]
    image_type: str = "BRIGHTNESS"
    path: Path | None = None
    format: str = field(default="mha")

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[TrackedFrame]:
        return iter(self.frames)


def orientation_flips(orientation: str) -> tuple[bool, bool]:
    """``(reverse_columns, reverse_rows)`` that bring an image stored as ``orientation`` to MF.

    Accepts the 2- and 3-letter B-mode orientations PLUS defines (``MF``, ``MN``, ``UF``, ``UN``,
    ``MFA``, ``MFD``, ``MNA``, ``MND``, ``UFA``, ``UFD``, ``UNA``, ``UND``); ValueError for others
    (the transposed RF orientations ``FM``/``NU``/... PLUS cannot convert to MF either).
    """
    o = orientation.strip().upper()
    if len(o) not in (2, 3) or o[0] not in "UM" or o[1] not in "FN" or (len(o) == 3 and o[2] not in "AD"):
        raise ValueError(f"UltrasoundImageOrientation {orientation!r} is not supported: expected one of "
                         "MF, MN, UF, UN, optionally followed by A or D (e.g. 'MFA')")
    return o[0] == "U", o[1] == "N"


@dataclass
class _Parsed:
    header: Header
    layout: PixelLayout
    general: dict[str, str]
    metas: list[FrameMeta]
    frame_hw: tuple[int, int]
    orientation: str
    image_type: str
    spacing: tuple[float, ...]


def _first(header: Header, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = header.get(key)
        if value is not None:
            return value
    return None


def _frame_geometry(h: Header, layout: PixelLayout) -> tuple[tuple[int, int], int]:
    """``((H, W), number of frames)`` from the axis sizes and kinds; ValueError for 3D frames."""
    sizes, kinds = list(layout.sizes), [k.lower() for k in layout.kinds]
    list_axes = [i for i, k in enumerate(kinds) if k in ("list", "time")]
    if len(list_axes) > 1:
        raise InputError(f"{h.path}: more than one frame axis in kinds {layout.kinds}")
    n = sizes.pop(list_axes[0]) if list_axes else 1
    spatial = sizes + [1] * (3 - len(sizes))
    if len(spatial) > 3 or spatial[2] > 1:
        raise InputError(f"{h.path}: frames of size {sizes} are volumetric; only 2D frames are supported "
                         "(read reconstructed volumes with usx_stream.io.volumes.read_volume)")
    return (spatial[1], spatial[0]), n


def _spacing(h: Header) -> tuple[float, ...]:
    text = h.get("ElementSpacing") or h.get("spacings")
    try:
        if text is None and h.get("space directions"):
            vecs = re.findall(r"\(([^)]*)\)", h.get("space directions"))
            text = " ".join(str(np.linalg.norm([float(c) for c in v.split(",")])) for v in vecs)
        if text is None:
            return (1.0, 1.0)
        values = tuple(float(v) for v in text.split() if v.lower() != "nan")
    except ValueError as e:
        raise InputError(f"{h.path}: pixel spacing {text!r} is not a list of numbers") from e
    return values[:2] if len(values) >= 2 else (1.0, 1.0)


def _parse(path: str | Path) -> _Parsed:
    header = read_header(path)
    layout = pixel_layout(header)
    frame_hw, n_frames = _frame_geometry(header, layout)
    status_fields = ("Status", "ImageStatus") if header.kind == "nrrd" else ("ImageStatus",)
    try:
        raw_fields = group_frame_fields(header.entries)
        n_frames = max(n_frames, max(raw_fields, default=-1) + 1)
        # Every frame's fields are parsed here, so a malformed one fails before any pixel is read.
        metas = [parse_frame(i, raw_fields.get(i, {}), status_fields=status_fields) for i in range(n_frames)]
    except InputError:
        raise
    except ValueError as e:  # the field parsers name the field and the value; add the file
        raise InputError(f"{path}: {e}") from e
    if (header.get(ENCODING_FIELD) or "").strip().lower() == ENCODING_VALUE:
        metas = [decode_meta(m) for m in metas]  # names and values this package wrote escaped
    if not raw_fields and n_frames > 1:
        log.warning("%s: no per-frame fields (Seq_FrameNNNN_*): its %d slices are read as frames without "
                    "timestamps or transforms; a reconstructed volume rather than a PLUS sequence?", path, n_frames)
    general = {k: v for k, v in header.entries if not is_frame_field(k)}
    orientation = _first(header, _ORIENTATION_KEYS)
    if orientation is None:
        log.warning("%s: no UltrasoundImageOrientation field; assuming MF", path)
        orientation = "MF"
    image_type = (_first(header, _TYPE_KEYS) or "BRIGHTNESS").strip().upper()
    if image_type not in _SUPPORTED_TYPES:
        raise InputError(f"{path}: UltrasoundImageType {image_type!r} is not supported "
                         f"(supported: {', '.join(_SUPPORTED_TYPES)})")
    try:
        orientation_flips(orientation)  # validate once, before any frame is read
    except ValueError as e:
        raise InputError(f"{path}: {e}") from e
    return _Parsed(header, layout, general, metas, frame_hw, orientation, image_type,
                   _spacing(header))


def _frames(parsed: _Parsed) -> Iterator[TrackedFrame]:
    h, w = parsed.frame_hw
    layout = parsed.layout
    n_pixel_frames = int(np.prod(layout.sizes)) // max(h * w, 1) if h * w else 0
    frame_bytes = h * w * layout.bytes_per_pixel
    shape = (h, w) if layout.components == 1 else (h, w, layout.components)
    flip_cols, flip_rows = orientation_flips(parsed.orientation)
    native = layout.dtype.newbyteorder("=")
    reader = PixelReader(layout) if frame_bytes else None
    try:
        for i, meta in enumerate(parsed.metas):
            if reader is not None and i < n_pixel_frames:
                try:
                    data = reader.read(frame_bytes)
                except InputError as e:
                    damage = ("is where the damage showed: some frames up to it have wrong pixels"
                              if isinstance(e, CorruptPixelData) else "is incomplete")
                    raise InputError(f"{e}: Seq_Frame{i:04d} of {len(parsed.metas)} frames {damage}") from e
                raw = np.frombuffer(data, dtype=layout.dtype).reshape(shape)
                raw = raw[:, ::-1] if flip_cols else raw
                pixels = np.array(raw[::-1] if flip_rows else raw, dtype=native)
            else:
                pixels = np.zeros(shape if frame_bytes else (0, 0), dtype=native)
            yield TrackedFrame(pixels=pixels, timestamp=meta.timestamp, transforms=meta.transforms,
                               transform_status=meta.transform_status, image_status=meta.image_status,
                               fields=meta.fields, index=i)
        if reader is not None:
            # A damaged deflate block can inflate to the right count of wrong pixels: only the checksum at
            # the end of the stream tells, so it is read after the last frame (the frames already delivered
            # stay delivered; the error says the recording cannot be trusted).
            try:
                reader.check_end()
            except InputError as e:
                raise InputError(f"{e}: after all {len(parsed.metas)} frames: some frames have wrong pixels") from e
    finally:
        if reader is not None:
            reader.close()


def iter_frames(path: str | Path) -> Iterator[TrackedFrame]:
    """Yield the frames of a sequence file one at a time (pixels in MF orientation).

    Only the header and one frame's pixels are in memory at once; compressed pixel data is inflated
    incrementally. The header is parsed and validated before the first frame is yielded.
    """
    parsed = _parse(path)
    return _frames(parsed)


def read_sequence(path: str | Path) -> Sequence:
    """Read a whole PLUS sequence file (``.igs.mha``/``.mha``/``.mhd``/``.igs.nrrd``/``.nrrd``).

    Raises
    ------
    InputError
        Malformed header fields (the message names the file, the field and its value), unsupported
        orientation/type, or truncated/corrupt pixel data (the message names the frame).
    """
    parsed = _parse(path)
    frames = list(_frames(parsed))
    return Sequence(frames=frames, header=parsed.general, orientation=parsed.orientation,
                    spacing=parsed.spacing, image_type=parsed.image_type, path=Path(path),
                    format=parsed.header.kind)

