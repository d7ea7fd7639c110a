"""Publish completed surfaces to 3D Slicer (or any OpenIGTLink peer) as POLYDATA.

Two roles, one class:

- ``role="server"`` (default): we listen (127.0.0.1:18945 unless told otherwise); every connected client
  (Slicer's OpenIGTLinkIF connector in *client* mode) receives every surface.
- ``role="client"``: we connect to a Slicer connector in *server* mode and reconnect if it goes away.

Each :class:`~usx_stream.frames.Surface` becomes one POLYDATA message: points in mm in ``surface.frame``
(Reference unless the launch file says otherwise), triangles as polygons, per-point normals as a
``Normals`` attribute, every entry of ``surface.point_data`` (e.g. ``uncertainty_mm``, the completion
uncertainty in mm) as a point *scalar* attribute of that name (type 0x00, one float32 component, big-endian;
Slicer lists it under the model's scalars and colours the model by it), device name ``surface.name`` (e.g. ``L1_Completed``; names over 20 bytes travel in
metadata ``IGTL_DEVICE_NAME``), and with header version 2 the metadata ``MRMLNodeName`` (the node Slicer
creates or updates), ``CoordinateFrame`` and ``surface.metadata``. Slicer treats coordinates as RAS: apply
the ``ReferenceToRas`` transform to the node in Slicer (or publish in a frame that is RAS).

``device_prefix`` is put in front of every device name (``USX_L1_Completed``). The node's status line goes
out as STRING ``<prefix>Status`` (Slicer shows it as a text node). Level landmarks come back the other way:
a POINT message whose points are named ``L1`` … ``L5`` (a Slicer markups list sent through the connector)
gives those levels' centres, in the publish frame (place the markups under the same ReferenceToRas
transform as the models); :meth:`SurfacePublisher.take_landmarks` returns them.

Apart from those POINTs the publisher only sends. Whatever else peers send it is framed, counted and
dropped, never decoded or queued (:func:`~.transport.publish_only_options`); in the server role a client declaring a body over
64 KiB is disconnected before any of it is read, only ``allow_clients`` may connect, and ``max_clients``
bounds the connections (see :class:`~.endpoints.Server` for who makes room at the limit).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

from ..frames import Surface
from .codec import Message
from .codec_polydata import PolyAttribute, PolyData
from .endpoints import Client, Server
from .transport import TransportOptions, publish_only_options

logger = logging.getLogger(__name__)


_LEVEL_NAME = re.compile(r"^\s*(L[1-5])\b", re.IGNORECASE)


def landmarks_from_points(items) -> dict[str, np.ndarray]:
    """``{level: (3,) position mm}`` from POINT items named ``L1`` … ``L5`` (also ``L3 centre``, ``l3``);
    other names and non-finite positions are ignored."""
    out = {}
    for item in items:
        match = _LEVEL_NAME.match(str(item.name))
        pos = np.asarray(item.position, dtype=np.float64)
        if match and pos.shape == (3,) and np.isfinite(pos).all():
            out[match.group(1).upper()] = pos
    return out


def surface_to_message(surface: Surface, *, header_version: int = 2, device_prefix: str = "") -> Message:
    """POLYDATA message for ``surface`` (see the module docstring for the mapping)."""
    if not surface.name:
        raise ValueError("Surface.name: must be set (it becomes the device name, e.g. 'L1_Completed')")
    name = device_prefix + surface.name
    vertices = np.asarray(surface.vertices_mm, dtype=np.float32).reshape(-1, 3)
    poly = PolyData.from_triangles(vertices, np.asarray(surface.triangles).reshape(-1, 3),
                                   normals=surface.normals)
    for key, values in surface.point_data.items():
        data = np.asarray(values, dtype=np.float32).reshape(-1)
        if len(data) != len(vertices):
            raise ValueError(f"Surface.point_data[{key!r}]: {len(data)} values for {len(vertices)} vertices")
        poly.attributes.append(PolyAttribute(str(key), data.reshape(-1, 1), "scalar"))
    metadata = {"MRMLNodeName": name, "CoordinateFrame": surface.frame}
    metadata.update({str(k): str(v) for k, v in surface.metadata.items()})
    return Message("POLYDATA", name, poly, surface.timestamp, metadata, header_version)


def message_to_surface(msg: Message) -> Surface:
    """Inverse of :func:`surface_to_message` (triangles only; one-component point scalars -> ``point_data``)."""
    poly: PolyData = msg.content
    normals = poly.attribute("Normals")
    point_data = {a.name: a.data.reshape(-1).astype(np.float32) for a in poly.attributes
                  if a.kind == "scalar" and not a.on_cells and a.data.shape[1:] == (1,)}
    metadata = {k: v for k, v in msg.metadata.items() if k not in ("MRMLNodeName", "CoordinateFrame", "IGTL_DEVICE_NAME")}
    return Surface(vertices_mm=poly.points.astype(np.float64), triangles=poly.triangles(),
                   normals=None if normals is None else normals.data.astype(np.float64),
                   frame=msg.metadata.get("CoordinateFrame", "Reference"), name=msg.device_name,
                   metadata=metadata, timestamp=msg.timestamp, point_data=point_data)


class SurfacePublisher:
    """Send surfaces as POLYDATA to every connected client (``role="server"``) or to one server.

    Parameters
    ----------
    role : str
        ``"server"`` or ``"client"``.
    host, port : str, int
        Where to listen (server) or connect (client).
    header_version : int
        2 (default, carries MRMLNodeName) or 1 (for peers that only speak version 1).
    options : TransportOptions or None
        Default: :func:`~.transport.publish_only_options` for the server role; for the client role the
        same with the usual 64 MiB limit and no disconnect on larger bodies (the peer is the Slicer we
        chose to connect to, and a disconnect would only bring a reconnect). Given options are used as
        they are.
    allow_clients : sequence of str or None
        Server role: addresses or networks allowed to connect (``["127.0.0.1", "10.0.0.0/8"]``); None or
        empty: any. Must be empty for the client role.
    max_clients : int
        Server role: connections held at once (16).
    """

    def __init__(self, *, role: str = "server", host: str = "127.0.0.1", port: int = 18945, header_version: int = 2,
                 options: TransportOptions | None = None, allow_clients: Sequence[str] | None = None,
                 max_clients: int = 16, device_prefix: str = ""):
        if role not in ("server", "client"):
            raise ValueError(f"role: expected 'server' or 'client', got {role!r}")
        if header_version not in (1, 2):
            raise ValueError(f"header_version: expected 1 or 2, got {header_version!r}")
        if role == "client" and allow_clients:
            raise ValueError(f"allow_clients: only for role 'server' (we connect out as a client), got {allow_clients!r}")
        self.role = role
        self.header_version = header_version
        self.device_prefix = device_prefix
        self._ignored_point_names: set[str] = set()  # told once each: Slicer names new points F-1, F-2, ...
        if role == "server":
            self.endpoint = Server(host, port, options=options or publish_only_options(), match_peer_version=False,
                                   allow_clients=allow_clients, max_clients=max_clients)
        else:
            options = options or publish_only_options(peer_timeout_s=TransportOptions.peer_timeout_s,
                                                      max_body_bytes=TransportOptions.max_body_bytes,
                                                      close_on_oversize=False)
            self.endpoint = Client(host, port, options=options)
        self.published = 0

    def start(self) -> "SurfacePublisher":
        self.endpoint.start()
        return self

    def close(self) -> None:
        """:class:`~.publishing.Publisher` name of :meth:`stop`."""
        self.stop()

    def stop(self) -> None:
        self.endpoint.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.endpoint.port

    def publish(self, surface: Surface) -> int:
        """Queue ``surface`` to every peer; returns the number of peers that accepted it."""
        msg = surface_to_message(surface, header_version=self.header_version, device_prefix=self.device_prefix)
        n = self._send(msg)
        self.published += 1
        return n

    def publish_status(self, text: str) -> int:
        """Send the node's status line as STRING ``<prefix>Status``; returns the peers that accepted it."""
        return self._send(Message("STRING", f"{self.device_prefix}Status", text, None, {}, self.header_version))

    def take_landmarks(self) -> dict[str, np.ndarray]:
        """Level centres from the POINT messages received since the last call (newest per level wins);
        every other inbound message is discarded."""
        out = {}
        while (msg := self.endpoint.get(timeout=0)) is not None:
            if msg.type == "POINT":
                out.update(landmarks_from_points(msg.content))
                ignored = {str(i.name) for i in msg.content if not _LEVEL_NAME.match(str(i.name))}
                if ignored - self._ignored_point_names:
                    logger.warning("POINT %s: points %s ignored: level landmarks are named L1 .. L5 ('L3', "
                                   "'L3 centre')", msg.device_name, sorted(ignored - self._ignored_point_names))
                    self._ignored_point_names |= ignored
        return out

    def _send(self, msg: Message) -> int:
        if self.role == "server":
            return self.endpoint.broadcast(msg)
        return int(self.endpoint.send(msg))
