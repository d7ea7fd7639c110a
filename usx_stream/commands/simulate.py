"""Write a simulated phantom session: tracked B-mode sequence, lateral X-ray + labelmap, ground truth.

A procedural lumbar spine (L1-L5, published morphometry, random variation, lordosis), a real one
(--spine: a folder of per-level meshes L1.ply .. L5.ply in place, or a CT label volume) or one drawn from
a shape model of real spines (--spine ssm:FILE[:SEED], FILE from usx-stream shape-model build), is swept with a
tracked linear probe (transverse, several cranio-caudal passes) and imaged once with a lateral C-arm.

A real spine is placed in Reference (x left, y posterior, z cranial; origin at the L3 body centre, or the
middle present level's) by a translation only: NIfTI volumes are read through their affine (RAS, turned
into LPS), meshes are taken as LPS unless --frame RAS, or turned to the spine's own axes with --frame auto
(cranial from L5 to L1, posterior towards the arches: for meshes in unknown axes). Axes that do not look
like the patient's are reported, never silently rotated. Missing levels are simulated as absent. Label
volumes: --labels verse (20..24 = L1..L5), totalsegmentator (v2: 31 = L1 .. 27 = L5) or auto
(totalsegmentator when a label above 28 is present, else verse).
Calibration comes from calibration/sim_probe_deviceset.xml (ImageToProbe) and calibration/sim_carm.json
(C-arm geometry). The same seed always gives the same files.

Written to DIR: sim_session.igs.mha (PLUS sequence: ProbeToTracker, ReferenceToTracker per frame),
sim_probe_deviceset.xml, sim_carm.json, xray.mha, xray_labelmap.mha (1..5 = L1..L5 bodies),
meshes/L?.ply and meshes/L?_body.ply (Reference frame, mm), bone_masks.npz, ground_truth.json.

examples:
  usx-stream simulate --out sim_out
  usx-stream simulate --out sim_out --seed 7 --frames 400 --passes 5
  usx-stream simulate --out sim_out --no-xray
  usx-stream simulate --out real_out --spine ../shared/data/vertebrae/verse_spines/Verse581
  usx-stream simulate --out vh_out --spine ../shared/data/vertebrae/visible_human_male_L1-L5 --scale 1000 --frame auto
  usx-stream simulate --out real_out --spine s0004_labels.nii.gz --labels auto
  usx-stream simulate --out ssm_out --spine ssm:ssm.npz:3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._types import in_range, non_negative, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    parser.add_argument("--seed", type=non_negative(int), default=0, help="random seed (default 0)")
    parser.add_argument("--frames", type=positive_int, default=240, help="number of B-mode frames (default 240)")
    parser.add_argument("--passes", type=positive_int, default=3, help="cranio-caudal passes of the sweep (default 3)")
    parser.add_argument("--lordosis", type=float, default=40.0, metavar="DEG",
                        help="mean L1-L5 lordosis in degrees (default 40)")
    parser.add_argument("--variation", type=in_range(float, 0, 3), default=1.0,
                        help="scale of the anatomical variation, 0 = mean spine (default 1)")
    parser.add_argument("--no-xray", action="store_true", help="skip the X-ray")
    add_spine_arguments(parser)


def add_spine_arguments(parser: argparse.ArgumentParser) -> None:
    """--spine, --labels, --scale, --frame (shared with ``usx-stream demo``)."""
    parser.add_argument("--spine", default=None, metavar="PATH|ssm:FILE[:SEED]",
                        help="a real spine: folder of L1..L5 meshes (.ply/.stl/.obj, in place, mm) or a CT label "
                             "volume (.nii/.nii.gz/.nrrd/.mha); or ssm:FILE[:SEED], a spine drawn from a shape "
                             "model (usx-stream shape-model build; SEED defaults to --seed); default: a procedural spine")
    parser.add_argument("--labels", choices=("auto", "verse", "totalsegmentator"), default="auto",
                        help="label set of a --spine label volume (default auto)")
    parser.add_argument("--scale", type=positive_float, default=1.0,
                        help="--spine meshes: factor to millimetres (default 1; 1000 for metres)")
    parser.add_argument("--frame", choices=("LPS", "RAS", "auto"), default="LPS",
                        help="--spine meshes: axes convention (default LPS; auto: turned to the spine's own axes, "
                             "for meshes in unknown axes; label volumes use their affine)")


def load_spine(args: argparse.Namespace):
    """The spine ``--spine`` names (None without it), placed in Reference (:mod:`usx_stream.sim.spine_spec`)."""
    from usx_stream.sim.spine_spec import load_spine as load

    return load(args.spine, seed=getattr(args, "seed", 0), labels=args.labels, scale=args.scale, frame=args.frame)


def run(args: argparse.Namespace) -> int:
    import time

    from usx_stream.errors import InputError
    from usx_stream.sim.session import simulate_session, write_session

    if args.frames < args.passes:
        raise InputError(f"--frames: need at least one frame per pass (--passes {args.passes}), got {args.frames}")
    t0 = time.perf_counter()
    spine = load_spine(args)
    session = simulate_session(args.seed, n_frames=args.frames, passes=args.passes, lordosis_deg=args.lordosis,
                               variation=args.variation, with_xray=not args.no_xray, spine=spine)
    files = write_session(session, args.out)
    elapsed = time.perf_counter() - t0
    n_bone = int(session.bone_masks.sum())
    if spine is not None:
        meta = spine.metadata
        chosen = f", {meta['label_set']} labels ({meta['labels_chosen_by']})" if "label_set" in meta else ""
        print(f"spine {meta['source']}{chosen}: levels {meta['levels']}"
              + (f", absent {meta['missing_levels']}" if meta["missing_levels"] else "")
              + f"; Reference origin at the {meta['reference_origin']}")
        if meta["axes_warning"]:
            print(f"  warning: axes not the patient axes: {meta['axes_warning']}")
    print(f"simulated seed {session.seed}: {len(session.frames)} frames "
          f"{session.frames[0].pixels.shape[1]}x{session.frames[0].pixels.shape[0]} px, "
          f"lordosis {session.spine.lordosis_deg:.1f} deg, {n_bone} ground-truth bone-echo pixels, "
          f"{elapsed:.1f} s")
    for role, path in files.items():
        print(f"  {role:<16} {path}  ({path.stat().st_size / 1024:.0f} KiB)")
    return 0
