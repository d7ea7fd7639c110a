"""Hostile OpenIGTLink peers, shared by the tests and runnable as a measurement.

- :class:`HostilePlusServer`: a PlusServer-like server streaming IMAGE frames at a fixed rate that, once,
  sends a header declaring a large body and then either keeps streaming valid frames on the same
  connection (``mode="inline"``: the frames become the declared body) or sends a few bytes and trickles one
  byte at a time so the connection never goes silent (``mode="trickle"``); after a reconnection it streams
  valid frames again. Frames are numbered by their timestamp, so what the node lost is known exactly.
- :func:`flood_valid` / :func:`flood_declared`: clients that flood a publisher's port with valid large
  messages, or declare large bodies and send almost nothing.

``python tests/igtl/igtl_hostile.py`` measures the node process against both (numbers on stdout).
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np

from usx_stream.igtl import ImageContent, Message
from usx_stream.igtl.codec import HEADER, encode_bytes

T0 = 1000.0  # timestamp of frame 0, s


def image_frame(i: int, fps: float, shape=(172, 320)) -> bytes:
    """Encoded IMAGE ``Image_Reference`` number ``i`` (timestamp ``T0 + i / fps``), ``shape`` uint8 pixels."""
    pixels = np.full(shape, i % 251, np.uint8)
    return encode_bytes(Message("IMAGE", "Image_Reference", ImageContent.from_2d(pixels), T0 + i / fps))


def frame_index(msg: Message, fps: float) -> int:
    return int(round((msg.timestamp - T0) * fps))


def declared_header(body_size: int, device: str = "Image_Reference") -> bytes:
    """A well-formed version-1 IMAGE header declaring ``body_size`` bytes (CRC of nothing in particular)."""
    return HEADER.pack(1, b"IMAGE", device.encode(), 0, 0, body_size, 0x1234_5678_9ABC_DEF0)


class HostilePlusServer:
    """See the module docstring. ``bad_at``: index of the frame replaced by the large declared header."""

    def __init__(self, *, mode: str, fps: float = 30.0, bad_at: int = 30, declared: int = 16 << 20,
                 shape=(172, 320)):
        if mode not in ("inline", "trickle"):
            raise ValueError(f"mode: expected 'inline' or 'trickle', got {mode!r}")
        self.mode, self.fps, self.bad_at, self.declared, self.shape = mode, fps, bad_at, declared, shape
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.bad_sent = threading.Event()
        self.bad_sent_at = 0.0  # time.monotonic() when the declared header went out
        self.connections = 0
        self._start = 0.0
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "HostilePlusServer":
        self._start = time.monotonic()
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.listener.close()
        for t in self._threads:
            t.join(timeout=5)

    def current_index(self) -> int:
        """The frame the acquisition is at now (frames exist whether or not anyone receives them)."""
        return int((time.monotonic() - self._start) * self.fps)

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            t = threading.Thread(target=self._stream, args=(sock, self.connections == 1), daemon=True)
            t.start()
            self._threads.append(t)

    def _stream(self, sock: socket.socket, first: bool) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(5.0)
        i = self.current_index()
        try:
            while not self.stop.is_set():
                while self.current_index() < i and not self.stop.is_set():
                    self.stop.wait(0.002)  # paced like an acquisition, not a test sleep
                if first and i == self.bad_at:
                    sock.sendall(declared_header(self.declared) + bytes(100))
                    self.bad_sent_at = time.monotonic()
                    self.bad_sent.set()
                    if self.mode == "trickle":
                        while not self.stop.wait(0.1):  # never silent, never complete
                            sock.sendall(b"\x00")
                        return
                    i += 1
                    continue
                sock.sendall(image_frame(i, self.fps, self.shape))
                i += 1
        except OSError:
            pass  # the node closed this connection
        finally:
            sock.close()


def measure_stall(mode: str, *, duration_s: float = 15.0, fps: float = 30.0, options=None) -> dict:
    """Run a :class:`~usx_stream.igtl.endpoints.Client` against :class:`HostilePlusServer` for
    ``duration_s`` seconds after the declared header; returns recovery time (s) and frames lost."""
    from usx_stream.igtl.endpoints import Client, hello_message

    arrivals: dict[int, float] = {}
    with HostilePlusServer(mode=mode, fps=fps) as server:
        client = Client("127.0.0.1", server.port, options=options, hello=hello_message()).start()
        try:
            end = None
            while end is None or time.monotonic() < end:
                msg = client.get(timeout=0.05)
                if server.bad_sent.is_set() and end is None:
                    end = server.bad_sent_at + duration_s
                if msg is not None and msg.type == "IMAGE":
                    arrivals.setdefault(frame_index(msg, fps), time.monotonic())
            last_generated = server.current_index()
        finally:
            client.stop()
        bad_at, t_bad = server.bad_at, server.bad_sent_at
        connections = server.connections
    after = [t for i, t in arrivals.items() if i > bad_at]
    recovery = min(after) - t_bad if after else float("inf")
    # frames generated from the bad one up to the end of the window, less those that arrived
    expected = range(bad_at + 1, last_generated)
    lost = sum(1 for i in expected if i not in arrivals)
    return {"mode": mode, "recovery_s": recovery, "lost": lost, "generated": len(expected),
            "connections": connections, "stats": client.stats.snapshot()}


# -- flooding a publisher ----------------------------------------------------------------------------------
def flood_valid(port: int, *, n_messages: int = 40, clients: int = 4, body_mib: int = 16) -> tuple[int, int]:
    """Send ``n_messages`` valid IMAGE messages of ``body_mib`` MiB, spread over ``clients`` sockets
    (reconnecting when cut off); returns how many were sent completely and how many connections it took."""
    side = int((body_mib << 20) ** 0.5)
    raw = encode_bytes(Message("IMAGE", "Flood", ImageContent.from_2d(np.zeros((side, side), np.uint8)), 1.0))
    sent = 0
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
    connections = clients
    for k in range(n_messages):
        s = socks[k % clients]
        try:
            s.sendall(raw)
            sent += 1
        except OSError:
            s.close()
            socks[k % clients] = socket.create_connection(("127.0.0.1", port))
            connections += 1
    for s in socks:
        s.close()
    return sent, connections


def flood_declared(port: int, *, clients: int = 16, declared: int = 64 << 20, sent_kib: int = 68) -> list:
    """Open ``clients`` sockets, each declaring a ``declared``-byte body and sending ``sent_kib`` KiB of it;
    returns the sockets (left open: the caller closes them)."""
    socks = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port))
        try:
            s.sendall(declared_header(declared) + bytes(sent_kib << 10))
        except OSError:
            pass  # the server already closed it
        socks.append(s)
    return socks


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _flooder(port: int, what: str) -> None:
    if what == "valid":
        flood_valid(port)
    else:
        socks = flood_declared(port)
        time.sleep(3.0)  # hold them open while the node is measured (a script, not a test)
        for s in socks:
            s.close()


def measure_flood() -> dict:
    """RSS of this process (the node side: a POLYDATA server) while another process floods it."""
    import subprocess
    import sys

    from usx_stream.igtl.endpoints import Client
    from usx_stream.igtl.publisher import SurfacePublisher

    from usx_stream.frames import Surface

    out = {}
    with SurfacePublisher(role="server", port=0) as pub:
        for what in ("valid", "declared"):
            before = rss_mib()
            proc = subprocess.Popen([sys.executable, __file__, "--flood", what, str(pub.port)])
            peak = before
            while proc.poll() is None:
                peak = max(peak, rss_mib())
                time.sleep(0.02)  # sampling RSS (measurement script)
            time.sleep(1.0)  # let the node finish whatever it had read
            out[what] = {"rss_before_mib": before, "rss_peak_mib": peak, "rss_after_mib": rss_mib()}
        slicer = Client("127.0.0.1", pub.port).start()
        connected = slicer.wait_connected(5) and pub.endpoint.wait_for_clients(1, 5)
        verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
        pub.publish(Surface(vertices_mm=verts, triangles=np.array([[0, 1, 2]]), name="L1_Completed"))
        got = slicer.get(timeout=5)
        out["slicer_after_flood"] = bool(connected and got is not None and got.type == "POLYDATA")
        slicer.stop()
        out["stats"] = pub.endpoint.stats.snapshot()
    return out


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--flood":
        _flooder(int(sys.argv[3]), sys.argv[2])
        sys.exit(0)
    which = sys.argv[1:] or ["flood", "inline", "trickle"]
    if "flood" in which:
        print("flood", measure_flood())
    for mode in ("inline", "trickle"):
        if mode in which:
            r = measure_stall(mode)
            print(mode, {k: v for k, v in r.items() if k != "stats"}, r["stats"].get("rejected"),
                  r["stats"].get("closed"))
