"""Core value types that travel along the data path.

Conventions (DESIGN §3): millimetres and seconds; timestamps are float seconds (UTC epoch when they
come from OpenIGTLink, tracker time when they come from a sequence file). Images are indexed
``pixels[row, col]`` = ``pixels[j, i]``; pixel ``(i, j)`` sits at ``(i, j, 0)`` in the ``Image`` frame,
and ``ImageToProbe`` (spatial calibration) carries the pixel size. Every array's frame is in its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .transforms import TransformRepository, as_matrix

LEVELS = ("L1", "L2", "L3", "L4", "L5")


@dataclass
class TrackedFrame:
    """One tracked 2D ultrasound frame.

    Attributes
    ----------
    pixels : (H, W) ndarray
        B-mode image in PLUS MF orientation (row 0 = marked side / near field at the top as PLUS
        stores it after applying ``UltrasoundImageOrientation``), any scalar type (usually uint8).
    timestamp : float
        Acquisition time in seconds.
    transforms : dict[str, (4, 4) ndarray]
        Tracking and calibration transforms carried by this frame, PLUS-named (``"ProbeToTracker"``).
    transform_status : dict[str, bool]
        Validity per transform name (PLUS ``TransformStatus == "OK"``); missing means valid.
    image_status : bool
        PLUS ``ImageStatus == "OK"``.
    fields : dict[str, str]
        Any other per-frame fields, verbatim (kept so that write -> read is lossless).
    index : int
        Frame number in its source (sequence index or arrival order).
    """

    pixels: np.ndarray
    timestamp: float
    transforms: dict[str, np.ndarray] = field(default_factory=dict)
    transform_status: dict[str, bool] = field(default_factory=dict)
    image_status: bool = True
    fields: dict[str, str] = field(default_factory=dict)
    index: int = 0

    def repository(self, calibration: TransformRepository | Mapping[str, np.ndarray] | None = None) -> TransformRepository:
        """A transform repository holding ``calibration`` (e.g. ImageToProbe) and this frame's transforms."""
        if isinstance(calibration, TransformRepository):
            repo = calibration.copy()
        else:
            repo = TransformRepository(calibration or {})
        for name, m in self.transforms.items():
            repo.set(name, m, valid=self.transform_status.get(name, True))
        return repo

    def transform(self, name: str, calibration=None) -> np.ndarray:
        """``(4, 4)`` matrix ``name`` (e.g. ``"ImageToReference"``), chained through ``calibration``."""
        return self.repository(calibration).get(name)

    def is_valid(self, name: str, calibration=None) -> bool:
        """True when the image and every transform on the chain for ``name`` are valid."""
        return self.image_status and self.repository(calibration).is_valid(name)


@dataclass
class Volume:
    """A compounded voxel volume on a regular grid, axis-aligned in its ``frame`` (usually Reference).

    Attributes
    ----------
    data : (Z, Y, X) ndarray
        Voxel values (intensity channel). Index ``[k, j, i]`` is voxel ``(i, j, k)``.
    origin_mm : (3,) float ndarray
        Position of voxel (0, 0, 0) in ``frame``, mm (MetaImage ``Offset``).
    spacing_mm : (3,) float ndarray
        Voxel size along x, y, z, mm.
    weights : (Z, Y, X) ndarray or None
        Accumulation weight per voxel (0 = never hit); None when unknown.
    channels : dict[str, (Z, Y, X) ndarray]
        Extra channels compounded beside the intensity (e.g. ``"bone"``).
    frame : str
        Coordinate frame the grid is axis-aligned in.

    A channel compounded with the torch backend may be read without a copy to the host
    (:meth:`~usx_stream.compound.reconstructor.Reconstructor.device_channel_volume`): ``data`` and that
    channel are then the torch tensor on the compounding device (the same grid, the same values). Its
    consumer, :func:`~usx_stream.bone.points.extract_bone_points`, runs on that device; code that needs
    numpy arrays takes the volume from :meth:`~usx_stream.compound.reconstructor.Reconstructor.snapshot`.
    """

    data: np.ndarray
    origin_mm: np.ndarray
    spacing_mm: np.ndarray
    weights: np.ndarray | None = None
    channels: dict[str, np.ndarray] = field(default_factory=dict)
    frame: str = "Reference"

    def __post_init__(self) -> None:
        self.origin_mm = np.asarray(self.origin_mm, dtype=np.float64).reshape(3)
        self.spacing_mm = np.asarray(self.spacing_mm, dtype=np.float64).reshape(3)
        if self.data.ndim != 3:
            raise ValueError(f"Volume.data: expected 3 dimensions (Z, Y, X), got shape {self.data.shape}")
        if np.any(self.spacing_mm <= 0):
            raise ValueError(f"Volume.spacing_mm: must be positive, got {self.spacing_mm.tolist()}")

    @property
    def dims_xyz(self) -> tuple[int, int, int]:
        z, y, x = self.data.shape
        return (x, y, z)

    def ijk_to_frame(self) -> np.ndarray:
        """``(4, 4)`` matrix mapping voxel indices (i, j, k) to ``frame`` coordinates in mm."""
        m = np.diag([*self.spacing_mm, 1.0])
        m[:3, 3] = self.origin_mm
        return m

    def voxel_centers_mm(self, ijk: np.ndarray) -> np.ndarray:
        """``(N, 3)`` voxel indices (i, j, k) -> ``(N, 3)`` positions in ``frame``, mm."""
        return np.asarray(ijk, dtype=np.float64) * self.spacing_mm + self.origin_mm


@dataclass
class XrayImage:
    """An intraoperative X-ray and/or its vertebral-body labelmap.

    Over OpenIGTLink the two arrive as separate messages, so an item may hold either part alone;
    :class:`~usx_stream.xray.cache.XrayCache` merges them.

    Attributes
    ----------
    pixels : (H, W) ndarray or None
        Projection image (attenuation line integrals or display intensities); None when the item
        carries only a labelmap.
    labelmap : (H, W) integer ndarray or None
        Vertebral-body labels, 0 = background, 1..5 = L1..L5 (as received; the cache checks the values
        and stores them as uint8).
    pixel_spacing_mm : (2,) float ndarray
        Detector pixel size (column, row), mm.
    timestamp : float
    geometry : object or None
        C-arm geometry (intrinsics and XrayToReference) from ``usx_stream.xray``.
    """

    pixels: np.ndarray | None
    labelmap: np.ndarray | None
    pixel_spacing_mm: np.ndarray
    timestamp: float = 0.0
    geometry: object | None = None


@dataclass
class VertebraCloud:
    """Input to completion for one vertebra, in its canonical model frame (DESIGN §3).

    Attributes
    ----------
    level : str
        ``"L1"`` .. ``"L5"``.
    partial : (N, 3) float32 ndarray
        Partial ultrasound bone points, model frame (unit scale).
    labelmap_points : (M, 3) float32 ndarray or None
        X-ray vertebral-body labelmap back-projected onto the mid-sagittal plane, model frame.
    model_to_reference : (4, 4) ndarray
        Maps model-frame coordinates back to Reference (mm).
    """

    level: str
    partial: np.ndarray
    labelmap_points: np.ndarray | None
    model_to_reference: np.ndarray

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"VertebraCloud.level: expected one of {LEVELS}, got {self.level!r}")
        self.model_to_reference = as_matrix(self.model_to_reference, name="VertebraCloud.model_to_reference")


@dataclass
class Surface:
    """A triangle mesh.

    Attributes
    ----------
    vertices_mm : (V, 3) float ndarray
        Vertex positions in ``frame``, mm.
    triangles : (T, 3) int ndarray
        Vertex indices per triangle, counter-clockwise seen from outside.
    normals : (V, 3) float ndarray or None
    frame : str
    name : str
        Device / node name (e.g. ``"L3_Completed"``).
    metadata : dict[str, str]
        Travels with the surface (e.g. ``{"fusion": "us_only"}``).
    timestamp : float
        Timestamp of the newest frame that went into it.
    point_data : dict[str, (V,) float32 ndarray]
        Per-vertex scalars by name (e.g. ``"uncertainty_mm"``, the completion uncertainty in mm); published
        as POLYDATA point scalar attributes and ZeroMQ arrays of the same name. Empty: none.
    """

    vertices_mm: np.ndarray
    triangles: np.ndarray
    normals: np.ndarray | None = None
    frame: str = "Reference"
    name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    timestamp: float = 0.0
    point_data: dict[str, np.ndarray] = field(default_factory=dict)
