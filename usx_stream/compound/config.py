"""Volume-reconstruction settings, mirroring PLUS's ``VolumeReconstruction`` element: the one config type.

:class:`ReconstructionConfig` holds every PLUS attribute the reconstructor uses, validated once. It is
built three ways, all giving the same type:

- from a PlusDeviceSet XML: :func:`load_device_set` (the element is parsed straight into it by
  :func:`usx_stream.io.plus_recon.parse_volume_reconstruction`, whose errors name file, attribute and value);
- from the launch file's ``[compound]`` table: :meth:`ReconstructionConfig.from_launch` (the table's
  allowed values are this module's constants, so a launch value that loads is one that runs);
- directly, ``ReconstructionConfig(output_spacing=(0.5, 0.5, 0.5), ...)``.

:data:`DEFAULT_HOLE_FILLING` is the element PLUS's spine-phantom device sets use (one STICK element,
StickLengthLimit 9, NumberOfSticksToUse 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

INTERPOLATIONS = ("NEAREST_NEIGHBOR", "LINEAR")
COMPOUNDING_MODES = ("MEAN", "MAXIMUM", "LATEST")
# PLUS: FULL = 14-bit fixed-point coordinates, PARTIAL = doubles, NONE (NO_OPTIMIZATION) = doubles
# through the unoptimised helper, GPU = OpenCL. We reproduce FULL exactly and run the others with
# double coordinates (PARTIAL's arithmetic).
OPTIMIZATIONS = ("FULL", "PARTIAL", "NONE")
_OPTIMIZATION_ALIASES = {"NO_OPTIMIZATION": "NONE", "GPU": "PARTIAL", "GPU_ACCELERATION_OPENCL": "PARTIAL",
                         "FULL_OPTIMIZATION": "FULL", "PARTIAL_OPTIMIZATION": "PARTIAL"}
HOLE_FILLING_TYPES = ("STICK", "GAUSSIAN", "GAUSSIAN_ACCUMULATION", "NEAREST_NEIGHBOR", "DISTANCE_WEIGHT_INVERSE")
EXTENT_ROUNDINGS = ("round", "truncate", "lattice")


@dataclass(frozen=True)
class HoleFillingElement:
    """One PLUS ``HoleFillingElement``, tried in order until one fills the voxel.

    Attributes
    ----------
    type : str
        One of :data:`HOLE_FILLING_TYPES`.
    size : int
        Kernel edge length in voxels (odd) for the kernel types.
    stdev : float
        Gaussian standard deviation, voxels.
    min_ratio : float
        ``MinimumKnownVoxelsRatio``: the fraction of known voxels in the kernel that must be exceeded.
    stick_length_limit : int
        STICK: longest stick, voxels.
    number_of_sticks_to_use : int
        STICK: how many of the best sticks are averaged.
    """

    type: str
    size: int = 3
    stdev: float = 1.0
    min_ratio: float = 0.0
    stick_length_limit: int = 9
    number_of_sticks_to_use: int = 1

    def __post_init__(self) -> None:
        kind = str(self.type).upper()
        if kind not in HOLE_FILLING_TYPES:
            raise ValueError(f"HoleFillingElement.type: expected one of {HOLE_FILLING_TYPES}, got {self.type!r}")
        object.__setattr__(self, "type", kind)
        if kind == "STICK":
            if int(self.stick_length_limit) < 1:
                raise ValueError(f"HoleFillingElement.stick_length_limit: must be >= 1, got {self.stick_length_limit}")
            if int(self.number_of_sticks_to_use) < 1:
                raise ValueError("HoleFillingElement.number_of_sticks_to_use: must be >= 1, "
                                 f"got {self.number_of_sticks_to_use}")
        elif int(self.size) < 1:
            raise ValueError(f"HoleFillingElement.size: must be >= 1, got {self.size}")
        if kind.startswith("GAUSSIAN") and not float(self.stdev) > 0:
            raise ValueError(f"HoleFillingElement.stdev: must be > 0, got {self.stdev}")

    @classmethod
    def from_mapping(cls, obj: Mapping[str, Any]) -> "HoleFillingElement":
        """Build from a mapping of the same (snake_case) names; ``minimum_known_voxels_ratio`` is
        accepted for ``min_ratio``; None values keep the defaults."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            value = obj.get(f.name, None)
            if f.name == "min_ratio" and value is None:
                value = obj.get("minimum_known_voxels_ratio", None)
            if value is not None:
                kwargs[f.name] = value
        return cls(**kwargs)


# PLUS's spine-phantom device sets (PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml and the NN/LN
# MEAN test sets) fill holes with one STICK element: StickLengthLimit 9, NumberOfSticksToUse 1.
DEFAULT_HOLE_FILLING = (HoleFillingElement("STICK", stick_length_limit=9, number_of_sticks_to_use=1),)


def _vector(value, n: int, name: str, dtype=float) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise ValueError(f"ReconstructionConfig.{name}: expected {n} finite numbers, got {value!r}")
    if dtype is int:
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"ReconstructionConfig.{name}: expected integers, got {value!r}")
        return arr.astype(np.int64)
    return arr


@dataclass(frozen=True)
class ReconstructionConfig:
    """Settings of one volume reconstruction (PLUS ``VolumeReconstruction`` attributes).

    Attributes
    ----------
    output_spacing : (3,) float ndarray
        Voxel size along x, y, z of the Reference frame, mm.
    output_origin : (3,) float ndarray or None
        Position of voxel (0, 0, 0) in Reference, mm; None = derived from the frames.
    output_extent : (6,) int ndarray or None
        PLUS extent ``x0 x1 y0 y1 z0 z1`` (inclusive voxel indices); None = derived from the frames.
    clip_rectangle_origin, clip_rectangle_size : (2,) int ndarray or None
        Clip rectangle in pixels (column, row). PLUS keeps ``origin + size`` inclusive.
    fan_angles_deg : (2,) float ndarray
        Fan half-angles left/right of the image's vertical axis, degrees; ``0 0`` disables fan clipping.
    fan_origin_pixel : (2,) float ndarray
        Fan apex (column, row), pixels.
    fan_radius_start_pixel, fan_radius_stop_pixel : float
        Fan radii, pixels.
    interpolation : str
        ``NEAREST_NEIGHBOR`` or ``LINEAR``.
    compounding_mode : str
        ``MEAN``, ``MAXIMUM`` or ``LATEST``.
    optimization : str
        PLUS ``Optimization``: ``FULL`` (fixed-point coordinates), ``PARTIAL`` or ``NONE``.
    pixel_rejection_threshold : float or None
        Pixels darker than this are not pasted; None disables rejection.
    skip_interval : int
        Paste every n-th frame.
    reference_coordinate_frame, image_coordinate_frame : str
        The volume is axis-aligned in the reference frame; frames are pasted with ImageToReference.
    fill_holes : bool
        Apply :attr:`hole_filling` when a snapshot is taken.
    hole_filling : tuple of HoleFillingElement
        Tried in order for each empty voxel (PLUS ``HoleFilling``); a sequence of mappings is accepted.
    attributes : dict[str, str]
        The raw attributes of the PLUS ``VolumeReconstruction`` element this was read from (empty
        otherwise); kept for reports, not used by the reconstructor and not compared.
    """

    output_spacing: np.ndarray
    output_origin: np.ndarray | None = None
    output_extent: np.ndarray | None = None
    clip_rectangle_origin: np.ndarray | None = None
    clip_rectangle_size: np.ndarray | None = None
    fan_angles_deg: np.ndarray = field(default_factory=lambda: np.zeros(2))
    fan_origin_pixel: np.ndarray = field(default_factory=lambda: np.zeros(2))
    fan_radius_start_pixel: float = 0.0
    fan_radius_stop_pixel: float = 500.0
    interpolation: str = "NEAREST_NEIGHBOR"
    compounding_mode: str = "MEAN"
    optimization: str = "FULL"
    pixel_rejection_threshold: float | None = None
    skip_interval: int = 1
    reference_coordinate_frame: str = "Reference"
    image_coordinate_frame: str = "Image"
    fill_holes: bool = False
    hole_filling: tuple[HoleFillingElement, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        spacing = _vector(self.output_spacing, 3, "output_spacing")
        if spacing is None or np.any(spacing <= 0):
            raise ValueError("ReconstructionConfig.output_spacing: must be 3 positive numbers, "
                             f"got {self.output_spacing!r}")
        put("output_spacing", spacing)
        put("output_origin", _vector(self.output_origin, 3, "output_origin"))
        extent = _vector(self.output_extent, 6, "output_extent", int)
        if extent is not None and np.any(extent[1::2] < extent[0::2]):
            raise ValueError(f"ReconstructionConfig.output_extent: max < min in {extent.tolist()}")
        put("output_extent", extent)
        put("clip_rectangle_origin", _vector(self.clip_rectangle_origin, 2, "clip_rectangle_origin", int))
        put("clip_rectangle_size", _vector(self.clip_rectangle_size, 2, "clip_rectangle_size", int))
        put("fan_angles_deg", _vector(self.fan_angles_deg, 2, "fan_angles_deg"))
        put("fan_origin_pixel", _vector(self.fan_origin_pixel, 2, "fan_origin_pixel"))
        for name in ("fan_radius_start_pixel", "fan_radius_stop_pixel"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"ReconstructionConfig.{name}: must be a finite number >= 0, got {value}")
            put(name, value)
        self._put_enums(put)
        if self.pixel_rejection_threshold is not None:
            put("pixel_rejection_threshold", float(self.pixel_rejection_threshold))
        if int(self.skip_interval) < 1:
            raise ValueError(f"ReconstructionConfig.skip_interval: must be >= 1, got {self.skip_interval}")
        put("skip_interval", int(self.skip_interval))
        put("fill_holes", bool(self.fill_holes))
        put("attributes", dict(self.attributes or {}))
        put("hole_filling", tuple(e if isinstance(e, HoleFillingElement) else HoleFillingElement.from_mapping(e)
                                  for e in (self.hole_filling or ())))

    def _put_enums(self, put) -> None:
        interpolation = str(self.interpolation).upper()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"ReconstructionConfig.interpolation: expected one of {INTERPOLATIONS}, "
                             f"got {self.interpolation!r}")
        put("interpolation", interpolation)
        mode = str(self.compounding_mode).upper()
        if mode not in COMPOUNDING_MODES:
            raise ValueError(f"ReconstructionConfig.compounding_mode: expected one of {COMPOUNDING_MODES}, "
                             f"got {self.compounding_mode!r}")
        put("compounding_mode", mode)
        optimization = str(self.optimization).upper()
        optimization = _OPTIMIZATION_ALIASES.get(optimization, optimization)
        if optimization not in OPTIMIZATIONS:
            raise ValueError(f"ReconstructionConfig.optimization: expected one of {OPTIMIZATIONS}, "
                             f"got {self.optimization!r}")
        put("optimization", optimization)

    @property
    def image_to_reference_name(self) -> str:
        return f"{self.image_coordinate_frame}To{self.reference_coordinate_frame}"

    @property
    def fan_clipping(self) -> bool:
        """True when PLUS would clip to the fan (either fan angle non-zero)."""
        return bool(np.any(self.fan_angles_deg != 0))

    def replace(self, **changes) -> "ReconstructionConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_launch(cls, section: Any) -> "ReconstructionConfig":
        """The launch file's ``[compound]`` table (validated by ``usx_stream.node.launch.parse_launch``) as a config.

        Parameters
        ----------
        section : launch section or mapping
            Keys of ``SCHEMA["compound"]``: ``spacing_mm`` (isotropic voxel size, mm), ``interpolation``,
            ``compounding_mode``, ``clip_rectangle_origin`` / ``clip_rectangle_size`` (pixels; empty = none),
            ``pixel_rejection_threshold`` (0 = off), ``fill_holes`` and the hole-filling element
            ``hole_filling`` (type), ``stick_length_limit``, ``number_of_sticks_to_use`` (STICK, voxels),
            ``hole_filling_size`` (kernel edge, voxels), ``hole_filling_stdev`` (voxels) and
            ``hole_filling_min_ratio`` (kernel types). Missing keys take this class's defaults.

        Raises
        ------
        ValueError
            Naming the launch key (``compound.<key>``) and the value.
        """
        if isinstance(section, dict):
            get = section.get
        else:  # a launch section: read key by key (what reads each key is checked by a test)
            def get(key, default=None):
                return getattr(section, key, default)
        try:
            element = HoleFillingElement(
                get("hole_filling", DEFAULT_HOLE_FILLING[0].type),
                size=get("hole_filling_size", 3), stdev=get("hole_filling_stdev", 1.0),
                min_ratio=get("hole_filling_min_ratio", 0.0),
                stick_length_limit=get("stick_length_limit", DEFAULT_HOLE_FILLING[0].stick_length_limit),
                number_of_sticks_to_use=get("number_of_sticks_to_use", DEFAULT_HOLE_FILLING[0].number_of_sticks_to_use))
        except ValueError as e:
            raise ValueError(f"compound.hole_filling: {e}") from e
        kwargs = dict(output_spacing=np.full(3, float(get("spacing_mm", 0.5))), hole_filling=(element,),
                      fill_holes=bool(get("fill_holes", False)),
                      pixel_rejection_threshold=get("pixel_rejection_threshold") or None)
        for key in ("interpolation", "compounding_mode"):
            if get(key) is not None:
                kwargs[key] = get(key)
        for key in ("clip_rectangle_origin", "clip_rectangle_size"):
            kwargs[key] = get(key) or None
        try:
            return cls(**kwargs)
        except ValueError as e:  # "ReconstructionConfig.<field>: ..." -> the launch key
            raise ValueError(f"compound.{str(e).removeprefix('ReconstructionConfig.')}") from e


def load_device_set(path: str | Path):
    """Read a PlusDeviceSet XML: ``(ReconstructionConfig, TransformRepository)`` of its calibrations.

    Raises
    ------
    InputError
        (a ValueError) The file is malformed, an attribute is missing or invalid (the message names the
        file, the attribute and the value), or there is no ``VolumeReconstruction`` element.
    """
    from ..errors import InputError
    from ..io.plus_config import read_device_set

    device_set = read_device_set(path)
    if device_set.volume_reconstruction is None:
        raise InputError(f"{path}: no VolumeReconstruction element in the device set")
    return device_set.volume_reconstruction, device_set.transform_repository()
