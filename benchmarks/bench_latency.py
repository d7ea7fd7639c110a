"""End-to-end latency of the node: newest frame received -> completed surface on the wire.

A simulated session is replayed in a loop over OpenIGTLink at 30 fps (PlusServer-like server on
127.0.0.1) into the node built from ``launch/latency_bench.toml``; a real OpenIGTLink client receives the
POLYDATA. Every 10 s the script samples the source queue depth, drops and the windowed latency, so queue
growth or drift over the run shows. At the end it prints p50/p95/p99 with the stage breakdown and, as the
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
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    """Resident memory of this process, MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _sample(node, t0: float) -> dict:
    rep = node.telemetry.report()["stages"].get("end_to_end", {})
    stats = node.source.stats()
    return {"t_s": round(time.monotonic() - t0, 1), "frames": node.ingest.frames_received,
            "queued": len(node.source._items), "dropped": stats.get("dropped", 0),
            "updates": node.updates, "e2e_p95_ms": rep.get("p95_ms"), "rss_mb": round(_rss_mb(), 1)}


def _slope_per_min(samples: list[dict], key: str) -> float | None:
    """Least-squares slope of ``key`` over time, per minute, on the samples after the first quarter (the
    warm-up and the grid's first fill are not drift)."""
    pts = [(s["t_s"], s[key]) for s in samples[len(samples) // 4:] if s.get(key) is not None]
    if len(pts) < 3:
        return None
    t, v = np.array(pts, dtype=np.float64).T
    return float(np.polyfit(t / 60.0, v, 1)[0])


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

    from usx_stream.node.launch import load_launch
    from usx_stream.hostinfo import describe_host, host_line
    from usx_stream.demo.live import LiveSimulation
    from usx_stream.sim.session import simulate_session, write_session

    host = describe_host()
    print(f"host: {host_line(host)} (at the start)", flush=True)
    cfg = load_launch(args.launch)
    if args.set:
        from usx_stream.commands.run import _overrides

        cfg = cfg.with_overrides(_overrides(args.set))
    session = simulate_session(int(cfg.source.seed), n_frames=args.frames)
    out = Path(args.json).parent if args.json else REPO / "bench_out"
    files = write_session(session, out / "latency_session")
    live = LiveSimulation(cfg, session, files["sequence"], rate=cfg.source.fps, loop=True).start()
    t0 = time.monotonic()
    samples = []
    try:
        while time.monotonic() - t0 < args.duration and live.node.error is None:
            time.sleep(10.0 if args.duration >= 30 else 2.0)
            samples.append(_sample(live.node, t0))
            print(json.dumps(samples[-1]), flush=True)
        live.server.stop()  # stop sending; let the node finish what it has
        live.node.wait_update(live.node.updates, timeout=30)
        baseline = _baseline(live.node, cfg)
    finally:
        live.stop()
    tel = live.node.telemetry.report()
    stages = {k: {q: v.get(q) for q in ("count", "p50_ms", "p95_ms", "p99_ms", "max_ms")} for k, v in tel["stages"].items()}
    e2e = stages.get("end_to_end", {})
    first, last = samples[len(samples) // 4] if samples else {}, samples[-1] if samples else {}
    report = {
        "duration_s": args.duration, "frames_received": live.node.ingest.frames_received,
        "frames_dropped": live.node.source.stats().get("dropped", 0), "updates": live.node.updates,
        "surfaces_received_by_client": live.received,
        "end_to_end_ms": {q: e2e.get(f"{q}_ms") for q in ("p50", "p95", "p99")},
        "budget_ms": 500.0, "p95_over_budget": (e2e.get("p95_ms") or np.nan) / 500.0,
        "max_queue_depth": max((s["queued"] for s in samples), default=0),
        "e2e_p95_ms_quarter_vs_end": [first.get("e2e_p95_ms"), last.get("e2e_p95_ms")],
        "rss_mb_per_min": _slope_per_min(samples, "rss_mb"),
        "e2e_p95_ms_per_min": _slope_per_min(samples, "e2e_p95_ms"),
        "levels_completed": tel["counters"].get("levels_completed", 0),
        "levels_reused": tel["counters"].get("levels_reused", 0),
        "end_to_end_completing_ms": {q: stages.get("end_to_end_completing", {}).get(f"{q}_ms")
                                     for q in ("p50", "p95", "p99")},
        "stages": stages, "baseline_same_run": baseline, "samples": samples,
        "engine": live.engines["multimodal"].describe(), "host": host,
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("samples", "stages")}, indent=2, default=str))
    print("stage p50/p95 ms:", {k: (round(v["p50_ms"] or 0, 1), round(v["p95_ms"] or 0, 1)) for k, v in stages.items()})
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if live.node.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
