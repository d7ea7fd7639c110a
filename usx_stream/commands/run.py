"""Run the streaming node from a launch file.

Connects to PlusServer (or replays a sequence file), compounds every frame, completes the vertebrae
every ``completion.period_s`` and publishes them to 3D Slicer (OpenIGTLink POLYDATA) and ZeroMQ.
Stops cleanly on Ctrl-C (SIGINT) or SIGTERM and writes the telemetry report.

examples:
  usx-stream run --launch launch/or_live_plus.toml
  usx-stream run --launch launch/phantom_session.toml --duration 600
  usx-stream run --launch launch/latency_bench.toml --set completion.period_s=0.25
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time

from ._types import positive_float

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--launch", required=True, help="launch file (TOML), see launch/")
    parser.add_argument("--duration", type=positive_float, default=None, help="stop after this many seconds")
    parser.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                        help="override a launch-file value (VALUE in TOML syntax, e.g. 0.25 or '\"cpu\"')")


def _overrides(items: list[str]) -> dict:
    import tomllib

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set: expected TABLE.KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare word is a string
    return out


def run(args) -> int:
    from ..node.assemble import build_node
    from ..node.launch import load_launch

    cfg = load_launch(args.launch)
    if args.set:
        cfg = cfg.with_overrides(_overrides(args.set))
    node = build_node(cfg)
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    node.start()
    print(f"usx-stream node running ({cfg.source.kind} source); Ctrl-C to stop", flush=True)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    # The text summary every telemetry.report_interval_s, in the log (the loop wakes every 0.2 s).
    interval = cfg.telemetry.report_interval_s if cfg.telemetry.enabled else None
    next_summary = None if interval is None else time.monotonic() + interval
    try:
        while not stop.wait(0.2):
            if next_summary is not None and time.monotonic() >= next_summary:
                log.info("telemetry (every %g s):\n%s", interval, node.telemetry.summary())
                next_summary = time.monotonic() + interval
            if node.error is not None or (deadline is not None and time.monotonic() > deadline):
                break
            if node.wait_source_done(0) and not cfg.source.loop:
                node.wait_update(node.updates, timeout=cfg.completion.period_s * 4)
                break
    finally:
        node.stop()
        for sig, handler in previous.items():  # a caller in the same process gets its own handlers back
            signal.signal(sig, handler)
    report = node.telemetry.report()
    if cfg.telemetry.enabled and cfg.telemetry.report_path:
        node.telemetry.write_json(cfg.telemetry.report_path)
    print(node.telemetry.summary())
    print(json.dumps({"updates": node.updates, "frames": node.ingest.frames_pasted,
                      "source": node.source.stats()}, default=str))
    if node.error is not None:
        log.error("node stopped on an error: %s", node.error)
        return 1
    return 0 if report is not None else 1
