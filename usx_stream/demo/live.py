"""A simulated session served live: PlusServer-like replay server -> node -> Slicer-like client.

Used by ``usx-stream demo`` and ``benchmarks/bench_latency.py``: everything crosses real sockets on
127.0.0.1 exactly as in the operating room (OpenIGTLink in, POLYDATA out), only the sender replays a
simulated recording and the receiver is a counting client instead of 3D Slicer.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..frames import LEVELS

log = logging.getLogger(__name__)


class SurfaceCounter:
    """An OpenIGTLink client on the publisher's port that counts POLYDATA per device name and keeps the
    newest surface of each (decoded), as a navigation display would."""

    def __init__(self, port: int) -> None:
        from ..igtl.endpoints import Client, hello_message

        self.received: dict[str, int] = {}
        self.latest: dict = {}            # device name -> Surface
        self.all_levels = threading.Event()
        self._client = Client("127.0.0.1", port, hello=hello_message())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="surface-counter", daemon=True)

    def start(self) -> "SurfaceCounter":
        self._client.start()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._client.get(timeout=0.1)
            if msg is not None and msg.type == "POLYDATA":
                from ..igtl.publisher import message_to_surface

                self.received[msg.device_name] = self.received.get(msg.device_name, 0) + 1
                self.latest[msg.device_name] = message_to_surface(msg)
                if all(f"{lv}_Completed" in self.latest for lv in LEVELS):
                    self.all_levels.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.stop()


class LiveSimulation:
    """Serve ``sequence`` (a simulated session written by ``write_session``) to a node built from ``cfg``.

    Parameters
    ----------
    cfg : LaunchConfig
    session : Session
        For the X-ray (handed to the node's cache, as the cached intraoperative X-ray) and calibration.
    sequence : path of the session's ``.igs.mha``
    engines : dict, optional
        Completion engines (default: the packaged networks per ``cfg.completion``).
    rate : float or None
        Replay rate: None = the recorded 30 fps, 0 = as fast as possible.
    loop : bool
        Replay the file again and again (long latency runs).
    """

    def __init__(self, cfg, session, sequence: str | Path, *, engines=None, rate: float | None = None,
                 loop: bool = False) -> None:
        from ..node.assemble import make_engines
        from ..igtl.publisher import SurfacePublisher
        from ..sources.replay_server import ReplayServer
        from ..xray.cache import XrayCache

        self.cfg = cfg
        self.xray = XrayCache(geometry=session.xray.geometry)
        self.xray.update_from_xray_image(session.xray)
        self.engines = engines if engines is not None else make_engines(cfg)
        self.server = ReplayServer(sequence, port=0, rate=rate, loop=loop, calibration=session.calibration,
                                   min_clients=1)
        self.publisher = SurfacePublisher(role="server", port=0)
        self.node = None
        self.counter: SurfaceCounter | None = None

    def start(self) -> "LiveSimulation":
        from ..node.assemble import build_node
        from ..sources.igtl_source import IgtlFrameSource

        self.server.start()   # binds its port: the node connects to the port it got
        self.publisher.start()
        self.counter = SurfaceCounter(self.publisher.port).start()
        source = IgtlFrameSource("127.0.0.1", self.server.port, queue_size=self.cfg.source.queue_frames)
        self.node = build_node(self.cfg, source=source, engines=self.engines, xray=self.xray,
                               publishers=[self.publisher])
        self.node.start()
        return self

    def run_to_end(self, *, final_update_timeout_s: float = 60.0) -> None:
        """Wait for the whole file to be received and compounded, then for one more published update."""
        self.node.wait_source_done()
        self.node.wait_update(self.node.updates, timeout=final_update_timeout_s)

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        self.server.stop()
        if self.counter is not None:
            self.counter.stop()

    @property
    def received(self) -> dict[str, int]:
        return {} if self.counter is None else dict(self.counter.received)

    def received_uncertainty(self) -> dict[str, float]:
        """Mean ``uncertainty_mm`` of the newest surface the client decoded, per device that carried it: the
        per-vertex values as they arrived over OpenIGTLink, not as the node held them."""
        latest = {} if self.counter is None else dict(self.counter.latest)
        return {name: round(float(s.point_data["uncertainty_mm"].mean()), 3) for name, s in sorted(latest.items())
                if "uncertainty_mm" in s.point_data}
