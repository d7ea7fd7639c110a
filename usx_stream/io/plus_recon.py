"""The ``VolumeReconstruction`` element of a PLUS device set, attribute by attribute.

Names, types, defaults and deprecations follow vtkIGSIOVolumeReconstructor::ReadConfiguration and
vtkIGSIOFillHolesInVolume::ReadConfiguration (PLUS/IGSIO) and the PLUS user manual:
``FanAngles`` -> ``FanAnglesDeg``, ``FanOrigin`` -> ``FanOriginPixel``, ``FanDepth`` ->
``FanRadiusStopPixel``, and ``Compounding`` (ON/OFF) / ``Calculation`` (WEIGHTED_AVERAGE/MAXIMUM) ->
``CompoundingMode`` when ``CompoundingMode`` is absent. Pixel quantities (clip rectangle, fan origin and
radii) are in MF-oriented image pixels.

The element is parsed straight into :class:`~usx_stream.compound.config.ReconstructionConfig`, the one
compounding config type; every error is an :class:`~usx_stream.errors.InputError` naming the file, the
element, the attribute and the value. Attributes PLUS reads that the reconstructor does not act on
(``NumberOfThreads``: threads are a reconstructor option here; ``EnableFanAnglesAutoDetect``: the fan comes
from ``FanAnglesDeg``) are checked, kept in ``ReconstructionConfig.attributes`` and, when they would
change PLUS's volume, logged once.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import Any

from ..compound.config import COMPOUNDING_MODES as SUPPORTED_COMPOUNDING_MODES
from ..compound.config import HoleFillingElement, ReconstructionConfig
from ..errors import InputError

log = logging.getLogger(__name__)

INTERPOLATIONS = ("NEAREST_NEIGHBOR", "LINEAR")
OPTIMIZATIONS = ("NONE", "PARTIAL", "FULL", "GPU")
COMPOUNDING_MODES = ("MEAN", "LATEST", "MAXIMUM", "IMPORTANCE_MASK")  # PLUS's; the reconstructor has no mask
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
    """The ``HoleFillingElement`` children of ``HoleFilling``, in order."""
    out = []
    for i, item in enumerate(elem.findall("HoleFillingElement")):
        a = _Attrs(item, f"{where}/HoleFilling/HoleFillingElement[{i}]")
        kind = a.enum("Type", HOLE_FILLING_TYPES)
        if kind is None:
            raise InputError(f"{a.where}: attribute 'Type' is required ({', '.join(HOLE_FILLING_TYPES)})")
        missing = [n for n in _REQUIRED[kind] if item.get(n) is None]
        if missing:
            raise InputError(f"{a.where} Type={kind}: missing required attribute(s) {missing}")
        given = dict(type=kind, size=a.scalar("Size", int), stdev=a.scalar("Stdev"),
                     min_ratio=a.scalar("MinimumKnownVoxelsRatio"),
                     stick_length_limit=a.scalar("StickLengthLimit", int),
                     number_of_sticks_to_use=a.scalar("NumberOfSticksToUse", int))
        try:
            out.append(HoleFillingElement.from_mapping(given))
        except ValueError as e:  # e.g. Size="0": "HoleFillingElement.size: must be >= 1, got 0"
            raise InputError(f"{a.where}: {e}") from e
    return out


def _deprecated(a: _Attrs, old: str, new: str, value):
    """PLUS reads the deprecated attribute into the same setting; the new name wins when both are set."""
    if a.elem.get(old) is not None:
        log.warning("%s: attribute %s is deprecated, use %s", a.where, old, new)
    return value


def _compounding_mode(a: _Attrs) -> str:
    # deprecated: Calculation (WEIGHTED_AVERAGE/MAXIMUM) and Compounding (ON/OFF), used when CompoundingMode is absent
    calculation = _deprecated(a, "Calculation", "CompoundingMode", a.enum("Calculation", CALCULATIONS))
    compounding = _deprecated(a, "Compounding", "CompoundingMode", a.boolean("Compounding", "ON", "OFF"))
    mode = a.enum("CompoundingMode", COMPOUNDING_MODES)
    if mode == "IMPORTANCE_MASK":
        raise a._fail("CompoundingMode", a.elem.get("CompoundingMode"),
                      f"not supported (ImportanceMaskFilename={a.elem.get('ImportanceMaskFilename')!r} is not "
                      f"read); use one of {', '.join(SUPPORTED_COMPOUNDING_MODES)}")
    if mode is not None:
        return mode
    if calculation == "MAXIMUM":
        return "MAXIMUM"
    if compounding is False:
        return "LATEST"
    return "MEAN"


def parse_volume_reconstruction(elem: ET.Element, *, source: str = "<string>") -> ReconstructionConfig:
    """``VolumeReconstruction`` element -> :class:`~usx_stream.compound.config.ReconstructionConfig`.

    Parameters
    ----------
    elem : Element
        The ``VolumeReconstruction`` element.
    source : str
        The file it comes from, for messages.

    Raises
    ------
    InputError
        Naming the file, the element, the attribute and the value: a missing OutputSpacing, a malformed
        number, an unknown enumeration value, FillHoles=ON without ``HoleFilling``, an unsupported
        CompoundingMode (IMPORTANCE_MASK), a value PLUS reads but the reconstructor rejects.
    """
    a = _Attrs(elem, f"{source}: <VolumeReconstruction>")
    spacing = a.vector("OutputSpacing", 3)
    if spacing is None or min(spacing) <= 0:
        raise InputError(f"{a.where}: attribute OutputSpacing (3 positive numbers, mm) is required, "
                         f"got {elem.get('OutputSpacing')!r}")
    kw: dict[str, Any] = dict(output_spacing=spacing, attributes=dict(elem.attrib))
    for name, attr in (("reference_coordinate_frame", "ReferenceCoordinateFrame"),
                       ("image_coordinate_frame", "ImageCoordinateFrame")):
        if elem.get(attr) is not None:
            kw[name] = elem.get(attr)
    kw["output_origin"] = a.vector("OutputOrigin", 3)
    kw["output_extent"] = a.vector("OutputExtent", 6, int)
    kw["clip_rectangle_origin"] = a.vector("ClipRectangleOrigin", 2, int) or (0, 0)
    kw["clip_rectangle_size"] = a.vector("ClipRectangleSize", 2, int) or (0, 0)
    fan = a.vector("FanAnglesDeg", 2) or _deprecated(a, "FanAngles", "FanAnglesDeg", a.vector("FanAngles", 2))
    kw["fan_angles_deg"] = fan or (0.0, 0.0)
    origin = a.vector("FanOriginPixel", 2) or _deprecated(a, "FanOrigin", "FanOriginPixel", a.vector("FanOrigin", 2))
    kw["fan_origin_pixel"] = origin or (0.0, 0.0)
    kw["fan_radius_start_pixel"] = a.scalar("FanRadiusStartPixel") or 0.0
    stop = a.scalar("FanRadiusStopPixel")
    stop = stop if stop is not None else _deprecated(a, "FanDepth", "FanRadiusStopPixel", a.scalar("FanDepth"))
    kw["fan_radius_stop_pixel"] = stop if stop is not None else 500.0
    _read_options(a, kw)
    if kw["fill_holes"]:
        hf = elem.find("HoleFilling")
        if hf is None:
            raise InputError(f"{a.where} FillHoles=ON: the nested <HoleFilling> element is required")
        kw["hole_filling"] = tuple(_hole_filling(hf, a.where))
    try:
        return ReconstructionConfig(**kw)
    except ValueError as e:  # a value PLUS reads but cannot use, e.g. an extent with max < min
        raise InputError(f"{a.where}: {e}") from e


def _read_options(a: _Attrs, kw: dict[str, Any]) -> None:
    """The attributes after the geometry: fan auto-detection, rejection, interpolation, compounding..."""
    auto = a.enum("EnableFanAnglesAutoDetect", ("TRUE", "FALSE"))
    a.scalar("FanAnglesAutoDetectBrightnessThreshold")       # checked; kept in attributes only
    a.scalar("FanAnglesAutoDetectFilterRadiusPixel", int)
    if auto == "TRUE":
        log.warning("%s: EnableFanAnglesAutoDetect=TRUE is not supported; the fan is FanAnglesDeg=%s",
                    a.where, kw["fan_angles_deg"])
    kw["pixel_rejection_threshold"] = a.scalar("PixelRejectionThreshold")
    skip = a.scalar("SkipInterval", int)
    if skip is not None and skip < 1:
        log.warning("%s: SkipInterval=%d must be >= 1; using 1 as PLUS does", a.where, skip)
    kw["skip_interval"] = 1 if skip is None or skip < 1 else skip
    kw["interpolation"] = a.enum("Interpolation", INTERPOLATIONS) or "NEAREST_NEIGHBOR"
    kw["optimization"] = a.enum("Optimization", OPTIMIZATIONS) or "FULL"
    a.scalar("NumberOfThreads", int)                           # checked; kept in attributes only
    kw["fill_holes"] = bool(a.boolean("FillHoles", "ON", "OFF"))
    kw["compounding_mode"] = _compounding_mode(a)
