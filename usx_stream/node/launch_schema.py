"""The launch-file schema: every key of every table, with its type, default, range and what it does.

Parsing and validation live in :mod:`.launch`; this module is the table itself, so a reader sees every
tunable of the node in one place (``usx-stream run --help`` prints it through
:func:`~usx_stream.node.launch.describe_schema`). Allowed values of the compounding keys come from the
reconstructor's own constants, so every valid launch value runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..compound import config as _recon


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
        "path": Key("path", "", "sequence file (.igs.mha / .igs.nrrd), or a recording folder (record.dir), "
                    "for kind = replay"),
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
        "points_device": Key("str", "auto", "where the points of a bone channel compounded with the torch backend "
                             "are extracted: compound (on the compounding device; only the points come back), "
                             "host (the channel is copied back first), auto (compound on CUDA, host on a CPU, "
                             "where the copy is ~2x faster)", choices=("auto", "compound", "host")),
        "min_points": Key("int", 50, "fewest points per level sent to completion", lo=0),
        "split_max_radius_mm": Key("float", 80.0, "farthest a point may lie from its level's axis, mm", gt=0),
        "landmarks_mm": Key("points", {}, "fallback level centres in Reference, mm: L1 = [x, y, z] ..."),
        "cranial_axis": Key("floats", [], "cranial direction in Reference (e.g. [0, 0, 1] when Reference is RAS or "
                            "LPS): lets a level be completed when it is the only one known (an X-ray or landmarks "
                            "of one vertebra); empty: two or more level centres are needed", length=3),
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
        "fit_body": Key("bool", True, "fit each completed body to its X-ray silhouette (height along the cranial "
                        "axis, depth about the posterior wall)"),
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
        "uncertainty": Key("str", "error_head", "per-vertex uncertainty_mm on each surface: error_head (the expected "
                           "distance to the true surface from the weights' learned error head, "
                           "usx_stream.completion.error_head), latent (spread of uncertainty_samples latent "
                           "draws) or off", choices=("error_head", "latent", "off")),
        "error_head": Key("path", "", "error head of the multimodal weights (empty: the packaged head of the "
                          "packaged weights; custom weights without a head publish no uncertainty)"),
        "error_head_us_only": Key("path", "", "error head of the US-only weights (empty: as error_head)"),
        "uncertainty_samples": Key("int", 0, "uncertainty = latent: K latent draws decoded with the mean completion "
                                   "(0 otherwise)", lo=0, hi=32),
        "uncertainty_period_s": Key("float", 2.0, "uncertainty = latent, on a CPU: time between runs, s (the last spread is "
                                    "reused between them; 0: every update); a GPU runs it every update", lo=0),
        "reuse_change": Key("float", 0.03, "a level keeps its last surface while at most this fraction of its "
                            "bone-point cells changed since that surface was completed (and its axes and "
                            "centroids moved within reuse_rotation_deg / reuse_shift_mm); 0: complete every "
                            "level every update (usx_stream.node.reuse)", lo=0, hi=0.5),
        "reuse_rotation_deg": Key("float", 1.0, "largest change of a level's canonical axes, degrees, for "
                                  "keeping its last surface", lo=0),
        "reuse_shift_mm": Key("float", 0.5, "largest move of a level's bone-point or labelmap centroid, mm, "
                              "for keeping its last surface", lo=0),
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
                       "scikit-image release the GIL in their loops; backend torch on CUDA meshes them one "
                       "after another)", lo=1, hi=8),
        "backend": Key("str", "auto", "distance-field meshing: scipy (numpy/scipy/scikit-image) or torch (the same "
                       "algorithm in pure torch, on surface.device; auto: torch on CUDA, scipy on a CPU)",
                       choices=("auto", "scipy", "torch")),
        "device": Key("str", "auto", "torch device for backend = torch (auto: CUDA when present)",
                      choices=("auto", "cpu", "cuda")),
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
