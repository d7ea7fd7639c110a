"""compute XrayToReference from fiducial pairs

Reads a C-arm geometry (intrinsics: source-to-detector distance, pixel size, principal point) and at
least 4 fiducial pairs, fits the C-arm pose XrayToReference, prints the residual error and writes the
geometry with the new pose.

Pairs of two kinds (one kind per file):
  3D-2D  fiducial in Reference (mm, e.g. touched with a tracked pointer) and its pixel in the X-ray
         (u = column, v = row, pixel centres at integers): perspective-n-point with the file's
         intrinsics; the residual is the RMS reprojection error in pixels and in mm at the isocentre.
  3D-3D  fiducial in Reference and in the Xray (source) frame, mm: rigid fit (Kabsch); the residual
         is the RMS 3D distance in mm.

CSV: a header row, then one fiducial per row; columns ref_x, ref_y, ref_z and either u, v or xray_x,
xray_y, xray_z; an optional name column. Lines starting with # are comments.
    name,ref_x,ref_y,ref_z,u,v
    F1,-12.5,40.0,31.2,198.4,120.7
JSON: {"pairs": [{"name": "F1", "reference_mm": [x, y, z], "pixel_uv": [u, v]}, ...]} (or
"xray_mm": [x, y, z] instead of "pixel_uv"); a top-level list of such objects also works.

The output keeps every field of the input geometry except xray_to_reference and records the residual
under "_calibration". Fiducials should spread in 3D (not coplanar) and over the image; a warning says
when they are nearly coplanar. Exit status 1 when the residual exceeds --max-rms-mm (default 2 mm) and 2 for
unusable input, a pixel off the detector included (nothing is written either way).

examples:
  usx-stream calibrate-xray --geometry calibration/sim_carm.json --pairs fiducials.csv --out carm_or1.json
  usx-stream calibrate-xray --geometry calibration/sim_carm.json --pairs fiducials.json \\
      --out carm_or1.json --max-rms-mm 1.0
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._types import positive_float

log = logging.getLogger(__name__)

# A pose this far off moves the X-ray's vertebral bodies by more than the completion's own error (~2 mm): a
# good fiducial calibration fits to well under 1 mm (the example pairs: 0.07 mm); a larger residual means
# pairs in the wrong order, a fiducial mistaken for another, or the wrong geometry file.
MAX_RMS_MM = 2.0


@dataclass
class FiducialPairs:
    """Fiducial pairs read from a file; exactly one of ``pixels_uv`` / ``points_xray_mm`` is set."""

    names: list[str]
    points_ref_mm: np.ndarray
    pixels_uv: np.ndarray | None
    points_xray_mm: np.ndarray | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--geometry", required=True, help="C-arm geometry JSON (intrinsics; pose = prior)")
    parser.add_argument("--pairs", required=True, help="fiducial pairs, .csv or .json (see above)")
    parser.add_argument("--out", required=True, help="geometry JSON to write with the fitted XrayToReference")
    parser.add_argument("--no-prior", action="store_true",
                        help="3D-2D: do not start the fit from the input geometry's pose")
    parser.add_argument("--max-rms-mm", type=positive_float, default=MAX_RMS_MM, metavar="MM",
                        help="fail (exit 1, write nothing) when the RMS residual in mm exceeds this (default "
                             f"{MAX_RMS_MM:g}; 'inf' writes whatever the fit)")


def _row_values(row: dict, keys: tuple[str, ...], where: str) -> list[float]:
    out = []
    for k in keys:
        text = (row.get(k) or "").strip()
        try:
            out.append(float(text))
        except ValueError as e:
            raise ValueError(f"{where}: column {k!r} is not a number: {text!r}") from e
    return out


def _read_csv(path: Path) -> list[dict]:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    fields = [f.strip() for f in (reader.fieldnames or [])]
    reader.fieldnames = fields
    missing = [k for k in ("ref_x", "ref_y", "ref_z") if k not in fields]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (header: {fields})")
    if {"u", "v"} <= set(fields) and {"xray_x", "xray_y", "xray_z"} <= set(fields):
        raise ValueError(f"{path}: has both u,v and xray_x,xray_y,xray_z columns; use one kind of pair per file")
    kind = ("u", "v") if {"u", "v"} <= set(fields) else ("xray_x", "xray_y", "xray_z")
    if not set(kind) <= set(fields):
        raise ValueError(f"{path}: expected columns u,v (3D-2D) or xray_x,xray_y,xray_z (3D-3D); header: {fields}")
    rows = []
    for n, row in enumerate(reader, start=1):
        where = f"{path} row {n}"
        ref = _row_values(row, ("ref_x", "ref_y", "ref_z"), where)
        other = _row_values(row, kind, where)
        key = "pixel_uv" if len(kind) == 2 else "xray_mm"
        rows.append({"name": (row.get("name") or f"#{n}").strip(), "reference_mm": ref, key: other})
    return rows


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    pairs = data.get("pairs") if isinstance(data, dict) else data
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        raise ValueError(f"{path}: expected {{'pairs': [{{...}}, ...]}} or a list of objects")
    return pairs


def load_fiducial_pairs(path: str | Path) -> FiducialPairs:
    """Read 3D-2D or 3D-3D fiducial pairs from ``.csv`` or ``.json`` (formats in the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"--pairs: expected a .csv or .json file, got {path.name!r}")
    rows = _read_csv(path) if suffix == ".csv" else _read_json(path)
    if not rows:
        raise ValueError(f"{path}: no fiducial pairs found")
    kinds = {("pixel_uv" in r, "xray_mm" in r) for r in rows}
    if kinds not in ({(True, False)}, {(False, True)}):
        raise ValueError(f"{path}: every pair needs 'reference_mm' and exactly one of 'pixel_uv' or 'xray_mm', "
                         f"the same in all pairs")
    key = "pixel_uv" if (True, False) in kinds else "xray_mm"
    for n, r in enumerate(rows):
        if "reference_mm" not in r:
            raise ValueError(f"{path}: pair {n} has no 'reference_mm'")
    try:
        ref = np.array([r["reference_mm"] for r in rows], dtype=np.float64)
        other = np.array([r[key] for r in rows], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: a coordinate is not a number or has the wrong length ({e})") from e
    names = [str(r.get("name", f"#{n + 1}")) for n, r in enumerate(rows)]
    return FiducialPairs(names, ref, other if key == "pixel_uv" else None, other if key == "xray_mm" else None)


def _kept_notes(path: Path) -> dict:
    """The ``_``-prefixed notes of the input geometry, except those about the pose being replaced."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k[1:]: v for k, v in data.items() if k.startswith("_") and k not in ("_pose", "_calibration")}


def _check_on_detector(pairs: FiducialPairs, detector_shape, where) -> None:
    """A fiducial pixel off the detector cannot have been seen there: a typo, or columns and rows swapped."""
    rows, cols = int(detector_shape[0]), int(detector_shape[1])
    for name, (u, v) in zip(pairs.names, pairs.pixels_uv):
        if not (-0.5 <= u <= cols - 0.5 and -0.5 <= v <= rows - 0.5):
            raise ValueError(f"{where}: fiducial {name}: pixel (u {u:g}, v {v:g}) is off the detector's "
                             f"{cols} columns x {rows} rows (u = column, v = row)")


def run(args: argparse.Namespace) -> int:
    try:
        return _calibrate(args)
    except (OSError, ValueError) as e:
        # Bad input files are the user's to fix: one line naming the problem, not a traceback.
        print(f"usx-stream calibrate-xray: error: {e}", file=sys.stderr, flush=True)
        return 2


def _calibrate(args: argparse.Namespace) -> int:
    from ..xray.calibrate import calibrate_3d3d, calibrate_pnp
    from ..xray.geometry import load_carm_geometry, save_carm_geometry

    geometry = load_carm_geometry(args.geometry)
    pairs = load_fiducial_pairs(args.pairs)
    if pairs.pixels_uv is not None:
        _check_on_detector(pairs, geometry.detector_shape, args.pairs)
        result = calibrate_pnp(pairs.points_ref_mm, pairs.pixels_uv, geometry, use_prior=not args.no_prior)
    else:
        result = calibrate_3d3d(pairs.points_xray_mm, pairs.points_ref_mm)
    print(result.summary(pairs.names), flush=True)
    if result.rms_mm > args.max_rms_mm:
        print(f"RMS residual {result.rms_mm:.3f} mm exceeds --max-rms-mm {args.max_rms_mm:g}: {args.out} not written "
              f"(pairs in the wrong order, a fiducial mistaken for another, or another C-arm's geometry?)", flush=True)
        return 1
    notes = _kept_notes(Path(args.geometry))
    notes["calibration"] = {"method": result.method, "pairs": str(args.pairs), "fiducials": len(pairs.names),
                             "rms_px": result.rms_px, "rms_mm": result.rms_mm, "warnings": list(result.warnings)}
    out = save_carm_geometry(result.apply_to(geometry), args.out, notes=notes)
    print(f"wrote {out}", flush=True)
    return 0
