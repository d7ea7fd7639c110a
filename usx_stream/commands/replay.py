"""serve a PLUS sequence file over OpenIGTLink like PlusServer

Streams every frame of a PLUS sequence file (.igs.mha / .igs.nrrd), or of a node's recording folder (its
sequence chunks inputs_NNNN.igs.mha, one after the other), to every connected client as
PlusServer does: IMAGE "Image_Reference" with ImageToReference embedded (when --config gives the
ImageToProbe calibration; otherwise "Image_Image"), then one TRANSFORM per tracked transform, all with
the frame's timestamp; version-2 clients also get TransformStatus and the frame fields as metadata.
Binds 127.0.0.1 unless --host says otherwise.

By default the first frame goes out once a client has connected (a recording lasts seconds: a client
that connects later would get nothing); --no-wait streams at once, --wait-clients N waits for N.
The whole file is read once before serving, so a truncated or malformed file is reported at start.
--loop repeats the file with ever-increasing timestamps: a stand-in PlusServer for live testing of a
node or of 3D Slicer's OpenIGTLinkIF module.

examples:
  usx-stream replay ../shared/data/plus/SpinePhantomFreehand.igs.mha --port 18944
  usx-stream replay session.igs.mha --rate 60 --loop --no-wait  # live-like: 60 frames/s, forever
  usx-stream replay session.igs.mha --rate 0 --wait-clients 2   # as fast as possible, once two are in
  usx-stream replay scan.igs.mha --config PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml
  usx-stream replay recordings/phantom --config YOUR_DEVICESET.xml   # a session the node recorded

exit status: 0 when the file was sent (or on Ctrl-C), 1 when streaming failed, 2 for bad input.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from ._types import non_negative, positive_float, tcp_port

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="PLUS sequence file (.igs.mha, .igs.nrrd) or a node recording folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=tcp_port(allow_zero=True), default=18944,
                        help="TCP port, 0 = any free one (default: %(default)s)")
    parser.add_argument("--rate", type=non_negative(float), default=None,
                        help="frames per second; 0 = as fast as possible (default: the recorded rate)")
    parser.add_argument("--speed", type=positive_float, default=1.0,
                        help="real-time factor when following the recorded rate (default: %(default)s)")
    parser.add_argument("--loop", action="store_true",
                        help="repeat the file until interrupted, timestamps increasing as in a live stream "
                             "(for live testing of a node or Slicer; add --no-wait to stream before anyone connects)")
    parser.add_argument("--config", default=None,
                        help="PLUS device set XML whose CoordinateDefinitions give ImageToProbe")
    wait = parser.add_mutually_exclusive_group()
    wait.add_argument("--wait-clients", type=non_negative(int), default=1, metavar="N",
                      help="start streaming once N clients are connected (default: %(default)s)")
    wait.add_argument("--no-wait", dest="wait_clients", action="store_const", const=0,
                      help="stream at once, connected or not (a client that connects later joins mid-file)")
    parser.add_argument("--time-offset", type=float, default=0.0, metavar="S",
                        help="seconds added to every timestamp (default: 0)")


def _interrupt(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the clean shutdown short
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..sources.replay import check_sequence
    from ..sources.replay_server import ReplayServer
    from ._inputs import read_calibration, require_transform

    # Every input is read and checked before the port opens: a broken file fails here, not mid-stream.
    calibration = read_calibration(args.config) if args.config else None
    check = check_sequence(args.file)
    if calibration is not None:
        require_transform(check.first, calibration, "ImageToReference", config=args.config, sequence=args.file)
    server = ReplayServer(args.file, host=args.host, port=args.port, rate=args.rate, loop=args.loop,
                          calibration=calibration, min_clients=args.wait_clients, time_offset_s=args.time_offset,
                          speed=args.speed)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` ends the replay like Ctrl-C: clean close, summary
    try:
        server.start()
    except OSError as e:  # port taken, address not local, ...
        raise InputError(f"--host {args.host} --port {args.port}: cannot listen ({e.strerror or e})") from e
    waiting = (f"; waiting for {args.wait_clients} client{'s' if args.wait_clients > 1 else ''} "
               "before the first frame") if args.wait_clients else ""
    print(f"serving {args.file} ({check.frames} frames, {check.duration_s:.1f} s) on {args.host}:{server.port} "
          f"(rate: {'recorded' if args.rate is None else args.rate}, loop: {args.loop}){waiting}; Ctrl-C stops",
          flush=True)
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
    if server.error is not None:
        message = " ".join(str(server.error).split()) or type(server.error).__name__
        print(f"usx-stream replay: error: streaming stopped after {server.frames_sent} frames: {message}",
              file=sys.stderr, flush=True)
        return 1
    return 0
