"""PLUS conventions: turn OpenIGTLink messages from a PlusServer into TrackedFrame and XrayImage objects.

What PlusServer sends, and how each piece is read here:

- IMAGE ``<Image>_<To>`` (default ``Image_Reference``): the B-mode frame, with ``ImageToReference`` (pixel
  size included) embedded as the image's ijk-to-world matrix. It becomes ``TrackedFrame.pixels``
  (slice 0, ``pixels[j, i]``) and ``TrackedFrame.transforms["ImageToReference"]``.
- TRANSFORM ``XToY``: tracking transforms, sent separately with the frame's timestamp. Names longer than
  20 bytes are cut in the header; the full name comes from metadata ``IGTL_DEVICE_NAME``. Validity comes
  from metadata ``TransformStatus`` (``OK`` / ``INVALID``; header version 2 only, otherwise valid).
- IMAGE metadata (header version 2) may carry per-frame fields: ``<Name>Transform`` (16 numbers,
  row-major) with ``<Name>TransformStatus``, ``ImageStatus``, ``Timestamp`` and any other field. Such
  transforms are exact (text, float64) and take precedence over separately sent float32 TRANSFORMs.
- Timestamps: header timestamp (or metadata ``Timestamp``) plus the device's ``LocalTimeOffsetSec``
  (``time_offsets_s``), exactly as PLUS applies it.

Pairing. Each image waits until, for every expected transform name (``transform_names``, or every name
seen so far), a sample at or after its timestamp has arrived; the transform is then interpolated
between the samples around the image time (linear translation, slerp rotation; valid only when both
samples are). Once other transforms are more than ``max_gap_s`` past the image, a name still without a
sample after it (a tool that stopped reporting) no longer holds the image back. An image is also released when a later image arrives (PlusServer sends everything of one
frame before the next) or after ``max_wait_s``; a transform without a sample after the image time is
then taken from the newest sample if it is at most ``max_gap_s`` older, and left out otherwise.

X-ray. IMAGE ``xray_device`` and ``xray_labelmap_device`` (names from the launch file) each become an
:class:`~usx_stream.frames.XrayImage` holding what that message carried: the image (``labelmap`` None) or
the labelmap (``pixels`` None), with the message's own time. They are merged in one place,
:class:`~usx_stream.xray.cache.XrayCache`, which checks that the parts fit together (a labelmap that
arrives before any image waits there for it, rather than travelling with an invented image).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..frames import TrackedFrame, XrayImage
from .codec import FULL_NAME_KEY, Message
from .interpolate import interpolate_rigid

logger = logging.getLogger(__name__)

_RESERVED = {FULL_NAME_KEY, "TransformStatus", "ImageStatus", "Timestamp"}


@dataclass(frozen=True)
class ReceiverConfig:
    """Device names and timing (seconds) of a PLUS stream; see the module docstring."""

    image_device: str = "Image_Reference"
    transform_names: tuple[str, ...] = ()
    xray_device: str = "Xray"
    xray_labelmap_device: str = "XrayLabelmap"
    time_offsets_s: dict = field(default_factory=dict)
    max_wait_s: float = 0.1
    max_gap_s: float = 0.2
    history_s: float = 5.0

    def __post_init__(self) -> None:
        if "_" not in self.image_device:
            raise ValueError(f"ReceiverConfig.image_device: expected '<Image>_<To>' (PLUS), got {self.image_device!r}")
        for name in ("max_wait_s", "max_gap_s", "history_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"ReceiverConfig.{name}: must be >= 0, got {getattr(self, name)!r}")


class _History:
    """Time-ordered samples ``(t, matrix, valid)`` of one transform."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.samples: list[tuple[np.ndarray, bool]] = []

    def add(self, t: float, m: np.ndarray, valid: bool, keep_s: float) -> None:
        i = bisect.bisect_right(self.times, t)
        self.times.insert(i, t)
        self.samples.insert(i, (m, valid))
        cut = bisect.bisect_left(self.times, self.times[-1] - keep_s)
        if cut > 1:  # keep one sample older than the window for interpolation
            del self.times[:cut - 1], self.samples[:cut - 1]

    def at(self, t: float, max_gap_s: float) -> tuple[np.ndarray, bool, str] | None:
        """``(matrix, valid, how)`` at time ``t``; ``how`` is exact, interpolated or nearest."""
        i = bisect.bisect_left(self.times, t)
        if i < len(self.times) and abs(self.times[i] - t) < 1e-9:
            return (*self.samples[i], "exact")
        if i > 0 and abs(self.times[i - 1] - t) < 1e-9:
            return (*self.samples[i - 1], "exact")
        if 0 < i < len(self.times):
            t0, t1 = self.times[i - 1], self.times[i]
            (m0, v0), (m1, v1) = self.samples[i - 1], self.samples[i]
            return interpolate_rigid(m0, m1, (t - t0) / (t1 - t0)), v0 and v1, "interpolated"
        if i == len(self.times) and i and t - self.times[-1] <= max_gap_s:
            return (*self.samples[-1], "nearest")
        if i == 0 and self.times and self.times[0] - t <= max_gap_s:
            return (*self.samples[0], "nearest")
        return None


@dataclass
class _Pending:
    msg: Message
    t: float
    arrived: float


class PlusReceiver:
    """Stateful, thread-confined converter: call :meth:`feed` with every message, :meth:`poll` periodically.

    Both return a list of ready :class:`TrackedFrame` / :class:`XrayImage` objects, in image arrival order.
    """

    def __init__(self, config: ReceiverConfig | None = None):
        self.config = config or ReceiverConfig()
        frm, _, to = self.config.image_device.partition("_")
        self._embedded_name = f"{frm}To{to}" if frm != to else None
        self._histories: dict[str, _History] = {}
        self._pending: deque[_Pending] = deque()
        self._latest_transform_t = float("-inf")  # newest tracking time seen
        self._latest_image_t = float("-inf")
        self._names_learned = bool(self.config.transform_names)  # see _ready
        self._next_index = 0
        self.counts = {"frames": 0, "exact": 0, "interpolated": 0, "nearest": 0, "missing_transform": 0,
                       "xray": 0, "ignored": 0}

    def _time(self, msg: Message) -> float:
        t = float(msg.metadata["Timestamp"]) if "Timestamp" in msg.metadata else msg.timestamp
        return t + float(self.config.time_offsets_s.get(msg.device_name, 0.0))

    def feed(self, msg: Message, now: float | None = None) -> list:
        """Take one message; returns the frames and X-ray images it made ready."""
        now = time.monotonic() if now is None else now
        t = self._time(msg)
        if msg.type == "TRANSFORM":
            valid = msg.metadata.get("TransformStatus", "OK") == "OK"
            self._histories.setdefault(msg.device_name, _History()).add(t, msg.content, valid, self.config.history_s)
            self._latest_transform_t = max(self._latest_transform_t, t)
        elif msg.type == "IMAGE" and msg.device_name == self.config.image_device:
            self._pending.append(_Pending(msg, t, now))
            self._latest_image_t = max(self._latest_image_t, t)
        elif msg.type == "IMAGE" and msg.device_name in (self.config.xray_device, self.config.xray_labelmap_device):
            return [self._xray_update(msg, t)] + self.poll(now)
        else:
            self.counts["ignored"] += 1
            return self.poll(now)
        return self.poll(now)

    def poll(self, now: float | None = None) -> list:
        """Release images whose transforms are complete or whose wait ran out."""
        now = time.monotonic() if now is None else now
        out = []
        while self._pending and self._ready(self._pending[0], now):
            out.append(self._frame(self._pending.popleft()))
        return out

    def flush(self) -> list:
        """Release every waiting image now (end of stream)."""
        out = [self._frame(p) for p in self._pending]
        self._pending.clear()
        return out

    def _expected(self, msg: Message) -> list[str]:
        names = self.config.transform_names or tuple(self._histories)
        inline = {k[:-len("Transform")] for k in msg.metadata if k.endswith("Transform")}
        return [n for n in names if n not in inline]

    def _ready(self, p: _Pending, now: float) -> bool:
        # PlusServer sends everything stamped t before the next frame: a later image means p is complete.
        if self._latest_image_t > p.t or now - p.arrived >= self.config.max_wait_s:
            self._names_learned = True
            return True
        if not self._names_learned:  # the names seen so far may not be all the names of a frame yet
            return False
        for name in self._expected(p.msg):
            h = self._histories.get(name)
            if h is not None and h.times and h.times[-1] >= p.t - 1e-9:
                continue  # a sample at or after the image time is here
            if self._latest_transform_t - p.t > self.config.max_gap_s:
                continue  # other tools are well past this image and this one is not: it stopped reporting
            return False
        return True

    def _frame(self, p: _Pending) -> TrackedFrame:
        msg, content = p.msg, p.msg.content
        transforms, status = {}, {}
        if self._embedded_name is not None:
            transforms[self._embedded_name] = np.asarray(content.ijk_to_world, dtype=np.float64)
            status[self._embedded_name] = msg.metadata.get("TransformStatus", "OK") == "OK"
        fields = {}
        for key, value in msg.metadata.items():
            if key.endswith("TransformStatus"):
                status[key[:-len("TransformStatus")]] = value == "OK"
            elif key.endswith("Transform") and _parse_matrix(value) is not None:
                transforms[key[:-len("Transform")]] = _parse_matrix(value)
            elif key not in _RESERVED:
                fields[key] = value
        for name in self._expected(msg):
            sample = self._histories[name].at(p.t, self.config.max_gap_s) if name in self._histories else None
            if sample is None:
                self.counts["missing_transform"] += 1
                continue
            transforms[name], status[name], how = sample
            self.counts[how] += 1
        for name in transforms:
            status.setdefault(name, True)
        # A multi-slice IMAGE keeps its slices, so that the node's edge check rejects it (it is no B-mode frame)
        pixels = content.pixels if content.voxels.shape[0] == 1 else content.voxels
        frame = TrackedFrame(pixels=pixels, timestamp=p.t, transforms=transforms,
                             transform_status={k: status[k] for k in transforms},
                             image_status=msg.metadata.get("ImageStatus", "OK") == "OK", fields=fields,
                             index=self._next_index)
        self._next_index += 1
        self.counts["frames"] += 1
        return frame

    def _xray_update(self, msg: Message, t: float) -> XrayImage:
        img = msg.content
        spacing = img.spacing[:2].astype(np.float64)
        self.counts["xray"] += 1
        if msg.device_name == self.config.xray_device:
            return XrayImage(img.pixels, None, spacing, t)
        # values are checked (integers 0..5) by the cache, which names the bad label
        return XrayImage(None, img.pixels, spacing, t)


def _parse_matrix(text: str) -> np.ndarray | None:
    """PLUS frame-field matrix: 16 numbers, row-major; None when ``text`` is not one."""
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError:
        return None
    if values.size != 16 or not np.all(np.isfinite(values)):
        return None
    return values.reshape(4, 4)
