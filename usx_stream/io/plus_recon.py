"""The ``VolumeReconstruction`` element of a PLUS device set, attribute by attribute.

Names, types, defaults and deprecations follow vtkIGSIOVolumeReconstructor::ReadConfiguration and
vtkIGSIOFillHolesInVolume::ReadConfiguration (PLUS/IGSIO) and the PLUS user manual:
``FanAngles`` -> ``FanAnglesDeg``, ``FanOrigin`` -> ``FanOriginPixel``, ``FanDepth`` ->
``FanRadiusStopPixel``, and ``Compounding`` (ON/OFF) / ``Calculation`` (WEIGHTED_AVERAGE/MAXIMUM) ->
``CompoundingMode`` when ``CompoundingMode`` is absent. Pixel quantities (clip rectangle, fan origin and
radii) are in MF-oriented image pixels.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ..errors import InputError

log = logging.getLogger(__name__)

INTERPOLATIONS = ("NEAREST_NEIGHBOR", "LINEAR")
OPTIMIZATIONS = ("NONE", "PARTIAL", "FULL", "GPU")
COMPOUNDING_MODES = ("MEAN", "LATEST", "MAXIMUM", "IMPORTANCE_MASK")
CALCULATIONS = ("WEIGHTED_AVERAGE", "MAXIMUM")
HOLE_FILLING_TYPES = ("GAUSSIAN", "GAUSSIAN_ACCUMULATION", "STICK", "NEAREST_NEIGHBOR", "DISTANCE_WEIGHT_INVERSE")
# Attributes each hole-filling type requires (vtkIGSIOFillHolesInVolume fails without them).
_REQUIRED = {
    "GAUSSIAN": ("Size", "Stdev", "MinimumKnownVoxelsRatio"),
    "GAUSSIAN_ACCUMULATION": ("Size", "Stdev", "MinimumKnownVoxelsRatio"),
    "NEAREST_NEIGHBOR": ("Size", "MinimumKnownVoxelsRatio"),
    "DISTANCE_WEIGHT_INVERSE": ("Size", "MinimumKnownVoxelsRatio"),
    "STICK": ("StickLengthLimit", "NumberOfSticksToUse"),
}


@dataclass
class HoleFillingElement:
    """One ``HoleFilling/HoleFillingElement``; elements are tried in order until one fills the hole.

    Attributes
    ----------
    type : str
        One of :data:`HOLE_FILLING_TYPES`.
    size : int or None
        Largest kernel diameter, voxels (odd).
    stdev : float or None
        Gaussian standard deviation, voxels.
    min_ratio : float or None
        ``MinimumKnownVoxelsRatio``: fraction of known voxels the kernel needs (0..1).
    stick_length_limit : int or None
        Longest stick, voxels.
    number_of_sticks_to_use : int or None
    attributes : dict[str, str]
        Raw attributes.
    """

    type: str
    size: int | None = None
    stdev: float | None = None
    min_ratio: float | None = None
    stick_length_limit: int | None = None
    number_of_sticks_to_use: int | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class VolumeReconstructionConfig:
    """Every attribute of PLUS's ``VolumeReconstruction`` element (defaults as in PLUS).

    Spacing/origin are mm in the reference frame; extent is voxel index bounds ``(x0, x1, y0, y1, z0, z1)``;
    pixel quantities are in MF image pixels; angles in degrees. ``output_origin``/``output_extent`` are
    None when absent (PLUS then fits the volume to the frames). ``attributes`` keeps every raw string.
    """

    output_spacing: tuple[float, float, float]
    reference_coordinate_frame: str | None = None
    image_coordinate_frame: str | None = None
    output_origin: tuple[float, float, float] | None = None
    output_extent: tuple[int, int, int, int, int, int] | None = None
    clip_rectangle_origin: tuple[int, int] = (0, 0)
    clip_rectangle_size: tuple[int, int] = (0, 0)
    fan_angles_deg: tuple[float, float] = (0.0, 0.0)
    fan_origin_pixel: tuple[float, float] = (0.0, 0.0)
    fan_radius_start_pixel: float = 0.0
    fan_radius_stop_pixel: float = 500.0
    enable_fan_angles_auto_detect: bool = False
    fan_angles_auto_detect_brightness_threshold: float = 30.0
    fan_angles_auto_detect_filter_radius_pixel: int = 10
    pixel_rejection_threshold: float | None = None
    skip_interval: int = 1
    interpolation: str = "NEAREST_NEIGHBOR"
    optimization: str = "FULL"
    compounding_mode: str = "MEAN"
    number_of_threads: int = 0
    fill_holes: bool = False
    importance_mask_filename: str | None = None
    compounding: bool | None = None
    calculation: str | None = None
    hole_filling: list[HoleFillingElement] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def fan_clipping(self) -> bool:
        """True when a fan is defined (PLUS: either fan angle non-zero)."""
        return self.fan_angles_deg != (0.0, 0.0)

    @property
    def clip_rectangle(self) -> bool:
        """True when a clip rectangle is set (size 0 0 means the whole frame)."""
        return self.clip_rectangle_size[0] > 0 and self.clip_rectangle_size[1] > 0


class _Attrs:
    """Typed attribute access with errors that name the element, attribute and value."""

    def __init__(self, elem: ET.Element, where: str) -> None:
        self.elem, self.where = elem, where

    def _fail(self, name: str, value: str, what: str) -> InputError:
        return InputError(f"{self.where} attribute {name}={value!r}: {what}")

    def vector(self, name: str, n: int, kind=float):
        value = self.elem.get(name)
        if value is None:
            return None
        try:
            items = tuple(kind(v) for v in value.split())
        except ValueError as e:
            raise self._fail(name, value, f"expected {n} {kind.__name__} values") from e
        if len(items) != n:
            raise self._fail(name, value, f"expected {n} {kind.__name__} values, got {len(items)}")
        return items

    def scalar(self, name: str, kind=float):
        v = self.vector(name, 1, kind)
        return None if v is None else v[0]

    def enum(self, name: str, allowed: tuple[str, ...]) -> str | None:
        value = self.elem.get(name)
        if value is None:
            return None
        if value.strip().upper() not in allowed:
            raise self._fail(name, value, f"expected one of {', '.join(allowed)}")
        return value.strip().upper()

    def boolean(self, name: str, true: str, false: str) -> bool | None:
        value = self.enum(name, (true, false))
        return None if value is None else value == true


def _hole_filling(elem: ET.Element, where: str) -> list[HoleFillingElement]:
    out = []
    for i, item in enumerate(elem.findall("HoleFillingElement")):
        a = _Attrs(item, f"{where}/HoleFilling/HoleFillingElement[{i}]")
        kind = a.enum("Type", HOLE_FILLING_TYPES)
        if kind is None:
            raise InputError(f"{a.where}: attribute 'Type' is required ({', '.join(HOLE_FILLING_TYPES)})")
        missing = [n for n in _REQUIRED[kind] if item.get(n) is None]
        if missing:
            raise InputError(f"{a.where} Type={kind}: missing required attribute(s) {missing}")
        out.append(HoleFillingElement(kind, a.scalar("Size", int), a.scalar("Stdev"),
                                      a.scalar("MinimumKnownVoxelsRatio"), a.scalar("StickLengthLimit", int),
                                      a.scalar("NumberOfSticksToUse", int), dict(item.attrib)))
    return out


def _deprecated(a: _Attrs, old: str, new: str, value):
    """PLUS reads the deprecated attribute into the same setting; the new name wins when both are set."""
    if a.elem.get(old) is not None:
        log.warning("%s: attribute %s is deprecated, use %s", a.where, old, new)
    return value


def _compounding_mode(a: _Attrs, cfg: VolumeReconstructionConfig) -> str:
    mode = a.enum("CompoundingMode", COMPOUNDING_MODES)
    if mode is not None:
        return mode
    if cfg.calculation == "MAXIMUM":
        return "MAXIMUM"
    if cfg.compounding is False:
        return "LATEST"
    return "MEAN"


def parse_volume_reconstruction(elem: ET.Element, *, source: str = "<string>") -> VolumeReconstructionConfig:
    """``VolumeReconstruction`` element -> :class:`VolumeReconstructionConfig` (InputError names bad attributes)."""
    a = _Attrs(elem, f"{source}: <VolumeReconstruction>")
    spacing = a.vector("OutputSpacing", 3)
    if spacing is None or min(spacing) <= 0:
        raise InputError(f"{a.where}: attribute OutputSpacing (3 positive numbers, mm) is required, "
                         f"got {elem.get('OutputSpacing')!r}")
    cfg = VolumeReconstructionConfig(output_spacing=spacing, attributes=dict(elem.attrib))
    cfg.reference_coordinate_frame = elem.get("ReferenceCoordinateFrame")
    cfg.image_coordinate_frame = elem.get("ImageCoordinateFrame")
    cfg.output_origin = a.vector("OutputOrigin", 3)
    cfg.output_extent = a.vector("OutputExtent", 6, int)
    cfg.clip_rectangle_origin = a.vector("ClipRectangleOrigin", 2, int) or (0, 0)
    cfg.clip_rectangle_size = a.vector("ClipRectangleSize", 2, int) or (0, 0)
    fan = a.vector("FanAnglesDeg", 2) or _deprecated(a, "FanAngles", "FanAnglesDeg", a.vector("FanAngles", 2))
    cfg.fan_angles_deg = fan or (0.0, 0.0)
    origin = a.vector("FanOriginPixel", 2) or _deprecated(a, "FanOrigin", "FanOriginPixel", a.vector("FanOrigin", 2))
    cfg.fan_origin_pixel = origin or (0.0, 0.0)
    cfg.fan_radius_start_pixel = a.scalar("FanRadiusStartPixel") or 0.0
    stop = a.scalar("FanRadiusStopPixel")
    stop = stop if stop is not None else _deprecated(a, "FanDepth", "FanRadiusStopPixel", a.scalar("FanDepth"))
    cfg.fan_radius_stop_pixel = stop if stop is not None else 500.0
    _read_options(a, cfg)
    if cfg.fill_holes:
        hf = elem.find("HoleFilling")
        if hf is None:
            raise InputError(f"{a.where} FillHoles=ON: the nested <HoleFilling> element is required")
        cfg.hole_filling = _hole_filling(hf, a.where)
    if cfg.compounding_mode == "IMPORTANCE_MASK" and not cfg.importance_mask_filename:
        raise InputError(f"{a.where} CompoundingMode=IMPORTANCE_MASK: attribute ImportanceMaskFilename is required")
    return cfg


def _read_options(a: _Attrs, cfg: VolumeReconstructionConfig) -> None:
    auto = a.enum("EnableFanAnglesAutoDetect", ("TRUE", "FALSE"))
    cfg.enable_fan_angles_auto_detect = auto == "TRUE"
    threshold = a.scalar("FanAnglesAutoDetectBrightnessThreshold")
    cfg.fan_angles_auto_detect_brightness_threshold = 30.0 if threshold is None else threshold
    radius = a.scalar("FanAnglesAutoDetectFilterRadiusPixel", int)
    cfg.fan_angles_auto_detect_filter_radius_pixel = 10 if radius is None else radius
    cfg.pixel_rejection_threshold = a.scalar("PixelRejectionThreshold")
    skip = a.scalar("SkipInterval", int)
    if skip is not None and skip < 1:
        log.warning("%s: SkipInterval=%d must be >= 1; using 1 as PLUS does", a.where, skip)
    cfg.skip_interval = 1 if skip is None or skip < 1 else skip
    cfg.interpolation = a.enum("Interpolation", INTERPOLATIONS) or "NEAREST_NEIGHBOR"
    cfg.optimization = a.enum("Optimization", OPTIMIZATIONS) or "FULL"
    threads = a.scalar("NumberOfThreads", int)
    cfg.number_of_threads = 0 if threads is None else threads
    cfg.fill_holes = bool(a.boolean("FillHoles", "ON", "OFF"))
    cfg.importance_mask_filename = a.elem.get("ImportanceMaskFilename")
    cfg.compounding = _deprecated(a, "Compounding", "CompoundingMode", a.boolean("Compounding", "ON", "OFF"))
    cfg.calculation = _deprecated(a, "Calculation", "CompoundingMode", a.enum("Calculation", CALCULATIONS))
    cfg.compounding_mode = _compounding_mode(a, cfg)
