"""Simulate a phantom session and run it through the whole node (what `make demo` runs), or run the node
on an existing session folder (--session, written by `usx-stream simulate`), or on a session simulated
from a real spine (--spine, see `usx-stream simulate --help` for the placement).

Writes into OUT: session/ (PLUS sequence file, X-ray + labelmap, ground-truth meshes, calibration),
L1.ply … L5.ply (completed surfaces, Reference frame, mm), demo.png (completed surfaces over the ground
truth with the ultrasound bone points, the X-ray labelmap points and two image planes), demo_uncertainty.png
(completed surfaces coloured by their per-vertex uncertainty_mm; not written when they carry none),
report.json (per-level accuracy in mm and mean uncertainty for the multimodal model and the US-only
fallback; latency p50/p95/p99 with the stage breakdown), telemetry.json and recording/.

examples:
  usx-stream demo --out demo_out
  usx-stream demo --out /tmp/demo --seed 3 --frames 120
  usx-stream demo --session real_out --out /tmp/demo_real
  usx-stream demo --spine ../shared/data/vertebrae/verse_spines/Verse581 --out /tmp/demo_581
"""

from __future__ import annotations

import argparse
import json

from ._types import in_range, non_negative


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--launch", default=None, help="launch file (default: launch/demo.toml)")
    parser.add_argument("--seed", type=non_negative(int), default=None,
                        help="session seed (default: the launch file's)")
    parser.add_argument("--frames", type=in_range(int, 3), default=None,
                        help="number of simulated frames (at least one per sweep pass: 3)")
    parser.add_argument("--session", default=None, metavar="DIR",
                        help="stream this session folder (usx-stream simulate) instead of simulating one")
    from .simulate import add_spine_arguments

    add_spine_arguments(parser)


def run(args) -> int:
    from ..demo.run import run_demo

    report = run_demo(args.out, launch=args.launch, seed=args.seed, n_frames=args.frames, session=args.session,
                      spine=args.spine, labels=args.labels, scale=args.scale, frame=args.frame)
    print(f"wrote {args.out}/: " + ", ".join(report.pop("files")))
    summary = {lv: {f: round(m["body_assd_mm"], 2) for f, m in e.items()} for lv, e in report["levels"].items()}
    print("body ASSD (mm) per level:", json.dumps(summary))
    if not all(summary.values()):  # a level the node never completed: say what it was waiting for
        print("the node's last status:", report["node_status"])
    print("end-to-end latency (ms):", json.dumps({k: report["latency_ms"][k] for k in ("p50", "p95", "p99")}))
    print("surfaces received by the OpenIGTLink client:", json.dumps(report["surfaces_received_by_client"]))
    print("mean uncertainty_mm of the last surface the client decoded (mm):",
          json.dumps(report.get("uncertainty_received_by_client_mm", {})))
    return 0
