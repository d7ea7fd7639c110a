"""Multi-label CT segmentations (NIfTI / NRRD / MetaImage) to per-vertebra meshes.

A segmentation holds one integer label per vertebra. Two label sets are known (:data:`LABEL_SETS`):

``verse``             20..24 = L1..L5 (VerSe; its highest label is 28 = T13);
``totalsegmentator``  31 = L1, 30 = L2, 29 = L3, 28 = L4, 27 = L5 (TotalSegmentator v2; its maps also
                      hold organs on 1..26, some on VerSe's 20..24, and labels up to 117).

:func:`choose_label_set` with ``auto`` picks ``totalsegmentator`` when any label above 28 is present (VerSe
never uses one), else ``verse`` when any of 20..24 is present, else refuses. Each
label becomes a closed mesh (light Gaussian smoothing of its mask, then marching tetrahedra in voxel space,
then the voxel-to-patient affine), all in the scan's LPS patient frame, so the vertebrae keep their
anatomical positions and occlude each other in the simulated ultrasound sweep. Turning those meshes into
paired samples is :func:`usx_stream.datasets.pairs.labelmap_pairs` (this module knows no dataset).

Frames: NIfTI's world frame is RAS (converted to LPS here); NRRD and MetaImage coordinates are LPS, as ITK
writes them (only axis-aligned grids, see :func:`usx_stream.io.volumes.read_volume`).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..frames import Surface
from ..transforms import apply

log = logging.getLogger(__name__)

VERSE_LEVELS = {20: "L1", 21: "L2", 22: "L3", 23: "L4", 24: "L5"}
TOTALSEGMENTATOR_LEVELS = {31: "L1", 30: "L2", 29: "L3", 28: "L4", 27: "L5"}
LABEL_SETS = {"verse": VERSE_LEVELS, "totalsegmentator": TOTALSEGMENTATOR_LEVELS}
VERSE_MAX_LABEL = 28
"""VerSe's highest label (T13); a label map holding a higher one is TotalSegmentator's."""
LABELMAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8"}


def choose_label_set(present, requested: str = "auto") -> tuple[str, str]:
    """``(label_set, chosen_by)`` for the label values ``present`` in a volume.

    Parameters
    ----------
    present : set of int or int ndarray
        Label values found in the volume.
    requested : {"auto", "verse", "totalsegmentator"}
        A named set is taken as given (``chosen_by = "option"``); ``auto`` detects it (see the module
        docstring; ``chosen_by = "auto"``).

    Raises
    ------
    InputError
        ``requested`` is unknown, or ``auto`` finds neither label set.
    """
    present = {int(v) for v in np.asarray(list(present)).ravel()}
    if requested in LABEL_SETS:
        return requested, "option"
    if requested != "auto":
        raise InputError(f"--labels: expected verse, totalsegmentator or auto, got {requested!r}")
    if any(v > VERSE_MAX_LABEL for v in present):
        return "totalsegmentator", "auto"
    if present & set(VERSE_LEVELS):
        return "verse", "auto"
    shown = sorted(v for v in present if v)[:20]
    raise InputError(f"label volume holds no lumbar label of VerSe (20..24) or TotalSegmentator (27..31): "
                     f"labels {shown}")


def lumbar_label_meshes(path: str | Path, *, labels: str = "auto", smooth_voxels: float = 0.7
                        ) -> tuple[dict[str, Surface], dict]:
    """Read a CT label volume and mesh its lumbar levels, LPS mm.

    Parameters
    ----------
    path : str or Path
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd``.
    labels : {"auto", "verse", "totalsegmentator"}, keyword-only
        Label set (see :func:`choose_label_set`).
    smooth_voxels : float, keyword-only
        Gaussian sigma of each mask before meshing, voxels.

    Returns
    -------
    meshes : dict[str, Surface]
        Per level found, in ``L1``..``L5`` order; frame ``"LPS"``.
    info : dict
        ``label_set``, ``chosen_by`` and ``label_values`` (level -> label value of the meshes), JSON-ready.

    Raises
    ------
    InputError
        Unreadable file, no lumbar label of the chosen set.
    """
    path = Path(path)
    try:
        volume, ijk_to_lps = read_labels(path)
    except InputError:
        raise   # names the file already
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: {e}") from e
    present = np.unique(volume)
    try:
        label_set, chosen_by = choose_label_set(present, labels)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    if label_set == "verse" and present.max() > VERSE_MAX_LABEL:
        log.warning("labels verse on %s, which holds labels up to %d (TotalSegmentator's organs sit on "
                    "20..24): is it a TotalSegmentator map?", path.name, int(present.max()))
    levels = LABEL_SETS[label_set]
    if not set(levels) & set(present.tolist()):
        raise InputError(f"{path}: none of the {label_set} lumbar labels {sorted(levels)} is present")
    meshes = label_meshes(volume, ijk_to_lps, levels=levels, smooth_voxels=smooth_voxels)
    order = [lv for lv in ("L1", "L2", "L3", "L4", "L5") if lv in meshes]
    meshes = {lv: meshes[lv] for lv in order}
    log.info("%s: %s labels (chosen by %s), levels %s", path.name, label_set, chosen_by, order)
    values = {lv: v for v, lv in levels.items() if lv in meshes}
    return meshes, {"label_set": label_set, "chosen_by": chosen_by, "label_values": values}


def _nifti_affine(h: bytes, end: str) -> np.ndarray:
    """Voxel (i, j, k) -> RAS mm from the sform (preferred) or the qform of a NIfTI-1 header."""
    qform_code, sform_code = np.frombuffer(h[252:256], dtype=end + "i2")
    if sform_code > 0:
        rows = np.frombuffer(h[280:328], dtype=end + "f4").reshape(3, 4).astype(np.float64)
        return np.vstack([rows, [0, 0, 0, 1]])
    pixdim = np.frombuffer(h[76:108], dtype=end + "f4").astype(np.float64)
    m = np.eye(4)
    if qform_code > 0:
        b, c, d, x, y, z = np.frombuffer(h[256:280], dtype=end + "f4").astype(np.float64)
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        r = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                      [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                      [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        m[:3, :3] = r @ np.diag([pixdim[1], pixdim[2], pixdim[3] * qfac])
        m[:3, 3] = [x, y, z]
    else:
        m[:3, :3] = np.diag(pixdim[1:4])
    return m


# a label map holds at most this many distinct values, each at most _MAX_LABEL_VALUE (TotalSegmentator v2: 118
# values up to 117; VerSe: up to 28); a CT holds thousands
_MAX_LABELS = 1000
_MAX_LABEL_VALUE = 65535


def read_nifti_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI-1 label volume (``.nii`` or ``.nii.gz``).

    Returns
    -------
    labels : (I, J, K) int64 ndarray
        Indexed by voxel (i, j, k).
    ijk_to_lps : (4, 4) ndarray
        Voxel indices to LPS patient coordinates, mm.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:   # not gzip, cut short, or damaged inside
        raise InputError(f"{path}: not a readable .nii.gz ({e})") from None
    if len(raw) < 352:
        raise InputError(f"{path}: too short for a NIfTI-1 file")
    end = "<" if np.frombuffer(raw[:4], "<i4")[0] == 348 else ">"
    if np.frombuffer(raw[:4], end + "i4")[0] != 348:
        raise InputError(f"{path}: not a NIfTI-1 file (sizeof_hdr != 348)")
    dim = np.frombuffer(raw[40:56], dtype=end + "i2")
    dtype_code = int(np.frombuffer(raw[70:72], dtype=end + "i2")[0])
    if dtype_code not in _NIFTI_DTYPES:
        raise InputError(f"{path}: NIfTI datatype {dtype_code} is not supported for labels")
    if dim[0] < 3 or any(d > 1 for d in dim[4:dim[0] + 1]):
        raise InputError(f"{path}: expected a 3D volume, got dim {dim[:dim[0] + 1].tolist()}")
    shape = tuple(int(d) for d in dim[1:4])
    offset = int(np.frombuffer(raw[108:112], dtype=end + "f4")[0])
    dtype = np.dtype(end + _NIFTI_DTYPES[dtype_code])
    if len(raw) < offset + dtype.itemsize * int(np.prod(shape)):
        raise InputError(f"{path}: the voxel data ends early ({len(raw) - offset} of "
                         f"{dtype.itemsize * int(np.prod(shape))} bytes; a cut-short copy?)")
    data = np.frombuffer(raw, dtype=end + _NIFTI_DTYPES[dtype_code], count=int(np.prod(shape)), offset=offset)
    labels = np.rint(data.reshape(shape, order="F")).astype(np.int64)
    return labels, _RAS_TO_LPS @ _nifti_affine(raw[:348], end)


def read_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (I, J, K), ijk_to_lps (4, 4))`` from NIfTI, NRRD or MetaImage (by suffix).

    NRRD and MetaImage go through SimpleITK where it is installed (the ``ct`` extra: oblique axes, NRRD's
    ``space`` honoured), else through :func:`usx_stream.io.volumes.read_volume` (axis-aligned grids only)."""
    path = Path(path)
    labels, ijk_to_lps = _read_any_labels(path)
    refuse_an_image(labels, str(path))
    return labels, ijk_to_lps


def _read_any_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.name.endswith((".nii", ".nii.gz")):
        return read_nifti_labels(path)
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        pass
    else:
        from ..io.ct_image import read_ct_image

        voxels, ijk_to_lps = read_ct_image(path, what="label map")
        return np.rint(voxels).astype(np.int64), ijk_to_lps
    from ..io.volumes import read_volume

    vol = read_volume(path)
    return np.rint(vol.data).astype(np.int64).transpose(2, 1, 0), vol.ijk_to_frame()


def refuse_an_image(labels: np.ndarray, what: str) -> None:
    """The CT itself given where its segmentation belongs holds the lumbar label values as Hounsfield units
    in scattered voxels: meshing them would make a spine of noise. A label map has no negative value and a
    few hundred values at most (TotalSegmentator: 118); a CT has air at -1000 HU and thousands of values.
    ``what`` names the input in the :class:`InputError`."""
    if labels.size == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    distinct = None if lo < 0 or hi > _MAX_LABEL_VALUE else int(np.count_nonzero(np.bincount(labels.ravel())))
    if distinct is not None and distinct <= _MAX_LABELS:
        return
    held = f"{distinct} distinct values" if distinct is not None else "values"
    raise InputError(f"{what}: not a label map: {held} from {lo} to {hi} (an image, e.g. the CT itself?); "
                     f"give its vertebra segmentation (VerSe or TotalSegmentator labels, or "
                     f"`usx-stream shape-model segment-ct`)")


def label_meshes(labels: np.ndarray, ijk_to_lps: np.ndarray, *, levels: dict[int, str] | None = None,
                 smooth_voxels: float = 0.7) -> dict[str, Surface]:
    """One closed mesh per vertebra label, LPS mm.

    Parameters
    ----------
    labels : (I, J, K) int ndarray
    ijk_to_lps : (4, 4) ndarray
    levels : dict int -> level, keyword-only
        Label value of each level (default VerSe: 20..24 = L1..L5). Absent labels are skipped.
    smooth_voxels : float, keyword-only
        Gaussian sigma (voxels) applied to each mask before meshing (removes the staircase).
    """
    from scipy import ndimage

    from .isosurface import mesh_implicit

    out = {}
    for value, level in (levels or VERSE_LEVELS).items():
        idx = np.argwhere(labels == value)
        if len(idx) == 0:
            continue
        lo = idx.min(0) - 3
        hi = idx.max(0) + 4
        pad_lo = np.maximum(-lo, 0)
        mask = np.zeros(tuple(hi - lo), dtype=np.float32)
        sub = labels[max(lo[0], 0):hi[0], max(lo[1], 0):hi[1], max(lo[2], 0):hi[2]] == value
        mask[pad_lo[0]:pad_lo[0] + sub.shape[0], pad_lo[1]:pad_lo[1] + sub.shape[1],
             pad_lo[2]:pad_lo[2] + sub.shape[2]] = sub
        field = 0.5 - ndimage.gaussian_filter(mask, smooth_voxels)
        verts, tris = mesh_implicit(field, origin_mm=lo.astype(np.float64), spacing_mm=1.0)
        if len(tris) == 0:
            continue
        if np.linalg.det(ijk_to_lps[:3, :3]) < 0:
            tris = tris[:, ::-1].copy()  # a mirroring affine flips the winding
        out[level] = Surface(apply(ijk_to_lps, verts), tris, frame="LPS", name=level)
    return out
