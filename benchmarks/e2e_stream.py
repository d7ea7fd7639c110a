"""The simulated 30 fps stream through the whole node, shared by ``bench_latency.py`` and
``gpu_check.py --end-to-end``.

A simulated session is replayed in a loop over OpenIGTLink at the launch file's rate (PlusServer-like server
on 127.0.0.1) into a node built from the launch configuration; a real OpenIGTLink client receives the
POLYDATA. Every ``interval_s`` the node's source queue depth, drops, windowed end-to-end p95 and this
process's memory are sampled, so queue growth or drift over the run shows. The compute keys (``auto``) are
resolved once here (``usx_stream.node.compute``), so the engines and the node agree and the run can say what
it chose. Needs numpy, scipy and torch only (plus numba for the numba compounding backend).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "latency_bench.toml"
QUANTILES = ("p50", "p95", "p99")


def rss_mb() -> float:
    """Resident memory of this process, MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def sample(node, t0: float) -> dict:
    rep = node.telemetry.report()["stages"].get("end_to_end", {})
    stats = node.source.stats()
    return {"t_s": round(time.monotonic() - t0, 1), "frames": node.ingest.frames_received,
            "queued": len(node.source._items), "dropped": stats.get("dropped", 0),
            "updates": node.updates, "e2e_p95_ms": rep.get("p95_ms"), "rss_mb": round(rss_mb(), 1)}


def slope_per_min(samples: list[dict], key: str) -> float | None:
    """Least-squares slope of ``key`` over time, per minute, on the samples after the first quarter (the
    warm-up and the grid's first fill are not drift)."""
    pts = [(s["t_s"], s[key]) for s in samples[len(samples) // 4:] if s.get(key) is not None]
    if len(pts) < 3:
        return None
    t, v = np.array(pts, dtype=np.float64).T
    return float(np.polyfit(t / 60.0, v, 1)[0])


def load_config(launch: str | Path = LAUNCH, overrides: dict[str, Any] | None = None):
    """The launch configuration with ``{"stage.key": value}`` overrides applied."""
    from usx_stream.node.launch import load_launch

    cfg = load_launch(launch)
    return cfg.with_overrides(overrides) if overrides else cfg


@dataclass
class StreamRun:
    """What one streamed run leaves: the (stopped) simulation, its samples and the compute it chose."""

    cfg: Any
    choice: Any                        # usx_stream.node.compute.ComputeChoice
    live: Any                          # usx_stream.demo.live.LiveSimulation, stopped
    samples: list[dict] = field(default_factory=list)
    at_end: Any = None                 # what the ``at_end`` callback returned
    start_s: float = 0.0               # engines built + node warmed up, seconds
    stream_s: float = 0.0              # seconds actually streamed


def stream(cfg, *, duration_s: float, workdir: str | Path, frames: int = 240, interval_s: float | None = None,
           on_sample: Callable[[dict], None] | None = None, at_end: Callable[[Any], Any] | None = None) -> StreamRun:
    """Stream for ``duration_s`` seconds; ``at_end(node)`` runs after the last update, before the node stops.

    ``interval_s`` defaults to bench_latency's 10 s (2 s for runs under 30 s). The node's stop is
    guaranteed, also when it fails to start.
    """
    from usx_stream.demo.live import LiveSimulation
    from usx_stream.node.compute import choose_compute
    from usx_stream.sim.session import simulate_session, write_session

    choice = choose_compute(cfg)
    cfg = cfg.with_overrides(choice.overrides())
    interval_s = interval_s or (10.0 if duration_s >= 30 else 2.0)
    on_sample = on_sample or (lambda s: print(json.dumps(s), flush=True))
    session = simulate_session(int(cfg.source.seed), n_frames=frames)
    files = write_session(session, Path(workdir))
    t_start = time.perf_counter()
    live = LiveSimulation(cfg, session, files["sequence"], rate=cfg.source.fps, loop=True)
    run = StreamRun(cfg, choice, live)
    try:
        live.start()
        run.start_s = time.perf_counter() - t_start
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration_s and live.node.error is None:
            time.sleep(min(interval_s, max(duration_s - (time.monotonic() - t0), 0.05)))
            run.samples.append(sample(live.node, t0))
            on_sample(run.samples[-1])
        run.stream_s = time.monotonic() - t0
        live.server.stop()  # stop sending; let the node finish what it has
        live.node.wait_update(live.node.updates, timeout=30)
        if at_end is not None:
            run.at_end = at_end(live.node)
    finally:
        live.stop()
        if live.node is None:  # failed before the node took the publisher over
            live.publisher.close()
    return run


def stage_table(tel: dict) -> dict:
    """count, p50/p95/p99 and max per telemetry stage, ms."""
    keys = ("count", "p50_ms", "p95_ms", "p99_ms", "max_ms")
    return {k: {q: v.get(q) for q in keys} for k, v in tel["stages"].items()}


def _third_means(samples: list[dict], key: str) -> list[float | None]:
    n = len(samples) // 3
    if n < 1:
        return [None, None]
    out = []
    for part in (samples[:n], samples[-n:]):
        vals = [s[key] for s in part if s.get(key) is not None]
        out.append(float(np.mean(vals)) if vals else None)
    return out


def queue_growth(samples: list[dict]) -> dict:
    """First third against last third of the run: mean queue depth, frames dropped per second, e2e p95."""
    n = len(samples) // 3
    out = {"samples": len(samples), "queued_mean_first_vs_last_third": _third_means(samples, "queued"),
           "e2e_p95_ms_first_vs_last_third": _third_means(samples, "e2e_p95_ms"),
           "queued_per_min": slope_per_min(samples, "queued"),
           "dropped_per_min": slope_per_min(samples, "dropped")}
    if n >= 1:
        def rate(part, prev):
            dt = part[-1]["t_s"] - prev["t_s"]
            return (part[-1]["dropped"] - prev["dropped"]) / dt if dt > 0 else None
        zero = {"t_s": 0.0, "dropped": 0}
        out["dropped_per_s_first_vs_last_third"] = [rate(samples[:n], zero),
                                                    rate(samples[-n:], samples[-n - 1] if len(samples) > n else zero)]
    return out


def summary(run: StreamRun) -> dict:
    """The figures every streamed run reports (bench_latency's keys, plus frames compounded and counters)."""
    node = run.live.node
    tel = node.telemetry.report()
    stages = stage_table(tel)
    e2e = stages.get("end_to_end", {})
    samples = run.samples
    first, last = (samples[len(samples) // 4], samples[-1]) if samples else ({}, {})
    return {
        "frames_received": node.ingest.frames_received, "frames_compounded": node.ingest.frames_pasted,
        "frames_dropped": node.source.stats().get("dropped", 0), "updates": node.updates,
        "surfaces_received_by_client": run.live.received,
        "end_to_end_ms": {q: e2e.get(f"{q}_ms") for q in QUANTILES},
        "max_queue_depth": max((s["queued"] for s in samples), default=0),
        "e2e_p95_ms_quarter_vs_end": [first.get("e2e_p95_ms"), last.get("e2e_p95_ms")],
        "rss_mb_per_min": slope_per_min(samples, "rss_mb"),
        "e2e_p95_ms_per_min": slope_per_min(samples, "e2e_p95_ms"),
        "levels_completed": tel["counters"].get("levels_completed", 0),
        "levels_reused": tel["counters"].get("levels_reused", 0),
        "end_to_end_completing_ms": {q: stages.get("end_to_end_completing", {}).get(f"{q}_ms") for q in QUANTILES},
        "stages": stages, "counters": tel["counters"],
    }
