"""End-to-end latency of the node: newest frame received -> completed surface on the wire.

A simulated session is replayed in a loop over OpenIGTLink at 30 fps (PlusServer-like server on
127.0.0.1) into the node built from ``launch/latency_bench.toml``; a real OpenIGTLink client receives the
POLYDATA (the streaming itself is ``e2e_stream.py``, shared with ``gpu_check.py --end-to-end``). Every
10 s the script samples the source queue depth, drops and the windowed latency, so queue growth or drift
over the run shows. At the end it prints p50/p95/p99 with the stage breakdown and, as the
baseline measured in the same run, the cost of the straightforward update on the final volume (full
snapshot of every channel + open3d Poisson depth 8 meshing) against the node's own update.

    python benchmarks/bench_latency.py                    # 3 minutes (the figure we report)
    python benchmarks/bench_latency.py --duration 30      # quick look
    python benchmarks/bench_latency.py --json bench_out/latency.json
    python benchmarks/bench_latency.py --set completion.reuse_change=0   # every level completed every update

``end_to_end_completing`` is the latency of the updates that completed at least one level; the others
published surfaces kept by ``completion.reuse_change`` (``levels_completed`` / ``levels_reused`` count them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _baseline(node, engines_cfg) -> dict:
    """The naive update on the final volume: every channel snapshotted, Poisson depth 8 meshing."""
    from usx_stream.surface.mesh import mesh_points

    result = node.latest
    t = time.perf_counter()
    node.ingest.reconstructor.snapshot(fill_holes=False)
    snap_full = time.perf_counter() - t
    t = time.perf_counter()
    node.ingest.reconstructor.channel_volume("bone")
    snap_bone = time.perf_counter() - t
    clouds = list(result.points_ref_mm.values())
    t = time.perf_counter()
    for pts in clouds:
        mesh_points(pts, method="poisson", poisson_depth=8)
    poisson = time.perf_counter() - t
    t = time.perf_counter()
    s = engines_cfg.surface
    for pts in clouds:
        mesh_points(pts, method=s.method, triangle_budget=s.triangle_budget, grid_mm=s.grid_mm)
    ours = time.perf_counter() - t
    return {"snapshot_all_channels_ms": 1e3 * snap_full, "snapshot_bone_only_ms": 1e3 * snap_bone,
            "mesh_poisson8_ms": 1e3 * poisson, "mesh_ours_ms": 1e3 * ours, "levels": len(clouds),
            "baseline_over_ours": (snap_full + poisson) / max(snap_bone + ours, 1e-9)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of streaming (default 180)")
    ap.add_argument("--launch", default=str(REPO / "launch" / "latency_bench.toml"))
    ap.add_argument("--frames", type=int, default=240, help="frames in the looped simulated sweep")
    ap.add_argument("--json", default=None, help="write the report here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a launch key (repeatable), e.g. completion.reuse_change=0")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared streaming helper beside this file
    from e2e_stream import load_config, stream, summary
    from usx_stream.hostinfo import describe_host, host_line

    host = describe_host()
    print(f"host: {host_line(host)} (at the start)", flush=True)
    cfg = load_config(args.launch)
    if args.set:
        from usx_stream.commands.run import _overrides

        cfg = cfg.with_overrides(_overrides(args.set))
    out = Path(args.json).parent if args.json else REPO / "bench_out"
    run = stream(cfg, duration_s=args.duration, workdir=out / "latency_session", frames=args.frames,
                 at_end=lambda node: _baseline(node, node.cfg))
    common = summary(run)
    e2e = common["end_to_end_ms"]
    report = {
        "duration_s": args.duration, **{k: common[k] for k in ("frames_received", "frames_dropped", "updates",
                                                                "surfaces_received_by_client", "end_to_end_ms")},
        "budget_ms": 500.0, "p95_over_budget": (e2e.get("p95") or np.nan) / 500.0,
        **{k: common[k] for k in ("max_queue_depth", "e2e_p95_ms_quarter_vs_end", "rss_mb_per_min",
                                  "e2e_p95_ms_per_min", "levels_completed", "levels_reused",
                                  "end_to_end_completing_ms", "stages")},
        # why levels were completed again (node.reuse.MISS_REASONS): which tolerance to look at
        "reuse_misses": {k[len("reuse_miss_"):]: v for k, v in common["counters"].items() if k.startswith("reuse_miss_")},
        "baseline_same_run": run.at_end, "samples": run.samples,
        "engine": run.live.engines["multimodal"].describe(), "host": host,
    }
    stages = report["stages"]
    print(json.dumps({k: v for k, v in report.items() if k not in ("samples", "stages")}, indent=2, default=str))
    print("stage p50/p95 ms:", {k: (round(v["p50_ms"] or 0, 1), round(v["p95_ms"] or 0, 1)) for k, v in stages.items()})
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if run.live.node.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
