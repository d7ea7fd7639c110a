"""Read a PLUS device-set configuration (``PlusDeviceSet_*.xml``).

What is read, as PLUS (vtkIGSIOVolumeReconstructor::ReadConfiguration, vtkIGSIOFillHolesInVolume and
the PLUS user manual's "Volume reconstruction" page) defines it:

- ``CoordinateDefinitions/Transform``: ``From``, ``To``, ``Matrix`` (16 numbers, row-major), ``Error``, ``Date``;
- ``VolumeReconstruction`` (top level, or inside a ``VirtualVolumeReconstructor`` device): every attribute
  of that element, deprecated ones mapped onto their replacements as PLUS does, and its ``HoleFilling``
  elements, into :class:`~usx_stream.compound.config.ReconstructionConfig`;
- ``DataCollection/Device``: ``Id``, ``Type`` and ``LocalTimeOffsetSec``.

Raw attribute strings are kept beside the parsed values. Malformed XML, matrices or numbers raise
:class:`~usx_stream.errors.InputError` (a ValueError) naming the file, the element, the attribute and the
value; malformed or truncated XML names the line and column where parsing stopped.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..transforms import TransformRepository, as_matrix
from ..compound.config import ReconstructionConfig
from .plus_recon import parse_volume_reconstruction

log = logging.getLogger(__name__)

__all__ = ["CoordinateDefinition", "DeviceSet", "read_device_set", "parse_device_set"]


@dataclass
class CoordinateDefinition:
    """One ``CoordinateDefinitions/Transform`` element.

    Attributes
    ----------
    from_frame, to_frame : str
        The transform maps points in ``from_frame`` to ``to_frame`` (PLUS name ``FromToTo``).
    matrix : (4, 4) float64 ndarray
    error : float or None
        Calibration error as stored (mm for spatial calibrations).
    date : str or None
        As written (PLUS uses ``MMDDYY_HHMMSS`` or free text).
    attributes : dict[str, str]
        Every attribute, raw.
    """

    from_frame: str
    to_frame: str
    matrix: np.ndarray
    error: float | None = None
    date: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.from_frame}To{self.to_frame}"


@dataclass
class DeviceSet:
    """A parsed ``PlusConfiguration``.

    Attributes
    ----------
    coordinate_definitions : list of CoordinateDefinition
    volume_reconstruction : ReconstructionConfig or None
        The ``VolumeReconstruction`` element, parsed into the reconstructor's config (raw attributes in
        its ``attributes``); None when the device set has none.
    local_time_offsets : dict[str, float]
        ``LocalTimeOffsetSec`` per device ``Id`` (only devices that set it), seconds.
    devices : dict[str, dict[str, str]]
        Raw attributes of every ``DataCollection/Device``, by ``Id``.
    version : str or None
        ``PlusConfiguration/@version``.
    path : Path or None
    """

    coordinate_definitions: list[CoordinateDefinition] = field(default_factory=list)
    volume_reconstruction: ReconstructionConfig | None = None
    local_time_offsets: dict[str, float] = field(default_factory=dict)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    version: str | None = None
    path: Path | None = None

    def transform_repository(self) -> TransformRepository:
        """A :class:`TransformRepository` holding every coordinate definition (e.g. ImageToProbe)."""
        repo = TransformRepository()
        for cd in self.coordinate_definitions:
            repo.set(cd.name, cd.matrix)
        return repo


def _where(elem: ET.Element, source: str) -> str:
    if elem.tag == "Transform":  # which one: a device set has several
        return f"{source}: <Transform From={elem.get('From')!r} To={elem.get('To')!r}>"
    return f"{source}: <{elem.tag}>"


def _parse_matrix(elem: ET.Element, source: str) -> np.ndarray:
    text = elem.get("Matrix")
    if text is None:
        raise InputError(f"{_where(elem, source)}: missing attribute 'Matrix' (16 numbers, row-major 4x4)")
    try:
        values = [float(v) for v in text.split()]
    except ValueError as e:
        raise InputError(f"{_where(elem, source)} attribute Matrix={' '.join(text.split())!r}: "
                         "not a list of numbers") from e
    if len(values) != 16:
        raise InputError(f"{_where(elem, source)} attribute Matrix={' '.join(text.split())!r}: "
                         f"expected 16 numbers (row-major 4x4), got {len(values)}")
    try:
        m = as_matrix(values, name=f"{_where(elem, source)} attribute Matrix")
    except ValueError as e:  # e.g. nan or inf; the message names the element and the values
        raise InputError(str(e)) from e
    if not np.allclose(m[3], [0, 0, 0, 1]):
        raise InputError(f"{_where(elem, source)} attribute Matrix: last row must be 0 0 0 1, got {m[3].tolist()}")
    return m


def _coordinate_definitions(root: ET.Element, source: str) -> list[CoordinateDefinition]:
    out = []
    for cds in root.iter("CoordinateDefinitions"):
        for elem in cds.findall("Transform"):
            frm, to = elem.get("From"), elem.get("To")
            if not frm or not to:
                raise InputError(f"{_where(elem, source)}: attributes 'From' and 'To' are required, "
                                 f"got From={frm!r} To={to!r}")
            error = elem.get("Error")
            try:
                error_val = float(error) if error is not None else None
            except ValueError as e:
                raise InputError(f"{_where(elem, source)} attribute Error={error!r}: not a number") from e
            out.append(CoordinateDefinition(frm, to, _parse_matrix(elem, source), error_val, elem.get("Date"),
                                            dict(elem.attrib)))
    names = [cd.name for cd in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{source}: <CoordinateDefinitions> defines {dupes} more than once")
    return out


def _devices(root: ET.Element, source: str) -> tuple[dict[str, dict[str, str]], dict[str, float]]:
    devices: dict[str, dict[str, str]] = {}
    offsets: dict[str, float] = {}
    for elem in root.iter("Device"):
        dev_id = elem.get("Id")
        if not dev_id:
            raise InputError(f"{_where(elem, source)} Type={elem.get('Type')!r}: attribute 'Id' is required")
        devices[dev_id] = dict(elem.attrib)
        value = elem.get("LocalTimeOffsetSec")
        if value is not None:
            try:
                offsets[dev_id] = float(value)
            except ValueError as e:
                raise InputError(f"{_where(elem, source)} Id={dev_id!r} attribute LocalTimeOffsetSec={value!r}: "
                                 "not a number") from e
    return devices, offsets


def _find_volume_reconstruction(root: ET.Element) -> ET.Element | None:
    top = root.find("VolumeReconstruction")
    if top is not None:
        return top
    nested = list(root.iter("VolumeReconstruction"))
    if len(nested) > 1:
        log.warning("%d VolumeReconstruction elements found; using the first", len(nested))
    return nested[0] if nested else None


def parse_device_set(text: str, *, source: str = "<string>") -> DeviceSet:
    """Parse device-set XML text (see :func:`read_device_set`)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:  # str(e) names the line and column, e.g. "unclosed token: line 11, column 4"
        raise InputError(f"{source}: malformed XML (truncated or not XML): {e}") from e
    if root.tag != "PlusConfiguration":
        raise InputError(f"{source}: root element is <{root.tag}>, expected <PlusConfiguration>")
    devices, offsets = _devices(root, source)
    recon_elem = _find_volume_reconstruction(root)
    recon = parse_volume_reconstruction(recon_elem, source=source) if recon_elem is not None else None
    return DeviceSet(coordinate_definitions=_coordinate_definitions(root, source), volume_reconstruction=recon,
                     local_time_offsets=offsets, devices=devices, version=root.get("version"))


def read_device_set(path: str | Path) -> DeviceSet:
    """Read a PLUS device-set XML file.

    Raises
    ------
    InputError
        Malformed XML (the message names the line and column), a file that is not text, or an element
        whose attribute is missing or malformed (the message names the element, the attribute and the value).
    OSError
        The file cannot be read (FileNotFoundError, IsADirectoryError, ...).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a PLUS device set (XML text): undecodable byte at offset {e.start}") from e
    ds = parse_device_set(text, source=str(path))
    ds.path = path
    return ds
