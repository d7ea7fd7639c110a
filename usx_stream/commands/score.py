"""score a recording's published surfaces against a truth (CT label volume or meshes), with registration

Takes the last surface the node published for each level in a recording (record.dir) and scores it
against the truth in mm: ASSD (mean symmetric surface distance), HD95 and F-scores at 1 and 2 mm, for the
whole vertebra, its body and its arch. Both surfaces are sampled evenly (8192 points, fixed seeds).

Truth: a folder of meshes L1.ply .. L5.ply (also .stl, .obj), or a CT label volume (.nii, .nii.gz,
.nrrd, .mha): --labels verse (20..24 = L1..L5), totalsegmentator (v2: 31 = L1 .. 27 = L5) or auto
(totalsegmentator when a label above 28 is present, else verse; the choice is reported).

Body: the truth centroid's plane normal to the posterior direction (towards the probe: the opposite of
the recorded frames' mean beam direction); points at or anterior of it are body, the rest arch; the
prediction is split by the truth's plane.

Registration of the truth frame to Reference (--register):
  none             the truth is already in Reference;
  fiducials:CSV    >= 3 paired points, columns name,ct_x,ct_y,ct_z,ref_x,ref_y,ref_z (rigid, RMS reported;
                   refused above --max-fiducial-rms-mm, the worst fiducial named);
  auto             from what ultrasound saw, never from the surfaces being scored: the recorded frames are
                   recompounded with the launch file's [compound]/[bone] tables, their bone points are
                   registered onto the truth's posterior (probe-facing) surface (24 principal-axis
                   starts, trimmed ICP); refused unless >= --min-inliers of the bone points lie within 3 mm
                   and their RMS is <= --max-rms-mm.

Frames that carry only ProbeToTracker/ReferenceToTracker need the probe calibration: --calibration
DEVICESET.xml, or a --launch file whose source.calibration names it.

examples:
  usx-stream score --recording recordings/phantom --truth ct/s0004_labels.nii.gz --register auto \\
      --calibration calibration/probe.xml --json score.json --png score.png
  usx-stream score --recording rec --truth meshes/ --register fiducials:pairs.csv --json score.json

exit status: 0 when scored, 2 for bad input or a registration that cannot be trusted (one line says why).
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..scoring.register import MAX_FIDUCIAL_RMS_MM, MAX_RMS_MM, MIN_INLIER_FRACTION
    from ._types import positive_float

    parser.add_argument("--recording", required=True, help="node recording folder (record.dir)")
    parser.add_argument("--truth", required=True, help="folder of L1..L5 meshes, or a CT label volume")
    parser.add_argument("--labels", choices=("auto", "verse", "totalsegmentator"), default="auto",
                        help="label set of a label volume (default: %(default)s)")
    parser.add_argument("--register", default="none", metavar="none|auto|fiducials:PAIRS.csv",
                        help="how the truth frame reaches Reference (default: %(default)s)")
    parser.add_argument("--launch", help="launch file: [compound], [bone], source.calibration (default: defaults)")
    parser.add_argument("--calibration", help="PLUS device set with ImageToProbe (overrides the launch file's)")
    parser.add_argument("--json", required=True, dest="json_out", help="output JSON")
    parser.add_argument("--png", help="output picture (PNG)")
    parser.add_argument("--min-inliers", type=float, default=MIN_INLIER_FRACTION, metavar="FRACTION",
                        help="auto: fewest bone points within 3 mm of the truth, fraction (default: %(default)s)")
    parser.add_argument("--max-rms-mm", type=float, default=MAX_RMS_MM,
                        help="auto: largest inlier RMS, mm (default: %(default)s)")
    parser.add_argument("--max-fiducial-rms-mm", type=positive_float, default=MAX_FIDUCIAL_RMS_MM,
                        help="fiducials: largest registration RMS, mm (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from ..node.launch import default_launch, load_launch
    from ..errors import InputError
    from ..scoring.score import score_recording
    from ._inputs import read_calibration

    if not 0 < args.min_inliers <= 1:
        raise InputError(f"--min-inliers: must be in (0, 1], got {args.min_inliers}")
    if not args.max_rms_mm > 0:
        raise InputError(f"--max-rms-mm: must be > 0, got {args.max_rms_mm}")
    launch = load_launch(args.launch) if args.launch else default_launch()
    device_set = args.calibration or launch.source.calibration or None
    calibration = read_calibration(device_set) if device_set else None
    result = score_recording(args.recording, args.truth, labels=args.labels, register=args.register,
                             launch=launch, calibration=calibration, min_inlier_fraction=args.min_inliers,
                             max_rms_mm=args.max_rms_mm, max_fiducial_rms_mm=args.max_fiducial_rms_mm)
    report = result.report
    with open(args.json_out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, allow_nan=True)
    r, t = report["registration"], report["truth"]
    labels = f", {t['labels']} labels ({t['labels_chosen_by']})" if t["labels"] else ""
    print(f"truth {t['kind']}{labels}: {', '.join(t['levels'])}")
    fit = "" if r["rms_mm"] is None else f": RMS {r['rms_mm']:.2f} mm" + (
        "" if r["inliers"] is None else f", {r['inliers']:.0%} inliers")
    print(f"registration {r['method']}{fit}")
    print("level   ASSD   HD95   body ASSD  body HD95  (mm)")
    for level, s in report["levels"].items():
        print(f"{level:5s} {s['assd_mm']:6.2f} {s['hd95_mm']:6.2f} {s['body_assd_mm']:10.2f} {s['body_hd95_mm']:10.2f}")
    if args.png:
        from ..scoring.report import write_png

        write_png(args.png, result.clouds, result.posterior_ref,
                  title=f"{args.recording} vs {args.truth} (registration {r['method']})")
        print(f"picture: {args.png}")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    print(f"scores: {args.json_out}")
    return 0
