"""Launch-file schema: one TOML table per stage, with defaults, types and ranges.

A launch file (``launch/*.toml``) holds every tunable of the node, one table per stage::

    [source]      where frames come from (PlusServer over OpenIGTLink, a sequence file, the simulator)
    [compound]    volume reconstruction (grid, interpolation, compounding, hole filling, backend)
    [bone]        per-frame bone detection, bone points from the volume, per-vertebra split
    [xray]        the X-ray, its labelmap and the C-arm geometry
    [completion]  the completion network (backend, device, weights, period)
    [surface]     point cloud -> mesh (method, triangle budget)
    [publish]     OpenIGTLink (Slicer) and ZeroMQ outputs
    [record]      recording of inputs and published surfaces
    [telemetry]   latency report

Every key is optional (a missing key takes its default); an unknown table or key is an error that
names it. Errors name the key and the value: ``compound.spacing_mm: must be > 0, got -1``.
Relative paths are resolved against the directory of the launch file, so a launch file can name
``../calibration/carm.json`` and work from any working directory. An empty string means "no path".

>>> cfg = parse_launch({"compound": {"spacing_mm": 1.0}})
>>> cfg.compound.spacing_mm, cfg.publish.igtl_port
(1.0, 18945)
"""

from __future__ import annotations

import ipaddress
import logging
import math
import tomllib
from pathlib import Path
from typing import Any, Mapping

from ..compound.geometry import MAX_GRID_VOXELS, grid_dims
from ..errors import InputError
from ..frames import LEVELS
from .launch_schema import SCHEMA, TOP_LEVEL_KEYS, Key

log = logging.getLogger(__name__)


class ConfigError(InputError):
    """A launch-file value is missing, mistyped or out of range; the message names key and value."""


class Section:
    """Validated values of one table; attribute access (``cfg.compound.spacing_mm``)."""

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"{self._name}.{key}: no such key") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{self._name}: launch values are read-only")

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Section({self._name!r}, {self._values!r})"


class LaunchConfig:
    """A validated launch file: ``cfg.<stage>.<key>``; ``cfg.as_dict()`` for reports."""

    def __init__(self, sections: Mapping[str, Section], *, description: str = "", path: Path | None = None):
        self._sections = dict(sections)
        self.description = description
        self.path = path

    def __getattr__(self, stage: str) -> Section:
        try:
            return self.__dict__["_sections"][stage]
        except KeyError:
            raise AttributeError(f"no launch table [{stage}]") from None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: s.as_dict() for name, s in self._sections.items()}

    def with_overrides(self, overrides: Mapping[str, Any]) -> "LaunchConfig":
        """A copy with ``{"stage.key": value}`` overrides applied and validated (command-line ``--set``)."""
        raw = {name: s.as_dict() for name, s in self._sections.items()}
        for dotted, value in overrides.items():
            stage, _, key = dotted.partition(".")
            if stage not in raw or not key:
                raise ConfigError(f"{dotted}: unknown key (expected 'stage.key', stages {sorted(SCHEMA)})")
            raw[stage][key] = value
        return parse_launch(raw, description=self.description, base_dir=None, path=self.path)


class _ReadRecordingSection(Section):
    """A :class:`Section` that adds ``"stage.key"`` to a shared set on every read."""

    def __init__(self, name: str, values: Mapping[str, Any], reads: set[str]) -> None:
        super().__init__(name, values)
        object.__setattr__(self, "_reads", reads)

    def __getattr__(self, key: str) -> Any:
        value = super().__getattr__(key)
        self._reads.add(f"{self._name}.{key}")
        return value


class _ReadRecordingConfig(LaunchConfig):
    """A :class:`LaunchConfig` whose copies (``with_overrides``) record into the same set."""

    def with_overrides(self, overrides: Mapping[str, Any]) -> "LaunchConfig":
        return recording_reads(super().with_overrides(overrides), self.__dict__["_reads"])[0]


def recording_reads(cfg: LaunchConfig, reads: set[str] | None = None) -> tuple[LaunchConfig, set[str]]:
    """A copy of ``cfg`` that records which keys are read, and the set it records them in.

    Every attribute read of a key (``cfg.compound.spacing_mm``) adds ``"compound.spacing_mm"`` to the set,
    also through the copies ``with_overrides`` makes; ``as_dict`` reads record nothing. For tests that
    check that every launch key is used by something.
    """
    reads = set() if reads is None else reads
    sections = {name: _ReadRecordingSection(name, s.as_dict(), reads) for name, s in cfg._sections.items()}
    out = _ReadRecordingConfig(sections, description=cfg.description, path=cfg.path)
    out.__dict__["_reads"] = reads
    return out, reads


def _fail(where: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: {what}, got {value!r}")


def _check_range(where: str, key: Key, value: float) -> None:
    if key.gt is not None and not value > key.gt:
        raise _fail(where, f"must be > {key.gt:g}", value)
    if key.lo is not None and value < key.lo:
        raise _fail(where, f"must be >= {key.lo:g}", value)
    if key.hi is not None and value > key.hi:
        raise _fail(where, f"must be <= {key.hi:g}", value)


def _coerce(where: str, key: Key, value: Any, base_dir: Path | None) -> Any:
    """Check ``value`` against ``key`` and return it in its canonical Python type."""
    kind = key.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(where, "must be true or false", value)
        return value
    if kind in ("int", "float"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise _fail(where, f"must be {'an integer' if kind == 'int' else 'a number'}", value)
        value = int(value) if kind == "int" else float(value)
        _check_range(where, key, value)
        return value
    if kind in ("str", "path"):
        if not isinstance(value, str):
            raise _fail(where, "must be a string", value)
        if key.choices is not None and value not in key.choices:
            raise _fail(where, f"must be one of {list(key.choices)}", value)
        if kind == "path" and value and base_dir is not None and not Path(value).is_absolute():
            value = str((base_dir / value).resolve())
        return value
    if kind == "floats":
        return _coerce_floats(where, key, value)
    if kind == "points":
        return _coerce_points(where, value)
    if kind == "networks":
        return _coerce_networks(where, value)
    raise AssertionError(f"schema kind {kind!r} of {where} is not handled")


def _coerce_floats(where: str, key: Key, value: Any) -> list[float]:
    if not isinstance(value, (list, tuple)) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise _fail(where, "must be a list of numbers", value)
    if value and key.length is not None and len(value) != key.length:
        raise _fail(where, f"must have {key.length} numbers (or be empty)", value)
    return [float(v) for v in value]


def _coerce_networks(where: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)) or any(not isinstance(v, str) for v in value):
        raise _fail(where, "must be a list of IP addresses or networks (strings)", value)
    for i, v in enumerate(value):
        try:
            ipaddress.ip_network(v.strip(), strict=False)
        except ValueError:
            raise _fail(f"{where}[{i}]", "not an IP address or network", v) from None
    return [v.strip() for v in value]


def _coerce_points(where: str, value: Any) -> dict[str, list[float]]:
    if not isinstance(value, Mapping):
        raise _fail(where, "must be a table of level = [x, y, z]", value)
    out = {}
    for name, p in value.items():
        if name not in LEVELS:
            raise _fail(f"{where}.{name}", f"unknown level (expected one of {list(LEVELS)})", p)
        out[name] = _coerce_floats(f"{where}.{name}", Key("floats", [], "", length=3), p)
        if len(out[name]) != 3:
            raise _fail(f"{where}.{name}", "must have 3 numbers", p)
    return out


def _check_cross(sections: Mapping[str, Section]) -> None:
    """Rules that involve more than one key."""
    src = sections["source"]
    if src.kind == "replay" and not src.path:
        raise _fail("source.path", "required when source.kind = 'replay'", src.path)
    xr = sections["xray"]
    if xr.enabled and xr.source == "file" and not xr.image_path:
        raise _fail("xray.image_path", "required when xray.source = 'file'", xr.image_path)
    axis = sections["bone"].cranial_axis
    if axis and not sum(v * v for v in axis) > 0:
        raise _fail("bone.cranial_axis", "must be a non-zero direction (or empty)", axis)
    comp = sections["compound"]
    if bool(comp.origin_mm) != bool(comp.extent_mm):
        raise _fail("compound.extent_mm", "origin_mm and extent_mm must be given together", comp.extent_mm)
    if comp.extent_mm and min(comp.extent_mm) <= 0:
        raise _fail("compound.extent_mm", "every size must be > 0", comp.extent_mm)
    if comp.extent_mm:
        dims = grid_dims(comp.extent_mm, comp.spacing_mm)
        if math.prod(dims) > MAX_GRID_VOXELS:
            raise _fail("compound.extent_mm", f"a grid of {dims} voxels at compound.spacing_mm = "
                        f"{comp.spacing_mm:g} is over {MAX_GRID_VOXELS} voxels (2 GiB of accumulators); "
                        f"give the region of interest, or a larger spacing", comp.extent_mm)
    if bool(comp.clip_rectangle_origin) != bool(comp.clip_rectangle_size):
        raise _fail("compound.clip_rectangle_size", "clip_rectangle_origin and clip_rectangle_size go together",
                    comp.clip_rectangle_size)
    c = sections["completion"]
    if c.uncertainty == "latent" and c.uncertainty_samples == 0:
        raise _fail("completion.uncertainty_samples", "must be >= 1 when completion.uncertainty = 'latent'",
                    c.uncertainty_samples)
    if c.uncertainty != "latent" and c.uncertainty_samples:
        raise _fail("completion.uncertainty_samples", f"applies to completion.uncertainty = 'latent' only "
                    f"(completion.uncertainty = {c.uncertainty!r})", c.uncertainty_samples)


def parse_launch(data: Mapping[str, Any], *, description: str | None = None,
                 base_dir: Path | None = None, path: Path | None = None) -> LaunchConfig:
    """Validate a launch mapping (as ``tomllib`` returns it) and fill in defaults.

    Parameters
    ----------
    data : mapping
        ``{stage: {key: value}}`` plus the optional top-level ``description`` string.
    base_dir : Path, optional
        Directory that relative paths are resolved against (None: leave them as written).

    Raises
    ------
    ConfigError
        Naming the key and the value: unknown tables or keys, wrong types, out-of-range values.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"launch file: expected a table of stages, got {type(data).__name__}")
    for name, value in data.items():
        if name in TOP_LEVEL_KEYS:
            continue
        if name not in SCHEMA:
            raise _fail(name, f"unknown table (expected one of {sorted(SCHEMA)})", value)
        if not isinstance(value, Mapping):
            raise _fail(name, "must be a table", value)
    sections = {}
    for stage, keys in SCHEMA.items():
        given = data.get(stage, {})
        unknown = sorted(set(given) - set(keys))
        if unknown:
            raise ConfigError(f"{stage}: unknown key(s) {unknown} (known: {sorted(keys)})")
        values = {}
        for name, key in keys.items():
            where = f"{stage}.{name}"
            if name in given:
                values[name] = _coerce(where, key, given[name], base_dir)
            else:
                # Defaults stay as written: a default path is relative to the working directory.
                values[name] = _coerce(where, key, key.default, None)
        sections[stage] = Section(stage, values)
    _check_cross(sections)
    desc = description if description is not None else data.get("description", "")
    if not isinstance(desc, str):
        raise _fail("description", "must be a string", desc)
    return LaunchConfig(sections, description=desc, path=path)


def load_launch(path: str | Path) -> LaunchConfig:
    """Read and validate a TOML launch file; relative paths resolve against its directory."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as e:
        raise ConfigError(f"launch file {path}: cannot read ({e.strerror})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"launch file {path}: invalid TOML ({e})") from e
    try:
        return parse_launch(data, base_dir=path.resolve().parent, path=path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def default_launch() -> LaunchConfig:
    """Every key at its default."""
    return parse_launch({})


def describe_schema() -> str:
    """The schema as text (``key = default  # doc``), one table per stage, for ``--help`` and docs."""
    lines = []
    for stage, keys in SCHEMA.items():
        lines.append(f"[{stage}]")
        for name, key in keys.items():
            extra = f" one of {list(key.choices)}" if key.choices else ""
            lines.append(f"{name} = {key.default!r}  # {key.doc}{extra}")
        lines.append("")
    return "\n".join(lines)
