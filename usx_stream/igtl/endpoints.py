"""OpenIGTLink endpoints: a reconnecting :class:`Client` and a many-client :class:`Server`.

Both own one inbound :class:`~.transport.MessageQueue` (read it with ``get(timeout)``; each message's
``peer`` names its connection) and one :class:`~.transport.TransportStats`. Sockets open in ``start()``
and close in ``stop()``; nothing here installs signal handlers, so endpoints work from any thread.

Who may connect to a :class:`Server`. OpenIGTLink has no authentication, so the first defence is where
the server listens (127.0.0.1 unless the launch file opts in) and ``allow_clients``, a list of addresses
and networks (``["127.0.0.1", "10.0.0.0/8"]``): a connection from anywhere else is closed as soon as it
is accepted and counted (``refused_not_allowed``). Within that, ``max_clients`` bounds the connections
held; see :class:`Server` for what happens when a client arrives at the limit.
"""

from __future__ import annotations

import abc
import collections
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Sequence

from . import codec
from .codec import Message
from .transport import Connection, MessageQueue, TransportOptions, TransportStats

logger = logging.getLogger(__name__)


class _Endpoint(abc.ABC):
    """What a client and a server share: the inbound queue, the counters and the set of live connections."""

    def __init__(self, options: TransportOptions | None):
        self.options = options or TransportOptions()
        self.stats = TransportStats()
        self.inbound = MessageQueue(self.options.inbound_queue, self.stats, "dropped_inbound")
        self._stop = threading.Event()
        self._cond = threading.Condition()  # guards connection state below; notified on every change
        self._logged: set[str] = set()  # reasons already logged at warning level (any thread)

    def _warn_once(self, reason: str, fmt: str, *args) -> None:
        """Log ``fmt % args`` at warning level the first time ``reason`` occurs, at debug level after."""
        first = reason not in self._logged
        self._logged.add(reason)
        logger.log(logging.WARNING if first else logging.DEBUG, fmt + (" (further ones at debug level)" if first else ""),
                   *args)

    @abc.abstractmethod
    def _connections(self) -> list[Connection]:
        """The live connections now (a client has at most one)."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes of receive buffers held by this endpoint's live connections now."""
        return sum(c.buffered_bytes for c in self._connections())

    def get(self, timeout: float | None = None) -> Message | None:
        """Next received message in arrival order, or None after ``timeout`` seconds."""
        return self.inbound.get(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Client(_Endpoint):
    """Connects to ``host:port`` and keeps reconnecting (exponential backoff) until :meth:`stop`.

    Parameters
    ----------
    host, port : str, int
    options : TransportOptions or None
    hello : Message or None
        Sent first on every (re)connection. Send a version-2 message here so that a PlusServer starts
        talking version 2 (metadata, TransformStatus) to us; see :func:`hello_message`.
    backoff_s : (float, float)
        First and largest wait between connection attempts, seconds; doubles after each failure.
    connect_timeout_s : float
    warn_after_s : float
        A connection that keeps failing this long is logged as a warning, with the reason (once per reason
        until it connects); shorter outages (a server restarting, or stopping at the end of a session) only
        count ``connect_failures``.
    """

    def __init__(self, host: str, port: int, *, options: TransportOptions | None = None, hello: Message | None = None,
                 backoff_s: tuple[float, float] = (0.05, 0.5), connect_timeout_s: float = 1.0,
                 warn_after_s: float = 1.0):
        if not 0 < backoff_s[0] <= backoff_s[1]:
            raise ValueError(f"backoff_s: expected 0 < first <= largest, got {backoff_s!r}")
        if not 0 <= int(port) < 65536:
            raise ValueError(f"port: expected 0..65535, got {port!r}")
        super().__init__(options)
        self.host, self.port = host, int(port)
        self.hello = hello
        self.backoff_s = backoff_s
        self.connect_timeout_s = connect_timeout_s
        self.warn_after_s = warn_after_s
        self.connection: Connection | None = None  # replaced by the manager thread on each connect
        self.generation = 0  # number of successful connections so far
        self.downtimes_s: list[float] = []  # per reconnect: seconds from losing a connection to the next one
        self._lost_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"igtl-client-{host}:{port}", daemon=True)

    def start(self) -> "Client":
        self._thread.start()
        return self

    def stop(self, *, flush_timeout_s: float = 1.0) -> None:
        """Send what is still queued (up to ``flush_timeout_s``), then close and stop reconnecting."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        conn = self.connection
        if conn is not None:
            conn.flush(flush_timeout_s)
            conn.close("client stopped")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _connections(self) -> list[Connection]:
        conn = self.connection
        return [] if conn is None else [conn]

    @property
    def connected(self) -> bool:
        conn = self.connection
        return conn is not None and not conn.closed.is_set()

    def wait_connected(self, timeout: float | None = None, *, generation: int = 1) -> bool:
        """Block until the ``generation``-th connection is up (1 = first connect); True if it is."""
        with self._cond:
            return self._cond.wait_for(lambda: self.generation >= generation and self.connected, timeout)

    def send(self, msg: Message) -> bool:
        """Queue ``msg`` on the current connection; False (and counted) when not connected."""
        conn = self.connection
        if conn is None or not conn.send(msg):
            self.stats.add("send_failed")
            return False
        return True

    def _run(self) -> None:
        delay = self.backoff_s[0]
        reported = ""  # the last failure reason logged at WARNING: a typo'd host or port shows once, not never
        failing_since = None
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
            except OSError as e:
                reason = e.strerror or str(e) or type(e).__name__
                failing_since = time.monotonic() if failing_since is None else failing_since
                if reason != reported and time.monotonic() - failing_since >= self.warn_after_s:
                    logger.warning("cannot connect to %s:%d: %s; retrying every %g s (a server not up yet, or "
                                   "the host or port wrong?)", self.host, self.port, reason, self.backoff_s[1])
                    reported = reason
                logger.debug("connect to %s:%d failed: %s", self.host, self.port, e)
                self.stats.add("connect_failures")
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_s[1])
                continue
            try:
                conn = Connection(sock, inbound=self.inbound, stats=self.stats, options=self.options,
                                  on_closed=self._closed)
            except OSError as e:  # the server vanished right after accepting
                logger.debug("connection to %s:%d lost at set-up: %s", self.host, self.port, e)
                sock.close()
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_s[1])
                continue
            if self.hello is not None:
                conn.send_encoded(codec.encode(self.hello))
            conn.start()
            with self._cond:
                self.connection = conn
                self.generation += 1
                if self._lost_at is not None:
                    self.downtimes_s.append(time.monotonic() - self._lost_at)
                    self._lost_at = None
                self._cond.notify_all()
            self.stats.add("connects")
            reported, failing_since = "", None
            logger.info("connected to %s:%d", self.host, self.port)
            conn.closed.wait()
            if self._stop.is_set():
                break
            self.stats.add("reconnects")
            if conn.first_message.is_set():
                delay = self.backoff_s[0]  # a working connection ended: try again at once
            else:  # accepted but dropped before saying anything (e.g. a full server): back off
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_s[1])

    def _closed(self, conn: Connection, reason: str) -> None:
        with self._cond:
            self._lost_at = time.monotonic()
            self._cond.notify_all()


class Server(_Endpoint):
    """Listens on ``host:port`` (127.0.0.1 by default; port 0 picks a free one) for up to ``max_clients``.

    ``broadcast`` sends to every client. With ``match_peer_version`` (PlusServer behaviour) a version-2
    message goes out as version 1 to clients that have not sent a version-2 message themselves.

    At the limit a new client is always admitted, and one held connection is closed to make room
    (counted as ``evicted``): the oldest connection of the address that holds the most connections,
    among those preferring one that has never sent a valid message. Refusing newcomers instead would let
    whoever filled the slots first (stale connections of a crashed viewer, or junk clients) lock a
    reconnecting 3D Slicer out; with this rule a reconnecting Slicer always gets in, one host opening
    many connections only ever evicts its own, and Slicer's single connection is the last to go. What it
    cannot stop is many hosts each opening a connection: that is what ``allow_clients`` is for.

    Parameters
    ----------
    host, port : str, int
        Address to listen on and port (0: any free port, read ``port`` after ``start``).
    options : TransportOptions or None
        Default: ``TransportOptions(peer_timeout_s=0)`` (a viewer may never send anything).
    max_clients : int
        Connections held at once (see above).
    match_peer_version : bool
    allow_clients : sequence of str or None
        Client addresses or networks (``"10.1.2.3"``, ``"10.0.0.0/8"``) allowed to connect; None or empty:
        any. Others are closed at once and counted as ``refused_not_allowed``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 18944, *, options: TransportOptions | None = None,
                 max_clients: int = 16, match_peer_version: bool = True, allow_clients: Sequence[str] | None = None):
        if not 0 <= int(port) < 65536:
            raise ValueError(f"port: expected 0..65535, got {port!r}")
        if isinstance(max_clients, bool) or not isinstance(max_clients, int) or max_clients < 1:
            raise ValueError(f"max_clients: must be an integer >= 1, got {max_clients!r}")
        self.allow_networks = parse_allow_list(allow_clients)
        # A client may rightly never send anything (a viewer): by default a server does not time clients
        # out for silence; a dead one is noticed when sends stall (send_timeout_s) or TCP reports it.
        super().__init__(options or TransportOptions(peer_timeout_s=0))
        self.host, self.port = host, int(port)
        self.max_clients = max_clients
        self.match_peer_version = match_peer_version
        self.connections: list[Connection] = []  # guarded by self._cond
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "Server":
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind((self.host, self.port))
            lst.listen(self.max_clients)
        except OSError:
            lst.close()
            raise
        lst.settimeout(0.5)  # bounds how long stop() waits for the accept thread
        self.port = lst.getsockname()[1]
        self._listener = lst
        self._thread = threading.Thread(target=self._accept_loop, name=f"igtl-server-{self.port}", daemon=True)
        self._thread.start()
        logger.info("OpenIGTLink server listening on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            try:  # wakes a blocked accept() on Linux; close() alone would leave it accepting
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected / already shut down
            self._listener.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        with self._cond:
            conns = list(self.connections)
        for conn in conns:
            conn.close("server stopped")

    def _connections(self) -> list[Connection]:
        with self._cond:
            return list(self.connections)

    @property
    def client_count(self) -> int:
        with self._cond:
            return len(self.connections)

    def wait_for_clients(self, n: int = 1, timeout: float | None = None) -> bool:
        """Block until at least ``n`` clients are connected."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.connections) >= n, timeout)

    def broadcast(self, msg: Message, *, block_s: float = 0.0) -> int:
        """Queue ``msg`` to every connected client; returns how many accepted it.

        A client whose outbound queue is full gets up to ``block_s`` seconds to make room (back-pressure
        for file replay); after that the message is dropped for that client and counted.

        Every client but the last is handed to its writer thread first, so that all of them are sent to
        in parallel; the last one may be written from this thread (see :meth:`Connection.send_encoded`).
        """
        with self._cond:
            conns = list(self.connections)
        encoded: dict[int, list] = {}
        sent = 0
        for i, conn in enumerate(conns):
            version = min(msg.header_version, conn.peer_header_version) if self.match_peer_version else msg.header_version
            if version not in encoded:
                encoded[version] = codec.encode(Message(msg.type, msg.device_name, msg.content, msg.timestamp,
                                                        msg.metadata, version, msg.message_id))
            sent += conn.send_encoded(encoded[version], block_s=block_s, direct=i == len(conns) - 1)
        return sent

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break  # listener closed by stop()
            if not is_allowed(addr[0], self.allow_networks):
                sock.close()
                self.stats.add("refused_not_allowed")
                self._warn_once("not_allowed", "refusing %s:%d: not in allow_clients", *addr[:2])
                continue
            try:
                conn = Connection(sock, inbound=self.inbound, stats=self.stats, options=self.options,
                                  on_closed=self._closed)
            except OSError as e:  # the client vanished between accept() and set-up
                logger.debug("dropping %s:%d at set-up: %s", *addr[:2], e)
                sock.close()
                continue
            victim = None
            with self._cond:
                if self._stop.is_set():
                    sock.close()
                    break
                if len(self.connections) >= self.max_clients:
                    victim = self._eviction_candidate(conn.peer_host)
                    self.connections.remove(victim)
                self.connections.append(conn)
                self._cond.notify_all()
            if victim is not None:
                self.stats.add("evicted")
                self._warn_once("evicted", "%d clients connected: closing %s to admit %s", self.max_clients,
                                victim.peer, conn.peer)
                victim.close("evicted: client limit reached", wait=False)
            self.stats.add("connects")
            conn.start()

    def _eviction_candidate(self, newcomer_host: str) -> Connection:
        """The connection to close for a newcomer from ``newcomer_host`` (caller holds ``_cond``; see the
        class docstring): most connections per address first, then never-valid first, then oldest."""
        per_host = collections.Counter(c.peer_host for c in self.connections)
        per_host[newcomer_host] += 1
        return min(self.connections, key=lambda c: (-per_host[c.peer_host], c.first_message.is_set(), c.connected_at))

    def _closed(self, conn: Connection, reason: str) -> None:
        with self._cond:
            if conn in self.connections:
                self.connections.remove(conn)
            self._cond.notify_all()


def parse_allow_list(values: Sequence[str] | None) -> tuple:
    """``values`` (addresses or networks, e.g. ``["127.0.0.1", "10.0.0.0/8"]``) as ``ipaddress`` networks;
    empty for None or an empty list (anyone allowed). Raises ValueError naming the bad entry."""
    if values is None:
        return ()
    if isinstance(values, str):
        raise ValueError(f"allow_clients: expected a list of addresses or networks, got {values!r}")
    out = []
    for i, value in enumerate(values):
        try:
            out.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"allow_clients[{i}]: not an IP address or network, got {value!r}") from e
    return tuple(out)


def is_allowed(host: str, networks: tuple) -> bool:
    """Whether address ``host`` is in one of ``networks`` (always, when there are none)."""
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


def hello_message(device_name: str = "usx-stream") -> Message:
    """A version-2 STATUS(OK) to send at connect: PlusServer then answers in version 2."""
    from .codec_basic import StatusContent

    return Message("STATUS", device_name, StatusContent(message="hello"), time.time(), header_version=2)
