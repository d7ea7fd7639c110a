"""Generate paired US / X-ray / ground-truth completion data (HDF5).

Each vertebra gives one sample in its canonical model frame: the partial cloud an ultrasound sweep sees
(ray casting from posterior probe positions over the whole spine: neighbours occlude, incidence filter,
acoustic shadowing, optional beam noise), the lateral X-ray labelmap of its vertebral body back-projected
onto its mid-sagittal plane, and points sampled on the whole mesh. The file has the keys of the
US-X Complete code (incomplete_pcds, complete_pcds, labels, labelmaps, number_per_class).

Examples:
  usx-stream dataset --out train.h5 --procedural 400 --seed 1 --workers 2
  usx-stream dataset --out test.h5 --procedural 50 --seed 9001
  usx-stream dataset --out verse.h5 --meshes ../shared/data/vertebrae/verse_L1 --frame LPS --repeats 4
  usx-stream dataset --out vh.h5 --meshes ../shared/data/vertebrae/visible_human_male_L1-L5 --scale 1000
  usx-stream dataset --out ct.h5 --labelmaps segmentations/     # VerSe-style label volumes
  usx-stream dataset --out node.h5 --node-sessions 100 --seed 11  # the node's own inputs (datasets.node_sessions)
  usx-stream dataset --out ssm.h5 --ssm ssm.npz 200 --seed 3      # spines drawn from a shape model (ray cast)
  usx-stream dataset --out node_ssm.h5 --node-sessions 100 --ssm ssm.npz --or-variation   # ... through the node
  usx-stream dataset --out node_581.h5 --node-sessions 5 --spine ../shared/data/vertebrae/verse_spines/Verse581

Node sessions take their anatomy from --ssm FILE (a new draw per session), --spine PATH|ssm:FILE:SEED (the same
spine every session, new sweeps and X-rays) or a procedural spine; --or-variation draws, per session, what
differs between operating rooms (B-mode gain/depth/speckle/probe width, sweep coverage, tracking jitter,
labelmap dilation/erosion and missing levels, C-arm pose error; usx_stream.sim.or_variation).

Sharded over processes or machines: --shard I/N generates part I (0-based) of N, a contiguous range of the
spines / sessions / files with the random streams they have in the whole run; --merge joins the parts
(any order) into exactly the file the unsharded command writes, after checking they share the settings
and cover every item once:
  usx-stream dataset --out part0.h5 --procedural 400 --seed 1 --shard 0/2
  usx-stream dataset --out part1.h5 --procedural 400 --seed 1 --shard 1/2
  usx-stream dataset --merge train.h5 part0.h5 part1.h5

CT segmentations: one integer label per vertebra (--labels: VerSe 20..24 = L1..L5, TotalSegmentator v2
31..27 = L1..L5, or auto), NIfTI (RAS world) or NRRD /
MetaImage (LPS); each label is meshed in place, so the vertebrae occlude each other as in the patient.

User meshes: PLY/STL/OBJ, level in the file name (L1..L5, or VerSe segment_20..24), mm unless --scale.
They are aligned to the canonical vertebra frame automatically (registration to the mean vertebra of their
level) unless --frame states their patient-frame convention; a mesh that cannot be aligned is reported by
name and left out.
"""

from __future__ import annotations

import argparse
import os

from ._types import in_range, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output HDF5 file (required unless --merge)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--merge", nargs="+", metavar=("OUT", "PART"),
                     help="join the parts of a --shard generation: the merged file, then every part")
    src.add_argument("--procedural", type=int, metavar="N", help="number of procedural spines (5 vertebrae each)")
    src.add_argument("--node-sessions", type=int, metavar="N", dest="node_sessions",
                     help="number of simulated sessions run through the node's own ingest and update inputs "
                          "(5 vertebrae each, ~30 s CPU per session; see --launch)")
    parser.add_argument("--ssm", nargs="+", metavar=("FILE", "N"),
                        help="a shape model (usx-stream shape-model build): --ssm FILE N draws N spines "
                             "(ray-cast pairs); with --node-sessions, --ssm FILE gives each session a new draw")
    parser.add_argument("--spine", default=None, metavar="PATH|ssm:FILE:SEED",
                        help="--node-sessions: the one spine every session sweeps (real, or a fixed draw)")
    parser.add_argument("--or-variation", action="store_true", dest="or_variation",
                        help="--node-sessions: vary B-mode, sweep, tracking, labelmap and C-arm per session")
    src.add_argument("--meshes", metavar="DIR", help="folder of vertebra meshes (level in the file name)")
    src.add_argument("--labelmaps", metavar="DIR",
                     help="folder of multi-label CT segmentations (.nii/.nii.gz/.nrrd/.mha; see --labels)")
    parser.add_argument("--labels", choices=("auto", "verse", "totalsegmentator"), default="auto",
                        help="label set of --labelmaps or a --spine label volume: verse (20..24 = L1..L5), "
                             "totalsegmentator (v2: 31 = L1 .. 27 = L5) or auto (totalsegmentator when a label "
                             "above 28 is present; default)")
    parser.add_argument("--scale", type=positive_float, default=1.0,
                        help="multiply mesh coordinates (--meshes, a --spine folder) to get mm (default 1)")
    parser.add_argument("--frame", choices=("LPS", "RAS", "auto"), default=None,
                        help="patient-frame convention of the meshes (--meshes default and auto: align by "
                             "registration; a --spine folder: LPS by default, auto turns it to its own axes)")
    parser.add_argument("--repeats", type=positive_int, default=1, help="samples per user mesh (different sweeps)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same file)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)),
                        help="processes (default: all cores)")
    parser.add_argument("--noise-mm", type=float, default=0.0, help="SD of the beam-direction noise, mm")
    parser.add_argument("--tilt-deg", type=float, default=None, dest="tilt_deg",
                        help="largest random probe tilt about each axis, degrees (default 20)")
    parser.add_argument("--max-incidence-deg", type=float, default=None, dest="max_incidence_deg",
                        help="largest beam-to-normal angle that still echoes, degrees (default 70)")
    parser.add_argument("--lateral-offsets-mm", default=None, dest="lateral_offsets_mm",
                        help="comma-separated left-right offsets of the passes, mm, e.g. --lateral-offsets-mm=-22,0,22 (the default)")
    parser.add_argument("--variation", type=in_range(float, 0, 3), default=1.0,
                        help="procedural shape variation (1 = published)")
    parser.add_argument("--mesh-spacing", type=positive_float, default=1.5, dest="mesh_spacing",
                        help="grid spacing of the procedural meshes, mm (coarser is faster)")
    parser.add_argument("--launch", default=None,
                        help="--node-sessions: the launch file whose compounding, bone and X-ray settings "
                             "the node uses (default launch/demo.toml)")
    parser.add_argument("--complete-points", type=int, default=2048, dest="complete_points",
                        help="ground-truth points per vertebra (default %(default)s, what training uses; 16384 for "
                             "per-point error figures, where 2048 points leave a ~0.5 mm spacing floor)")
    parser.add_argument("--shard", metavar="I/N", help="generate only part I (0-based) of N (see --merge)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _sweep_options(args: argparse.Namespace) -> dict:
    """SweepConfig keywords from the command line (unset options keep SweepConfig's defaults)."""
    opts = {"noise_mm": args.noise_mm}
    if args.tilt_deg is not None:
        opts["tilt_deg"] = args.tilt_deg
    if args.max_incidence_deg is not None:
        opts["max_incidence_deg"] = args.max_incidence_deg
    if args.lateral_offsets_mm is not None:
        try:
            opts["lateral_offsets_mm"] = tuple(float(v) for v in args.lateral_offsets_mm.split(","))
        except ValueError:
            raise ValueError(f"--lateral-offsets-mm: expected comma-separated numbers, got "
                             f"{args.lateral_offsets_mm!r}") from None
    return opts


def run(args: argparse.Namespace) -> int:
    from ..datasets.pairs import PairConfig, generate
    from ..datasets.shards import parse_shard
    from ..errors import InputError
    from ..sim.visibility import SweepConfig

    if args.merge is not None:
        return _run_merge(args)
    if not args.out:
        raise InputError("--out: the output file is required")
    shard = None if args.shard is None else parse_shard(args.shard)
    if args.node_sessions is not None:
        return _run_node(args, shard)
    if args.spine is not None or args.or_variation:
        raise InputError("--spine and --or-variation apply to --node-sessions only")
    ssm = _ssm_count(args)
    if ssm is None and args.procedural is None and args.meshes is None and args.labelmaps is None:
        raise InputError("dataset: give one of --procedural N, --ssm FILE N, --node-sessions N, --meshes DIR, "
                         "--labelmaps DIR or --merge")
    try:
        cfg = PairConfig(sweep=SweepConfig(**_sweep_options(args)), variation=args.variation,
                         mesh_spacing_mm=args.mesh_spacing, complete_points=args.complete_points)
        report = generate(args.out, procedural=args.procedural, meshes=args.meshes, labelmaps=args.labelmaps,
                          ssm=ssm, seed=args.seed,
                          workers=args.workers, cfg=cfg, scale=args.scale,
                          frame=None if args.frame == "auto" else args.frame,
                          repeats=args.repeats, command=args.command_line,
                          progress=not args.no_progress, shard=shard, labels=args.labels)
    except ValueError as e:
        raise InputError(str(e)) from e
    return _print_report(report)


def _ssm_count(args: argparse.Namespace):
    """``--ssm FILE N`` -> (FILE, N); None without --ssm; InputError naming the value otherwise."""
    from ..errors import InputError

    if args.ssm is None:
        return None
    if args.procedural is not None or args.meshes is not None or args.labelmaps is not None:
        raise InputError("--ssm FILE N: give it alone, not with --procedural, --meshes or --labelmaps")
    if len(args.ssm) != 2 or not args.ssm[1].isdigit() or int(args.ssm[1]) < 1:
        raise InputError(f"--ssm: expected FILE N (N spines >= 1), got {' '.join(args.ssm)!r}")
    return args.ssm[0], int(args.ssm[1])


def _run_merge(args: argparse.Namespace) -> int:
    """``--merge OUT PART...``: InputError (one line, exit 2) for parts that do not make one generation."""
    from ..errors import InputError
    from ..train.data import merge_pairs, read_pairs

    if len(args.merge) < 2:
        raise InputError("--merge: expected OUT.h5 and at least one part file")
    if args.out or args.shard:
        raise InputError("--merge: --out and --shard do not apply (the merged file is the first argument)")
    out, parts = args.merge[0], args.merge[1:]
    path = merge_pairs(out, parts, command=args.command_line)
    print(f"wrote {path}: {len(read_pairs(path))} samples from {len(parts)} parts")
    return 0


def _run_node(args: argparse.Namespace, shard=None) -> int:
    from ..node.assemble import default_launch_dir
    from ..datasets.node_sessions import generate_node
    from ..errors import InputError

    spine = args.spine
    if args.ssm is not None:
        if len(args.ssm) != 1 or spine is not None:
            raise InputError(f"--node-sessions N --ssm FILE: expected one FILE and no --spine, got "
                             f"--ssm {' '.join(args.ssm)!r}" + (f" --spine {spine!r}" if spine else ""))
        spine = "ssm:" + args.ssm[0]
    variation = None
    if args.or_variation:
        from ..sim.or_variation import ORVariation

        variation = ORVariation()
    try:
        report = generate_node(args.out, sessions=args.node_sessions, seed=args.seed,
                               launch=args.launch or default_launch_dir() / "demo.toml", workers=args.workers,
                               command=args.command_line, progress=not args.no_progress,
                               shard=shard, spine=spine, variation=variation,
                               complete_points=args.complete_points,
                               spine_options={"labels": args.labels, "scale": args.scale, "frame": args.frame or "LPS"})
    except ValueError as e:
        raise InputError(str(e)) from e
    return _print_report(report)


def _print_report(report) -> int:
    levels = ", ".join(f"{k} {v}" for k, v in report.number_per_level.items())
    print(f"wrote {report.path}: {report.samples} samples ({levels}); skipped {len(report.skipped)}")
    for reason in report.skipped:
        print(f"  skipped {reason}")
    return 0
