"""serve a PLUS sequence file over OpenIGTLink like PlusServer

Streams every frame of a PLUS sequence file (.igs.mha / .igs.nrrd) to every connected client as
PlusServer does: IMAGE "Image_Reference" with ImageToReference embedded (when --config gives the
ImageToProbe calibration; otherwise "Image_Image"), then one TRANSFORM per tracked transform, all with
the frame's timestamp; version-2 clients also get TransformStatus and the frame fields as metadata.
Binds 127.0.0.1 unless --host says otherwise.

examples:
  usx-stream replay ../shared/data/plus/SpinePhantomFreehand.igs.mha --port 18944
  usx-stream replay session.igs.mha --rate 60 --loop            # 60 frames/s, forever
  usx-stream replay session.igs.mha --rate 0 --wait-clients 1   # as fast as possible, once a client is in
  usx-stream replay scan.igs.mha --config PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="PLUS sequence file (.igs.mha, .igs.nrrd)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=18944, help="TCP port (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=None,
                        help="frames per second; 0 = as fast as possible (default: the recorded rate)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="real-time factor when following the recorded rate (default: %(default)s)")
    parser.add_argument("--loop", action="store_true", help="repeat the file until interrupted")
    parser.add_argument("--config", default=None,
                        help="PLUS device set XML whose CoordinateDefinitions give ImageToProbe")
    parser.add_argument("--wait-clients", type=int, default=0, metavar="N",
                        help="start streaming once N clients are connected (default: at once)")
    parser.add_argument("--time-offset", type=float, default=0.0, metavar="S",
                        help="seconds added to every timestamp (default: 0)")


def _interrupt(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the clean shutdown short
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from ..sources.replay_server import ReplayServer

    calibration = None
    if args.config:
        from ..io.plus_config import read_device_set

        calibration = read_device_set(args.config).transform_repository()
    server = ReplayServer(args.file, host=args.host, port=args.port, rate=args.rate, loop=args.loop,
                          calibration=calibration, min_clients=args.wait_clients, time_offset_s=args.time_offset,
                          speed=args.speed)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` ends the replay like Ctrl-C: clean close, summary
    server.start()
    print(f"serving {args.file} on {args.host}:{server.port} "
          f"(rate: {'recorded' if args.rate is None else args.rate}, loop: {args.loop}); Ctrl-C stops", flush=True)
    t0 = time.monotonic()
    try:
        while not server.done.wait(timeout=1.0):
            pass
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        server.stop()
    stats = server.server.stats.snapshot()
    print(f"sent {server.frames_sent} frames in {time.monotonic() - t0:.1f} s; "
          f"{stats.get('dropped_outbound', 0)} messages dropped for slow clients", flush=True)
    return 0
