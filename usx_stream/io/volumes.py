"""Read and write 3D volumes as MetaImage (``.mha``/``.mhd``) or NRRD (``.nrrd``/``.nhdr``).

Geometry: the volume grid is axis-aligned in its frame (usually Reference). Voxel ``(i, j, k)`` sits at
``origin_mm + (i, j, k) * spacing_mm`` -- MetaImage ``Offset`` / ``ElementSpacing``, NRRD ``space origin``
and the diagonal of ``space directions``. Coordinates are taken as written (PLUS writes Reference
coordinates and labels them ``AnatomicalOrientation = RAI`` regardless). A direction matrix that only
reverses axes is applied by flipping the voxel order; any rotation or axis permutation is rejected with a
ValueError naming the field, since :class:`~usx_stream.frames.Volume` is axis-aligned by definition.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from pathlib import Path

import numpy as np

from ..frames import Volume
from .metaimage import Header, PixelReader, pixel_layout, read_header
from .metaimage_write import format_mha_lines, format_nrrd_lines, met_element_type, nrrd_type

log = logging.getLogger(__name__)

__all__ = ["read_volume", "write_volume"]

_FRAME_KEY = "CoordinateFrame"


def _floats(h: Header, name: str, text: str, n: int) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.replace(",", " ").replace("(", " ").replace(")", " ").split()])
    except ValueError as e:
        raise ValueError(f"{h.path}: header field {name}={text!r} is not a list of numbers") from e
    if values.size != n:
        raise ValueError(f"{h.path}: header field {name}={text!r}: expected {n} numbers, got {values.size}")
    return values


def _mha_geometry(h: Header, ndim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(origin, spacing, direction)`` with ``direction[:, a]`` the unit direction of axis ``a``."""
    origin_key = next((k for k in ("Offset", "Origin", "Position") if h.get(k) is not None), None)
    origin = _floats(h, origin_key, h.get(origin_key), ndim) if origin_key else np.zeros(ndim)
    spacing_key = "ElementSpacing" if h.get("ElementSpacing") is not None else "ElementSize"
    spacing = _floats(h, spacing_key, h.get(spacing_key), ndim) if h.get(spacing_key) else np.ones(ndim)
    dir_key = next((k for k in ("TransformMatrix", "Rotation", "Orientation") if h.get(k) is not None), None)
    # MetaIO stores the matrix column-major: axis a's direction is values[a*ndim:(a+1)*ndim].
    direction = _floats(h, dir_key, h.get(dir_key), ndim * ndim).reshape(ndim, ndim).T if dir_key else np.eye(ndim)
    return origin, spacing, direction


def _nrrd_geometry(h: Header, ndim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    directions = h.get("space directions")
    if directions is None:
        spacing = _floats(h, "spacings", h.get("spacings"), ndim) if h.get("spacings") else np.ones(ndim)
        origin = np.zeros(ndim)
        return origin, spacing, np.eye(ndim)
    vecs = [t for t in re.findall(r"\([^)]*\)|none", directions, flags=re.IGNORECASE) if t.lower() != "none"]
    if len(vecs) != ndim:
        raise ValueError(f"{h.path}: 'space directions: {directions}' has {len(vecs)} vectors for {ndim} axes")
    matrix = np.stack([_floats(h, "space directions", v, ndim) for v in vecs], axis=1)
    spacing = np.linalg.norm(matrix, axis=0)
    if np.any(spacing == 0):
        raise ValueError(f"{h.path}: 'space directions: {directions}' has a zero-length axis")
    origin_text = h.get("space origin")
    origin = _floats(h, "space origin", origin_text, ndim) if origin_text else np.zeros(ndim)
    return origin, spacing, matrix / spacing


def _axis_aligned(h: Header, direction: np.ndarray) -> np.ndarray:
    """Per-axis signs (+1/-1) when ``direction`` only reverses axes; ValueError otherwise."""
    signs = np.sign(np.diag(direction))
    if np.any(signs == 0) or not np.allclose(direction, np.diag(signs), atol=1e-6):
        raise ValueError(f"{h.path}: the volume's direction matrix {np.round(direction, 6).tolist()} "
                         "(TransformMatrix / space directions) is not axis-aligned; only identity or axis "
                         "reversals are supported")
    return signs


def read_volume(path: str | Path, *, frame: str | None = None) -> Volume:
    """Read a 3D (or 2D, as one slice) single-component volume.

    Parameters
    ----------
    path : str or Path
        ``.mha``, ``.mhd``, ``.nrrd`` or ``.nhdr``; any scalar type, raw or compressed.
    frame : str, optional
        Frame the grid lives in; default: the file's ``CoordinateFrame`` field, else ``"Reference"``.

    Returns
    -------
    Volume
        ``data`` ``(Z, Y, X)`` in native byte order, ``origin_mm`` and ``spacing_mm`` ``(3,)``.
    """
    h = read_header(path)
    layout = pixel_layout(h)
    sizes = list(layout.sizes)
    while len(sizes) > 3 and sizes[-1] == 1:
        sizes.pop()  # a one-frame sequence axis
    if not 2 <= len(sizes) <= 3:
        raise ValueError(f"{h.path}: sizes {list(layout.sizes)} (kinds {layout.kinds}): expected a 2D or 3D "
                         "image (use usx_stream.io.sequence.read_sequence for frame sequences)")
    # PLUS labels the third axis of some reconstructed volumes 'list': it is still the z axis.
    if layout.components != 1:
        raise ValueError(f"{h.path}: {layout.components} components per voxel; only scalar volumes are supported")
    ndim = len(sizes)
    origin, spacing, direction = (_nrrd_geometry if h.kind == "nrrd" else _mha_geometry)(h, ndim)
    signs = _axis_aligned(h, direction)
    shape_zyx = tuple(reversed(sizes + [1] * (3 - ndim)))
    nbytes = int(np.prod(shape_zyx)) * layout.dtype.itemsize
    with PixelReader(layout) as reader:
        data = np.frombuffer(reader.read(nbytes), dtype=layout.dtype).reshape(shape_zyx)
        reader.check_end()  # a corrupt block inflates to wrong bytes of the right count: the checksum tells
    # An axis running backwards: reverse it so that voxel index grows with the coordinate.
    for axis in range(ndim):
        if signs[axis] < 0:
            data = np.flip(data, axis=2 - axis)
            origin[axis] -= (sizes[axis] - 1) * spacing[axis]
    origin3 = np.concatenate([origin, np.zeros(3 - ndim)])
    spacing3 = np.concatenate([spacing, np.ones(3 - ndim)])
    data = np.array(data, dtype=layout.dtype.newbyteorder("="))
    return Volume(data=data, origin_mm=origin3, spacing_mm=spacing3,
                  frame=frame or h.get(_FRAME_KEY) or "Reference")


def _volume_array(volume: Volume, channel: str | None) -> np.ndarray:
    if channel is None:
        arr = volume.data
    elif channel == "weights":
        if volume.weights is None:
            raise ValueError("write_volume: channel='weights' but volume.weights is None")
        arr = volume.weights
    elif channel in volume.channels:
        arr = volume.channels[channel]
    else:
        raise ValueError(f"write_volume: channel {channel!r} not in volume.channels {sorted(volume.channels)}")
    arr = np.asarray(arr)
    if arr.shape != volume.data.shape:
        raise ValueError(f"write_volume: channel {channel!r} has shape {arr.shape}, data has {volume.data.shape}")
    return arr.astype(np.uint8) if arr.dtype == bool else arr


def _num(values) -> str:
    return " ".join(repr(float(v)) for v in values)


def write_volume(path: str | Path, volume: Volume, *, channel: str | None = None, compress: bool = True,
                 compress_level: int = 1) -> Path:
    """Write ``volume.data`` (or ``volume.weights`` / a named channel) with its origin and spacing.

    ``.mha`` keeps pixels in the file, ``.mhd`` beside it (``.raw``/``.zraw``), ``.nrrd`` is one file.
    Origin and spacing are written with round-trip precision; the frame name goes to ``CoordinateFrame``.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".mha", ".mhd", ".nrrd")):
        raise ValueError(f"volume file name {path.name!r}: expected a .mha, .mhd or .nrrd suffix")
    arr = np.ascontiguousarray(_volume_array(volume, channel))
    payload = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    if compress:
        wbits = 16 + zlib.MAX_WBITS if name.endswith(".nrrd") else zlib.MAX_WBITS  # gzip for NRRD, zlib for MHA
        c = zlib.compressobj(compress_level, zlib.DEFLATED, wbits)
        payload = c.compress(payload) + c.flush()
    z, y, x = arr.shape
    if name.endswith(".nrrd"):
        head = _nrrd_header(volume, arr, compress)
        _write_atomic(path, head + payload)
        return path
    data_name = path.name[:-4] + (".zraw" if compress else ".raw") if name.endswith(".mhd") else None
    entries = [("ObjectType", "Image"), ("NDims", "3"), ("BinaryData", "True"), ("BinaryDataByteOrderMSB", "False"),
               ("CompressedData", str(compress))]
    entries += [("CompressedDataSize", str(len(payload)))] if compress else []
    entries += [("TransformMatrix", "1 0 0 0 1 0 0 0 1"), ("Offset", _num(volume.origin_mm)),
                ("CenterOfRotation", "0 0 0"), ("AnatomicalOrientation", "RAI"),
                ("ElementSpacing", _num(volume.spacing_mm)), ("DimSize", f"{x} {y} {z}"),
                ("ElementType", met_element_type(arr.dtype)), (_FRAME_KEY, volume.frame),
                ("ElementDataFile", data_name or "LOCAL")]
    if data_name:
        _write_atomic(path.with_name(data_name), payload)
        _write_atomic(path, format_mha_lines(entries))
    else:
        _write_atomic(path, format_mha_lines(entries) + payload)
    return path


def _nrrd_header(volume: Volume, arr: np.ndarray, compress: bool) -> bytes:
    z, y, x = arr.shape
    sx, sy, sz = (repr(float(s)) for s in volume.spacing_mm)
    ox, oy, oz = (repr(float(o)) for o in volume.origin_mm)
    entries = [("type", nrrd_type(arr.dtype)), ("dimension", "3"), ("space dimension", "3"),
               ("sizes", f"{x} {y} {z}"), ("space directions", f"({sx},0,0) (0,{sy},0) (0,0,{sz})"),
               ("kinds", "domain domain domain"), ("endian", "little"),
               ("encoding", "gzip" if compress else "raw"), ("space origin", f"({ox},{oy},{oz})"),
               (_FRAME_KEY, volume.frame)]
    return format_nrrd_lines(entries, {_FRAME_KEY}) + b"\n"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
