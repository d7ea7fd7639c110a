"""OpenIGTLink ingest benchmark: 820x616 uint8 IMAGE frames at 60 fps over loopback.

One sender (our :class:`~usx_stream.igtl.endpoints.Server`, paced at ``--fps``) streams the same frames to
two receivers in the same run, each in its own process:

- ours: :class:`~usx_stream.igtl.endpoints.Client`, consumer reads with ``get()``;
- baseline: pyigtl's ``OpenIGTLinkClient`` with ``wait_for_message`` (its documented use).

They connect in ``--receivers`` order. A broadcast hands every connection but the last to its writer
thread and may write to the last one from the sending thread, so by default ours goes through a writer
thread (the slower path) and pyigtl gets the direct write.

Each frame carries its sequence number in its first 8 pixels and its send time in the header timestamp.
Reported per receiver: frames received / lost / out of order, and transport latency (consumer receive
time minus send time, same clock) p50 / p95 / p99 / max in ms, plus the ratio baseline / ours.

Usage::

    python benchmarks/bench_igtl.py                 # 60 s
    python benchmarks/bench_igtl.py --duration 20 --json bench_out/igtl.json
    python benchmarks/bench_igtl.py --pin 0,1,0     # sender on CPU 0, ours on 1, pyigtl on 0
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import threading
import time
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 820, 616
END_DEVICE = "BenchEnd"


def _frame_index(pixels: np.ndarray) -> int:
    return int(np.frombuffer(np.ascontiguousarray(pixels).reshape(-1)[:8].tobytes(), "<u8")[0])


def _pin(cpu: int | None) -> None:
    """Keep this process (threads started from now on) on one CPU; None leaves scheduling alone."""
    if cpu is not None:
        import os

        os.sched_setaffinity(0, {cpu})


def run_ours(port: int, results, ready, cpu: int | None = None) -> None:
    _pin(cpu)
    from usx_stream.igtl.endpoints import Client

    client = Client("127.0.0.1", port).start()
    client.wait_connected(30)
    ready.set()
    indices, latencies = [], []
    while True:
        msg = client.get(timeout=30)
        now = time.time()
        if msg is None or msg.device_name == END_DEVICE:
            break
        if msg.type == "IMAGE":
            indices.append(_frame_index(msg.content.voxels))
            latencies.append(now - msg.timestamp)
    stats = client.stats.snapshot()
    client.stop()
    results.put(("usx_stream", indices, latencies, stats))


def run_pyigtl(port: int, results, ready, cpu: int | None = None) -> None:
    _pin(cpu)
    import pyigtl

    client = pyigtl.OpenIGTLinkClient("127.0.0.1", port, start_now=True)
    while not client.is_connected():
        time.sleep(0.01)  # pyigtl offers no connect event
    ready.set()
    indices, latencies = [], []
    deadline = time.time() + 3600
    while time.time() < deadline:
        msg = client.wait_for_message("Image", timeout=0.5)
        now = time.time()
        if msg is not None:
            indices.append(_frame_index(msg.image))
            latencies.append(now - msg.timestamp)
        elif client.wait_for_message(END_DEVICE, timeout=0) is not None:
            break
    client.stop()
    results.put(("pyigtl", indices, latencies, {}))


def send(server, *, fps: float, duration_s: float) -> int:
    from usx_stream.igtl import ImageContent, Message

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (HEIGHT, WIDTH), dtype=np.uint8)
    n = int(round(fps * duration_s))
    stop = threading.Event()
    t0 = time.monotonic()
    for k in range(n):
        delay = t0 + k / fps - time.monotonic()
        if delay > 0:
            stop.wait(delay)  # pacing the producer, not a test wait
        pixels = base.copy()
        pixels.reshape(-1)[:8] = np.frombuffer(np.uint64(k).astype("<u8").tobytes(), np.uint8)
        server.broadcast(Message("IMAGE", "Image", ImageContent.from_2d(pixels, np.eye(4)), time.time()))
    return n


def summarize(name: str, indices: list[int], latencies: list[float], n_sent: int) -> dict:
    lat_ms = np.asarray(latencies) * 1e3
    unique = set(indices)
    return {
        "receiver": name, "sent": n_sent, "received": len(indices), "lost": n_sent - len(unique),
        "out_of_order": int(np.sum(np.diff(indices) <= 0)) if len(indices) > 1 else 0,
        "latency_ms": {q: float(np.percentile(lat_ms, p)) if lat_ms.size else None
                       for q, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
    }


def print_table(rows: dict, args, crc_backend: str, server_stats: dict, host: dict) -> None:
    from usx_stream.hostinfo import host_line

    print(f"OpenIGTLink ingest: {WIDTH}x{HEIGHT} uint8 at {args.fps:g} fps for {args.duration:g} s, loopback, "
          f"CRC64 backend {crc_backend}; sender dropped {server_stats.get('dropped_outbound', 0)} messages")
    print(f"host: {host_line(host)} (at the start)")
    print(f"{'receiver':12s} {'sent':>6s} {'recv':>6s} {'lost':>6s} {'ooo':>4s} {'p50 ms':>8s} {'p95 ms':>8s} "
          f"{'p99 ms':>8s} {'max ms':>8s}")
    for r in rows.values():
        lat = r["latency_ms"]
        print(f"{r['receiver']:12s} {r['sent']:6d} {r['received']:6d} {r['lost']:6d} {r['out_of_order']:4d} "
              + " ".join(f"{lat[q]:8.2f}" if lat[q] is not None else f"{'-':>8s}" for q in ("p50", "p95", "p99", "max")))
    ours, base = (rows[n]["latency_ms"] if n in rows else {} for n in ("usx_stream", "pyigtl"))
    if ours.get("p50") and base.get("p50"):
        print(f"ratio pyigtl / usx_stream: p50 {base['p50'] / ours['p50']:.1f}x, p99 {base['p99'] / ours['p99']:.1f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of streaming (default: 60)")
    parser.add_argument("--fps", type=float, default=60.0, help="frames per second (default: 60)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--receivers", default="usx_stream,pyigtl",
                        help="comma-separated receivers to run, in connection order (default: %(default)s; "
                             "the last one may be written to from the sending thread, the others by writer "
                             "threads)")
    parser.add_argument("--pin", default=None, metavar="SENDER_CPU,RECEIVER_CPU[,...]",
                        help="pin the sender, then each receiver (in --receivers order; the last CPU serves the "
                             "rest) to CPUs, e.g. 0,1: models a sender on another machine, as PlusServer "
                             "usually is, instead of processes the scheduler moves onto one CPU (default: none)")
    args = parser.parse_args(argv)
    try:
        cpus = [] if args.pin is None else [int(c) for c in args.pin.split(",")]
        if args.pin is not None and len(cpus) < 2:
            raise ValueError
    except ValueError:
        parser.error(f"--pin: expected SENDER_CPU,RECEIVER_CPU[,...], got {args.pin!r}")
    _pin(cpus[0] if cpus else None)  # before the server starts its threads, which inherit the affinity

    from usx_stream.igtl.endpoints import Server
    from usx_stream.igtl.crc import BACKEND
    from usx_stream.hostinfo import describe_host

    host = describe_host()

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    server = Server(port=0).start()
    procs = []
    names = [n.strip() for n in args.receivers.split(",") if n.strip()]
    targets = {"usx_stream": run_ours, "pyigtl": run_pyigtl}
    unknown = set(names) - set(targets)
    if unknown or not names:
        parser.error(f"--receivers: expected some of {sorted(targets)}, got {args.receivers!r}")
    for k, name in enumerate(names, start=1):
        # One at a time, so that the server's connection order is the --receivers order: a broadcast may
        # write to its last connection from the sending thread and hands the others to writer threads.
        ready = ctx.Event()
        cpu = cpus[min(k, len(cpus) - 1)] if cpus else None
        p = ctx.Process(target=targets[name], args=(server.port, results, ready, cpu), daemon=True)
        p.start()
        procs.append(p)
        assert ready.wait(60) and server.wait_for_clients(k, 30), f"receiver {name} did not connect"
    n_sent = send(server, fps=args.fps, duration_s=args.duration)
    from usx_stream.igtl import Message

    threading.Event().wait(1.0)  # let the last frames drain before the end marker
    server.broadcast(Message("STRING", END_DEVICE, "end", time.time()))
    rows = {}
    for _ in procs:
        name, indices, latencies, _stats = results.get(timeout=120)
        rows[name] = summarize(name, indices, latencies, n_sent)
    for p in procs:
        p.join(timeout=10)
    server_stats = server.stats.snapshot()
    server.stop()

    print_table(rows, args, BACKEND, server_stats, host)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": rows,
                                         "sender": server_stats, "host": host}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
