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
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..compound import config as _recon
from ..errors import InputError
from ..frames import LEVELS

log = logging.getLogger(__name__)


class ConfigError(InputError):
    """A launch-file value is missing, mistyped or out of range; the message names key and value."""


@dataclass(frozen=True)
class Key:
    """One launch-file key: its type, default and the values it admits.

    ``kind`` is one of ``bool``, ``int``, ``float``, ``str``, ``path``, ``floats`` (list of numbers,
    length ``length`` when set), ``points`` (table ``name -> [x, y, z]``) and ``networks`` (list of IP
    addresses or networks, ``["127.0.0.1", "10.0.0.0/8"]``).
    """

    kind: str
    default: Any
    doc: str
    lo: float | None = None          # inclusive lower bound
    gt: float | None = None          # exclusive lower bound
    hi: float | None = None          # inclusive upper bound
    choices: tuple[str, ...] | None = None
    length: int | None = None


_HOLE = _recon.DEFAULT_HOLE_FILLING[0]


def _port(default: int, doc: str) -> Key:
    return Key("int", default, doc, lo=1, hi=65535)


SCHEMA: dict[str, dict[str, Key]] = {
    "source": {
        "kind": Key("str", "igtl", "frame source", choices=("igtl", "replay", "sim")),
        "host": Key("str", "127.0.0.1", "PlusServer host (kind = igtl)"),
        "port": _port(18944, "PlusServer port (kind = igtl)"),
        "image_device": Key("str", "Image_Reference", "IMAGE device name carrying the B-mode frames"),
        "image_to_reference": Key("str", "ImageToReference", "transform that places a frame in Reference"),
        "path": Key("path", "", "sequence file (.igs.mha / .igs.nrrd) for kind = replay"),
        "calibration": Key("path", "", "PLUS device set with ImageToProbe (empty: frames carry ImageToReference)"),
        "speed": Key("float", 1.0, "replay speed relative to the recorded timestamps", gt=0),
        "loop": Key("bool", False, "replay the file again at its end"),
        "seed": Key("int", 0, "simulator seed (kind = sim)", lo=0),
        "n_frames": Key("int", 300, "simulated frames (kind = sim)", lo=1),
        "fps": Key("float", 30.0, "simulated / replayed frame rate when timestamps are absent, Hz", gt=0),
        "connect_timeout_s": Key("float", 5.0, "connect timeout, s", gt=0),
        "reconnect_interval_s": Key("float", 1.0, "wait between reconnect attempts, s", gt=0),
        "queue_frames": Key("int", 256, "ingest queue depth, frames (a full queue counts drops)", lo=1),
        "body_timeout_s": Key("float", 2.0, "a message must arrive whole within this long of its first bytes, "
                              "else it is dropped and counted (stalled_body): one stalled body cannot hold "
                              "ingest up; 2 s passes a 64 MiB body at 270 Mbit/s", gt=0),
    },
    "compound": {
        "spacing_mm": Key("float", 0.5, "isotropic voxel size, mm", gt=0),
        "origin_mm": Key("floats", [], "grid origin in Reference, mm (empty: from the first sweep)", length=3),
        "extent_mm": Key("floats", [], "grid size along x, y, z, mm (empty: from the first sweep)", length=3),
        "margin_mm": Key("float", 10.0, "margin added around the first sweep when the grid is automatic, mm", lo=0),
        # choices are the reconstructor's own (compound/config.py): a value that loads is a value that runs
        "interpolation": Key("str", "NEAREST_NEIGHBOR", "pixel pasting", choices=_recon.INTERPOLATIONS),
        "compounding_mode": Key("str", "MEAN", "how overlapping pixels combine", choices=_recon.COMPOUNDING_MODES),
        "fill_holes": Key("bool", False, "fill the voxels no pixel reached in the node's snapshots (the bone "
                          "channel it reads, or every channel), with the hole_filling element below; a cost per "
                          "snapshot"),
        "hole_filling": Key("str", _HOLE.type, "hole-filling element type (PLUS HoleFillingElement Type; default: "
                            "STICK 9 / 1 as PLUS's spine-phantom device sets)", choices=_recon.HOLE_FILLING_TYPES),
        "stick_length_limit": Key("int", _HOLE.stick_length_limit, "STICK: longest stick, voxels", lo=1),
        "number_of_sticks_to_use": Key("int", _HOLE.number_of_sticks_to_use, "STICK: best sticks averaged", lo=1),
        "hole_filling_size": Key("int", _HOLE.size, "GAUSSIAN*, NEAREST_NEIGHBOR, DISTANCE_WEIGHT_INVERSE: kernel "
                                 "edge, voxels (odd)", lo=1),
        "hole_filling_stdev": Key("float", _HOLE.stdev, "GAUSSIAN*: kernel standard deviation, voxels", gt=0),
        "hole_filling_min_ratio": Key("float", _HOLE.min_ratio, "kernel types: fraction of known voxels the "
                                      "kernel must exceed (PLUS MinimumKnownVoxelsRatio)", lo=0, hi=1),
        "clip_rectangle_origin": Key("floats", [], "clip rectangle origin (i, j), pixels (empty: none)", length=2),
        "clip_rectangle_size": Key("floats", [], "clip rectangle size (w, h), pixels (empty: none)", length=2),
        "pixel_rejection_threshold": Key("float", 0.0, "pixels at or below this are not pasted (0: off)", lo=0),
        "backend": Key("str", "auto", "compute backend (auto: torch on CUDA, numba kernels on a CPU)",
                       choices=("auto", "numba", "torch")),
        "device": Key("str", "auto", "torch device for backend = torch (auto: CUDA when present)",
                      choices=("auto", "cpu", "cuda")),
        "bone_channel": Key("bool", True, "compound the bone probability as a second channel"),
    },
    "bone": {
        "enabled": Key("bool", True, "detect bone per frame"),
        "downsample": Key("int", 0, "block-average factor before detection (0: from cell_mm)", lo=0, hi=16),
        "cell_mm": Key("float", 0.3, "detection cell size when downsample = 0, mm", gt=0),
        "pixel_size_mm": Key("float", 0.0, "B-mode pixel size, mm (0: from ImageToProbe)", lo=0),
        "smooth_mm": Key("float", 0.6, "Gaussian smoothing sigma, mm", lo=0),
        "ridge_ratio": Key("float", 1.3, "ridge intensity over its row's mean intensity, at least", gt=1),
        "min_intensity": Key("float", 0.35, "ridge intensity over the frame's 99th percentile, at least",
                             lo=0, hi=1),
        "shadow_gap_mm": Key("float", 1.0, "skip below the ridge before measuring the shadow, mm", lo=0),
        "shadow_depth_mm": Key("float", 10.0, "depth of the shadow window below the ridge, mm", gt=0),
        "shadow_threshold": Key("float", 0.7, "minimum shadow score (1 - below / ridge)", lo=0, hi=1),
        "reference_above_mm": Key("float", 3.0, "row reference taken this far above the row, mm", lo=0),
        "row_percentile": Key("float", 50.0, "row intensity reference for depth normalisation, percentile",
                              gt=0, hi=100),
        "min_depth_mm": Key("float", 3.0, "no bone shallower than this, mm", lo=0),
        "band_mm": Key("float", 1.0, "sigma of the probability band around the surface, mm", gt=0),
        "min_run_mm": Key("float", 2.0, "shortest lateral run of detected columns kept, mm", lo=0),
        "max_jump_mm": Key("float", 2.0, "depth step that breaks a run, mm", gt=0),
        "probability_threshold": Key("float", 0.5, "bone-channel voxels kept as points", gt=0, hi=1),
        "point_voxel_mm": Key("float", 1.0, "voxel size for point downsampling, mm", gt=0),
        "min_points": Key("int", 50, "fewest points per level sent to completion", lo=0),
        "split_max_radius_mm": Key("float", 80.0, "farthest a point may lie from its level's axis, mm", gt=0),
        "landmarks_mm": Key("points", {}, "fallback level centres in Reference, mm: L1 = [x, y, z] ..."),
    },
    "xray": {
        "enabled": Key("bool", True, "use the X-ray (off: US-only completion)"),
        "source": Key("str", "igtl", "where the X-ray comes from", choices=("igtl", "file", "sim")),
        "image_device": Key("str", "Xray", "IMAGE device name of the X-ray"),
        "labelmap_device": Key("str", "XrayLabelmap", "IMAGE device name of its labelmap"),
        "image_path": Key("path", "", "X-ray image file for source = file"),
        "labelmap_path": Key("path", "", "labelmap file for source = file"),
        "geometry": Key("path", "", "C-arm geometry file (intrinsics and XrayToReference; made by "
                        "usx-stream calibrate-xray; not needed for source = sim or when the X-ray is off)"),
        "points_per_level": Key("int", 1024, "labelmap points per level after back-projection", lo=16),
        "fit_body": Key("bool", True, "fit each completed body to its X-ray silhouette along the cranial axis"),
    },
    "completion": {
        "backend": Key("str", "auto", "engine", choices=("auto", "tensorrt", "compiled", "eager")),
        "device": Key("str", "auto", "torch device", choices=("auto", "cpu", "cuda")),
        "precision": Key("str", "auto", "compute precision (auto: fp16 on CUDA, fp32 on a CPU)",
                         choices=("auto", "fp32", "fp16", "bf16")),
        "weights": Key("path", "", "network weights (empty: the packaged weights)"),
        "weights_us_only": Key("path", "", "US-only network weights (empty: the packaged weights)"),
        "period_s": Key("float", 0.5, "time between completion runs, s (latest-wins)", gt=0),
        "min_frames": Key("int", 30, "frames compounded before the first completion", lo=1),
        "engine_cache": Key("path", "", "folder for compiled engines (empty: no cache)"),
        "threads": Key("int", 0, "CPU threads for completion (0: torch's default); 1 leaves a core to ingest", lo=0),
        "uncertainty_samples": Key("int", 0, "K latent draws decoded with the mean completion for the per-vertex "
                                   "uncertainty_mm on each surface (0: off)", lo=0, hi=32),
        "uncertainty_period_s": Key("float", 2.0, "on a CPU, time between uncertainty runs, s (the last spread is "
                                    "reused between them; 0: every update); a GPU runs it every update", lo=0),
    },
    "surface": {
        "method": Key("str", "distance_field", "meshing method",
                      choices=("distance_field", "poisson", "ball_pivoting")),
        "triangle_budget": Key("int", 10000, "most triangles per vertebra", lo=100),
        "grid_mm": Key("float", 2.5, "distance-field grid spacing, mm (coarsened to fit the budget)", gt=0),
        "offset_mm": Key("float", 0.0, "distance-field shell half-thickness, mm (0: from the point spacing)", lo=0),
        "project_k": Key("int", 6, "distance field: neighbours of the plane each vertex is projected onto", lo=0),
        "poisson_depth": Key("int", 6, "octree depth for method = poisson", lo=4, hi=12),
        "workers": Key("int", 1, "threads meshing the levels of one update at once (numpy, scipy and "
                       "scikit-image release the GIL in their loops)", lo=1, hi=8),
    },
    "publish": {
        "frame": Key("str", "Reference", "coordinate frame of the published surfaces"),
        "igtl_enabled": Key("bool", True, "send POLYDATA over OpenIGTLink"),
        "igtl_mode": Key("str", "server", "OpenIGTLink role towards Slicer", choices=("server", "client")),
        "igtl_host": Key("str", "127.0.0.1", "bind (server) or connect (client) address"),
        "igtl_port": _port(18945, "OpenIGTLink port for Slicer"),
        "allow_clients": Key("networks", [], "server mode: client addresses or networks allowed to connect, "
                             "e.g. ['127.0.0.1', '10.0.0.0/8'] (empty: any; OpenIGTLink has no authentication)"),
        "max_clients": Key("int", 16, "server mode: clients held at once; at the limit a newcomer evicts the "
                           "oldest connection of the address holding the most", lo=1, hi=1024),
        "device_prefix": Key("str", "", "prefix of the POLYDATA device names (e.g. 'USX_')"),
        "status_messages": Key("bool", True, "send the node's status line (STRING <prefix>Status; ZeroMQ topic status)"),
        "zmq_enabled": Key("bool", False, "publish on ZeroMQ too"),
        "zmq_endpoint": Key("str", "tcp://127.0.0.1:5556", "ZeroMQ PUB endpoint"),
    },
    "record": {
        "enabled": Key("bool", False, "record the session"),
        "dir": Key("path", "recordings", "output folder"),
        "inputs": Key("bool", True, "record tracked frames and the X-ray"),
        "surfaces": Key("bool", True, "record published surfaces"),
        "compress": Key("bool", True, "zlib-compress recorded sequences"),
        "chunk_frames": Key("int", 300, "most frames per recorded sequence file", lo=1),
        "max_chunk_s": Key("float", 1.0, "longest stretch of stream held before it is written, s (what a kill "
                           "can lose)", gt=0),
    },
    "telemetry": {
        "enabled": Key("bool", True, "write the JSON report and log the periodic summary (latencies are "
                       "recorded either way)"),
        "report_path": Key("path", "", "JSON report written at shutdown (empty: none)"),
        "report_interval_s": Key("float", 10.0, "period of the text summary `usx-stream run` logs, s", gt=0),
        "window": Key("int", 10000, "latency samples kept per stage for the percentiles", lo=10),
    },
}
TOP_LEVEL_KEYS = {"description": Key("str", "", "what this launch file is for")}


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
    comp = sections["compound"]
    if bool(comp.origin_mm) != bool(comp.extent_mm):
        raise _fail("compound.extent_mm", "origin_mm and extent_mm must be given together", comp.extent_mm)
    if comp.extent_mm and min(comp.extent_mm) <= 0:
        raise _fail("compound.extent_mm", "every size must be > 0", comp.extent_mm)
    if bool(comp.clip_rectangle_origin) != bool(comp.clip_rectangle_size):
        raise _fail("compound.clip_rectangle_size", "clip_rectangle_origin and clip_rectangle_size go together",
                    comp.clip_rectangle_size)


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
