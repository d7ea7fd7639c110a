"""Publish surfaces over ZeroMQ PUB (for non-OpenIGTLink consumers: dashboards, loggers, other nodes).

Multipart message schema ``usx-stream/surface/1`` (one message per surface):

=======  ======================================================================================
part     content
=======  ======================================================================================
0        topic, UTF-8: ``surface/<name>`` (subscribe to ``b"surface/"`` for all, or one name)
1        header, UTF-8 JSON object::

             {"schema": "usx-stream/surface/1", "name": "L1_Completed", "frame": "Reference",
              "timestamp": 1764147600.123, "metadata": {...},
              "arrays": [{"name": "vertices_mm", "dtype": "<f4", "shape": [V, 3]},
                         {"name": "triangles",   "dtype": "<u4", "shape": [T, 3]},
                         {"name": "normals",     "dtype": "<f4", "shape": [V, 3]},
                         {"name": "uncertainty_mm", "dtype": "<f4", "shape": [V]}]}

         ``normals`` is listed only when the surface has them; after it, one ``<f4`` array of shape ``[V]`` per
         per-vertex scalar of the surface (``Surface.point_data``), named as it: ``uncertainty_mm`` is the
         completion uncertainty of each vertex in mm (the node's ``completion.uncertainty_samples`` > 0;
         the level's ``uncertainty_mean_mm`` / ``uncertainty_max_mm`` are in ``metadata``). A reader
         takes arrays by name and ignores names it does not know. Units: mm; timestamp: UTC seconds.
2 ...    one part per entry of ``arrays``, in that order: the raw C-order bytes of the array with
         exactly the listed dtype (little-endian) and shape.
=======  ======================================================================================

:func:`decode_surface` turns the parts back into a :class:`~usx_stream.frames.Surface`.

The node's status line (what it completed, or what it waits for) travels as two parts: topic ``status`` and
UTF-8 JSON ``{"schema": "usx-stream/status/1", "status": "L1–L5 multimodal"}``.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from ..frames import Surface

logger = logging.getLogger(__name__)

SCHEMA = "usx-stream/surface/1"
STATUS_SCHEMA = "usx-stream/status/1"


def encode_surface(surface: Surface) -> list[bytes]:
    """Multipart frames for ``surface`` (see the module docstring)."""
    arrays = [("vertices_mm", np.ascontiguousarray(surface.vertices_mm, dtype="<f4").reshape(-1, 3)),
              ("triangles", np.ascontiguousarray(surface.triangles, dtype="<u4").reshape(-1, 3))]
    if surface.normals is not None:
        arrays.append(("normals", np.ascontiguousarray(surface.normals, dtype="<f4").reshape(-1, 3)))
    n_vertices = len(arrays[0][1])
    for key, values in surface.point_data.items():
        data = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
        if key in ("vertices_mm", "triangles", "normals") or len(data) != n_vertices:
            raise ValueError(f"Surface.point_data[{key!r}]: {len(data)} values for {n_vertices} vertices "
                             "(and not a reserved name)")
        arrays.append((str(key), data))
    header = {"schema": SCHEMA, "name": surface.name, "frame": surface.frame, "timestamp": float(surface.timestamp),
              "metadata": {str(k): str(v) for k, v in surface.metadata.items()},
              "arrays": [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays]}
    return [f"surface/{surface.name}".encode(), json.dumps(header).encode()] + [a.tobytes() for _, a in arrays]


def decode_surface(parts: list[bytes]) -> Surface:
    """Inverse of :func:`encode_surface`; raises ValueError naming the bad part."""
    if len(parts) < 2:
        raise ValueError(f"surface message: expected >= 2 parts, got {len(parts)}")
    header = json.loads(bytes(parts[1]).decode())
    if header.get("schema") != SCHEMA:
        raise ValueError(f"surface message: schema {header.get('schema')!r}, expected {SCHEMA!r}")
    specs = header["arrays"]
    if len(parts) != 2 + len(specs):
        raise ValueError(f"surface message: {len(specs)} arrays listed, {len(parts) - 2} parts present")
    arrays = {}
    for spec, raw in zip(specs, parts[2:]):
        dtype = np.dtype(spec["dtype"])
        if len(raw) != dtype.itemsize * int(np.prod(spec["shape"])):
            raise ValueError(f"surface message: array {spec['name']!r} has {len(raw)} bytes for {spec}")
        arrays[spec["name"]] = np.frombuffer(raw, dtype).reshape(spec["shape"])
    return Surface(vertices_mm=arrays["vertices_mm"].astype(np.float64), triangles=arrays["triangles"].astype(np.int64),
                   normals=arrays["normals"].astype(np.float64) if "normals" in arrays else None,
                   frame=header["frame"], name=header["name"], metadata=dict(header["metadata"]),
                   timestamp=header["timestamp"],
                   point_data={k: a.astype(np.float32) for k, a in arrays.items()
                               if k not in ("vertices_mm", "triangles", "normals") and a.ndim == 1})


class ZmqSurfacePublisher:
    """ZeroMQ PUB socket bound to ``endpoint`` (default ``tcp://127.0.0.1:5556``).

    ``sndhwm`` bounds the per-subscriber queue (messages); PUB drops for slow subscribers by design,
    which suits surfaces (the newest one supersedes the older).
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5556", *, sndhwm: int = 16):
        if sndhwm < 1:
            raise ValueError(f"sndhwm: must be >= 1, got {sndhwm}")
        import zmq

        self._zmq = zmq
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError:
            self._sock.close()
            raise
        self.endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.published = 0

    def publish(self, surface: Surface) -> None:
        self._sock.send_multipart(encode_surface(surface), copy=False)
        self.published += 1

    def publish_status(self, text: str) -> None:
        """The node's status line on topic ``status``: ``[b"status", JSON {"schema", "status"}]``."""
        self._sock.send_multipart([b"status", json.dumps({"schema": STATUS_SCHEMA, "status": text}).encode()])

    def take_landmarks(self) -> dict:
        """Nothing comes back over PUB: no landmarks (see :class:`~.publishing.Publisher`)."""
        return {}

    def close(self) -> None:
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
