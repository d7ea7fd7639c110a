"""IMAGE content codec (2D and 3D, scalar or vector voxels, every OpenIGTLink scalar type).

Content layout (72-byte image header, big-endian, then the voxels)::

    VERSION u16 | COMPONENTS u8 | SCALAR_TYPE u8 | ENDIAN u8 (1 big, 2 little) | COORD u8 (1 RAS, 2 LPS)
    | SIZE u16[3] (i, j, k) | MATRIX f32[12] = tx ty tz sx sy sz nx ny nz px py pz
    | SUBVOLUME_OFFSET u16[3] | SUBVOLUME_SIZE u16[3] | voxels

The matrix columns ``t, s, n`` are the i, j, k axes scaled by the voxel spacing, and ``p`` is the
position of the image *centre* (voxel ``(size - 1) / 2``), as the C library, PLUS, Slicer and pyigtl use it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from . import codec

IMAGE_HEADER = struct.Struct(">HBBBB3H12f3H3H")
SCALAR_TYPES = {2: np.int8, 3: np.uint8, 4: np.int16, 5: np.uint16, 6: np.int32, 7: np.uint32,
                10: np.float32, 11: np.float64}
_TYPE_CODES = {np.dtype(v): k for k, v in SCALAR_TYPES.items()}
_WIRE_DTYPES = {(code, endian): np.dtype(t).newbyteorder(">" if endian == 1 else "<")
                for code, t in SCALAR_TYPES.items() for endian in (1, 2)}
_COORDS = {"RAS": 1, "LPS": 2}
# The largest full image a subvolume may be expanded into: the transport's default body limit (64 MiB).
MAX_EXPANDED_BYTES = 64 * 1024 * 1024


@dataclass
class ImageContent:
    """Voxels and their placement.

    Attributes
    ----------
    voxels : (K, J, I) or (K, J, I, C) ndarray
        Voxel values, native byte order; a 2D image has ``K == 1``. Any of int8, uint8, int16, uint16,
        int32, uint32, float32, float64.
    ijk_to_world : (4, 4) float64 ndarray
        Maps voxel indices ``(i, j, k, 1)`` to world coordinates (mm). For a PLUS ``Image_Reference``
        message this is ``ImageToReference``.
    coordinate_system : str
        ``"RAS"`` or ``"LPS"`` (the header flag; values are not converted).
    """

    voxels: np.ndarray
    ijk_to_world: np.ndarray
    coordinate_system: str = "RAS"

    @classmethod
    def from_2d(cls, pixels: np.ndarray, ijk_to_world: np.ndarray | None = None, *,
                coordinate_system: str = "RAS") -> "ImageContent":
        """Wrap a ``(H, W)`` (or ``(H, W, C)``) image as a single-slice volume."""
        pixels = np.asarray(pixels)
        if pixels.ndim not in (2, 3):
            raise ValueError(f"pixels: expected (H, W) or (H, W, C), got shape {pixels.shape}")
        m = np.eye(4) if ijk_to_world is None else np.asarray(ijk_to_world, dtype=np.float64)
        return cls(pixels[np.newaxis], m, coordinate_system)

    @property
    def pixels(self) -> np.ndarray:
        """``(J, I)`` (or ``(J, I, C)``) view of slice 0."""
        return self.voxels[0]

    @property
    def spacing(self) -> np.ndarray:
        """``(3,)`` voxel size along i, j, k (column norms of ``ijk_to_world``), mm."""
        return np.linalg.norm(np.asarray(self.ijk_to_world)[:3, :3], axis=0)


def _size_ijk(voxels: np.ndarray) -> tuple[int, int, int, int]:
    if voxels.ndim == 3:
        k, j, i = voxels.shape
        c = 1
    elif voxels.ndim == 4:
        k, j, i, c = voxels.shape
    else:
        raise ValueError(f"ImageContent.voxels: expected (K, J, I) or (K, J, I, C), got shape {voxels.shape}")
    if max(i, j, k) > 0xFFFF or c > 0xFF:
        raise ValueError(f"ImageContent.voxels: size {voxels.shape} exceeds the u16/u8 header fields")
    return i, j, k, c


def encode_image(content: ImageContent) -> list:
    # Scalar Python arithmetic below, not numpy: for a 3-vector a numpy call costs more than the maths, and
    # this runs once per frame on the latency path.
    voxels = np.asarray(content.voxels)
    native = voxels.dtype.newbyteorder("=")
    if native not in _TYPE_CODES:
        known = sorted(map(str, _TYPE_CODES))
        raise ValueError(f"ImageContent.voxels: unsupported dtype {voxels.dtype} (known: {known})")
    if content.coordinate_system not in _COORDS:
        raise ValueError(f"ImageContent.coordinate_system: expected RAS or LPS, got {content.coordinate_system!r}")
    i, j, k, c = _size_ijk(voxels)
    voxels = np.ascontiguousarray(voxels, dtype=native)
    m = np.asarray(content.ijk_to_world, dtype=np.float64)
    rows = m.tolist()
    if m.shape != (4, 4) or not all(math.isfinite(x) for row in rows for x in row):
        raise ValueError(f"ImageContent.ijk_to_world: expected a finite 4x4 matrix, got {m!r}")
    half = ((i - 1) / 2.0, (j - 1) / 2.0, (k - 1) / 2.0)
    centre = [r[0] * half[0] + r[1] * half[1] + r[2] * half[2] + r[3] for r in rows[:3]]
    matrix = [rows[r][col] for col in range(3) for r in range(3)] + centre
    endian = 2 if np.little_endian else 1
    head = IMAGE_HEADER.pack(1, c, _TYPE_CODES[native], endian, _COORDS[content.coordinate_system],
                             i, j, k, *matrix, 0, 0, 0, i, j, k)
    return [head, memoryview(voxels).cast("B")]


def decode_image(view: memoryview) -> ImageContent:
    """Decode IMAGE content; the voxels are a zero-copy view of ``view`` unless a byte swap or subvolume
    needs a new array."""
    if len(view) < IMAGE_HEADER.size:
        raise codec.DecodeError("bad_content", f"IMAGE content of {len(view)} bytes < {IMAGE_HEADER.size}")
    v = IMAGE_HEADER.unpack_from(view)
    c, stype, endian, coord = v[1], v[2], v[3], v[4]
    size, matrix, offset, sub = v[5:8], v[8:20], v[20:23], v[23:26]
    if stype not in SCALAR_TYPES or endian not in (1, 2) or coord not in (1, 2) or c < 1:
        raise codec.DecodeError("bad_content",
                                f"IMAGE scalar_type={stype} endian={endian} coord={coord} components={c}")
    if min(size) == 0:
        raise codec.DecodeError("bad_content", f"IMAGE size {list(size)} has a zero dimension")
    if any(o + n > s for o, n, s in zip(offset, sub, size)):
        raise codec.DecodeError("bad_content", f"IMAGE subvolume {list(offset)}+{list(sub)} > size {list(size)}")
    dtype = _WIRE_DTYPES[stype, endian]
    n_bytes = sub[0] * sub[1] * sub[2] * c * dtype.itemsize
    got = len(view) - IMAGE_HEADER.size
    if got != n_bytes:
        raise codec.DecodeError("bad_content", f"IMAGE {list(sub)}x{c} {dtype} needs {n_bytes} voxel bytes, got {got}")
    data = np.frombuffer(view, dtype=dtype, offset=IMAGE_HEADER.size)
    if not dtype.isnative:
        data = data.astype(dtype.newbyteorder("="))
    comps = (c,) if c > 1 else ()
    data = data.reshape((sub[2], sub[1], sub[0]) + comps)
    if sub != size:  # subvolume: place it into a zero-filled full image
        full_bytes = size[0] * size[1] * size[2] * c * dtype.itemsize
        if full_bytes > MAX_EXPANDED_BYTES:  # a few bytes on the wire must not allocate gigabytes
            raise codec.DecodeError("bad_content", f"IMAGE subvolume {list(sub)} of a {list(size)} image would "
                                                   f"expand to {full_bytes} bytes > {MAX_EXPANDED_BYTES}")
        full = np.zeros((size[2], size[1], size[0]) + comps, dtype=data.dtype)
        full[offset[2]:offset[2] + sub[2], offset[1]:offset[1] + sub[1], offset[0]:offset[0] + sub[0]] = data
        data = full
    t, s, n, p = matrix[0:3], matrix[3:6], matrix[6:9], matrix[9:12]
    half = ((size[0] - 1) / 2.0, (size[1] - 1) / 2.0, (size[2] - 1) / 2.0)
    origin = [p[r] - (t[r] * half[0] + s[r] * half[1] + n[r] * half[2]) for r in range(3)]
    m = np.array([[t[0], s[0], n[0], origin[0]], [t[1], s[1], n[1], origin[1]], [t[2], s[2], n[2], origin[2]],
                  [0.0, 0.0, 0.0, 1.0]])
    return ImageContent(data, m, "RAS" if coord == 1 else "LPS")


codec.register("IMAGE", encode_image, decode_image)
