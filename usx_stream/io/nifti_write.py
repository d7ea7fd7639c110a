"""Write an integer label volume as NIfTI-1 (``.nii`` or ``.nii.gz``), the format segmentation tools exchange.

The voxel-to-world affine is stored as the sform (any affine; the qform is left unset), in NIfTI's RAS
world frame; callers hand LPS, the frame the rest of the project speaks. :func:`usx_stream.sim.ct_labelmaps.read_nifti_labels` reads it back.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_INT16 = 4
_NIFTI_UNITS_MM = 2


def nifti_label_bytes(labels: np.ndarray, ijk_to_lps: np.ndarray) -> bytes:
    """The bytes of a single-file NIfTI-1 (``n+1``) holding ``labels`` as int16.

    Parameters
    ----------
    labels : (I, J, K) integer ndarray
        Indexed by voxel (i, j, k); values must fit int16.
    ijk_to_lps : (4, 4) ndarray
        Voxel indices to LPS patient coordinates, mm.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels: expected a 3D volume, got shape {labels.shape}")
    if labels.size and (labels.min() < -32768 or labels.max() > 32767):
        raise ValueError(f"labels: values {labels.min()}..{labels.max()} do not fit int16")
    ras = _RAS_TO_LPS @ np.asarray(ijk_to_lps, dtype=np.float64)
    spacing = np.linalg.norm(ras[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"ijk_to_lps: a voxel axis has zero length (spacings {spacing.tolist()})")
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, *labels.shape, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, _INT16, 16)
    struct.pack_into("<8f", h, 76, 1.0, *spacing, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", h, 108, 352.0)
    struct.pack_into("<ff", h, 112, 1.0, 0.0)
    h[123] = _NIFTI_UNITS_MM
    struct.pack_into("<hh", h, 252, 0, 2)  # qform unknown, sform "aligned"
    struct.pack_into("<12f", h, 280, *ras[:3, :4].ravel())
    h[344:348] = b"n+1\0"
    data = np.ascontiguousarray(labels.astype("<i2").ravel(order="F")).tobytes()
    return bytes(h) + b"\0\0\0\0" + data


def write_nifti_labels(path: str | Path, labels: np.ndarray, ijk_to_lps: np.ndarray) -> Path:
    """Write ``labels`` to ``path`` (gzip-compressed when it ends in ``.gz``); returns the path."""
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path.name}: a NIfTI file name ends in .nii or .nii.gz")
    raw = nifti_label_bytes(labels, ijk_to_lps)
    path.write_bytes(gzip.compress(raw, compresslevel=6, mtime=0) if path.name.endswith(".gz") else raw)
    return path
