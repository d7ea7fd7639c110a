"""connect to an OpenIGTLink server and print what arrives

Prints one line per received message (type, device, timestamp, a short summary of the content and
the metadata keys), or with --frames one line per TrackedFrame assembled with PLUS conventions.
Sends a version-2 hello at connect so that PlusServer answers in version 2; reconnects when the
server goes away. Stops after --count messages, after --duration seconds, or on Ctrl-C, then prints
the transport counters (received, rejected by reason, dropped, reconnects).

examples:
  usx-stream listen --host 127.0.0.1 --port 18944
  usx-stream listen --port 18944 --frames --count 100
  usx-stream listen --port 18945 --duration 10      # e.g. watch surfaces published by the node
"""

from __future__ import annotations

import argparse
import signal
import threading
import time

import numpy as np

from ._types import non_negative, tcp_port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    parser.add_argument("--port", type=tcp_port(allow_zero=False), default=18944,
                        help="server port (default: %(default)s)")
    parser.add_argument("--frames", action="store_true", help="print TrackedFrames instead of messages")
    parser.add_argument("--image-device", default="Image_Reference",
                        help="PLUS image device name for --frames (default: %(default)s)")
    parser.add_argument("--count", type=non_negative(int), default=0, help="stop after N messages/frames (0: no limit)")
    parser.add_argument("--duration", type=non_negative(float), default=0.0,
                        help="stop after S seconds (0: no limit)")


def describe(msg) -> str:
    """One-line summary of a message's content."""
    c = msg.content
    if msg.type == "IMAGE":
        t = np.round(c.ijk_to_world[:3, 3], 2).tolist()
        text = f"{c.voxels.shape} {c.voxels.dtype} spacing {np.round(c.spacing, 4).tolist()} origin {t}"
    elif msg.type == "TRANSFORM":
        text = f"translation {np.round(c[:3, 3], 3).tolist()}"
    elif msg.type == "STATUS":
        text = f"code {c.code} {c.error_name} {c.message!r}"
    elif msg.type == "STRING":
        text = repr(c[:80])
    elif msg.type == "POINT":
        text = f"{len(c)} points"
    elif msg.type == "POLYDATA":
        text = f"{len(c.points)} points, {c.polygons.size} polygon ints, {len(c.attributes)} attributes"
    else:
        text = ""
    meta = f" meta[{', '.join(sorted(msg.metadata))}]" if msg.metadata else ""
    return f"{msg.type:9s} {msg.device_name:20s} t={msg.timestamp:.6f} v{msg.header_version} {text}{meta}"


def _frame_line(item) -> str:
    if hasattr(item, "transforms"):
        names = ", ".join(f"{k}{'' if item.transform_status.get(k, True) else '(INVALID)'}" for k in item.transforms)
        return f"frame {item.index} t={item.timestamp:.6f} {item.pixels.shape} {item.pixels.dtype} [{names}]"
    parts = [f"{name} {getattr(item, name).shape}" for name in ("pixels", "labelmap") if getattr(item, name) is not None]
    return f"xray t={item.timestamp:.6f} {', '.join(parts)}"


def _interrupt(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the clean shutdown short
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from ..igtl.endpoints import Client, hello_message
    from ..igtl.receiver import PlusReceiver, ReceiverConfig

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` ends like Ctrl-C: clean close and counters
    client = Client(args.host, args.port, hello=hello_message()).start()
    receiver = PlusReceiver(ReceiverConfig(image_device=args.image_device)) if args.frames else None
    print(f"listening to {args.host}:{args.port}; Ctrl-C stops", flush=True)
    n, t_end = 0, time.monotonic() + args.duration if args.duration > 0 else float("inf")
    try:
        while (not args.count or n < args.count) and time.monotonic() < t_end:
            msg = client.get(timeout=0.05)
            if receiver is None:
                if msg is not None:
                    print(describe(msg), flush=True)
                    n += 1
                continue
            for item in receiver.poll() if msg is None else receiver.feed(msg):
                print(_frame_line(item), flush=True)
                n += 1
    except KeyboardInterrupt:
        pass
    finally:
        client.stop()
    print(f"stats: {client.stats.snapshot()}", flush=True)
    return 0
