"""The latest intraoperative X-ray, its vertebral-body labelmap and the C-arm geometry, shared across threads.

One X-ray is taken per procedure step; the node keeps working with the newest valid one. The ingest
thread writes (:meth:`XrayCache.update`, :meth:`XrayCache.update_from_igtl`), the completion thread
reads an immutable :class:`XraySnapshot` and compares its ``version`` with the one it used last.

Validation happens before anything is replaced, so a bad X-ray never evicts the previous valid one:

- pixels: 2D (a ``(1, H, W)`` single-slice volume is accepted, as OpenIGTLink IMAGE carries it),
  numeric, finite;
- labelmap: same shape as the image, integer values 0..5 (0 background, 1..5 = L1..L5);
- geometry: its detector shape must be the image's.

The image and labelmap may arrive separately (two OpenIGTLink devices). A new image keeps the previous
labelmap when the shapes agree (``labelmap_timestamp`` then predates ``timestamp``; see
:attr:`XraySnapshot.labelmap_is_current`) and drops it otherwise.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..frames import LEVELS, XrayImage
from .geometry import CArmGeometry, load_carm_geometry

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class XraySnapshot:
    """An immutable view of the cache at one version (arrays are read-only).

    Attributes
    ----------
    version : int
        Increases by one with every accepted change (0 = nothing yet).
    pixels : (H, W) ndarray or None
        The X-ray image as received.
    labelmap : (H, W) uint8 ndarray or None
        0 background, 1..5 = L1..L5.
    geometry : CArmGeometry or None
    timestamp : float
        Image time, s (NaN before the first image).
    labelmap_timestamp : float
        Labelmap time, s (NaN when there is none).
    pixel_spacing_mm : (2,) float ndarray or None
        Pixel size (column, row) the image arrived with (from its ijk-to-world matrix), mm.
    levels : tuple of str
        Levels present in the labelmap, in L1..L5 order.
    """

    version: int = 0
    pixels: np.ndarray | None = None
    labelmap: np.ndarray | None = None
    geometry: CArmGeometry | None = None
    timestamp: float = float("nan")
    labelmap_timestamp: float = float("nan")
    pixel_spacing_mm: np.ndarray | None = None
    levels: tuple[str, ...] = field(default=())

    @property
    def ready(self) -> bool:
        """True when image, labelmap and geometry are all known (back-projection can run)."""
        return self.pixels is not None and self.labelmap is not None and self.geometry is not None

    @property
    def labelmap_is_current(self) -> bool:
        """True when the labelmap is at least as new as the image (not left over from an older one)."""
        return self.labelmap is not None and not self.labelmap_timestamp < self.timestamp

    def to_xray_image(self) -> XrayImage:
        """The snapshot as a :class:`~usx_stream.frames.XrayImage` (raises if there is no image)."""
        if self.pixels is None:
            raise ValueError("XraySnapshot: no X-ray image has been received yet")
        spacing = self.geometry.pixel_spacing_mm if self.geometry is not None else self.pixel_spacing_mm
        return XrayImage(pixels=self.pixels, labelmap=self.labelmap,
                         pixel_spacing_mm=None if spacing is None else np.array(spacing),
                         timestamp=self.timestamp, geometry=self.geometry)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)  # the sender may reuse its buffer
    a.setflags(write=False)
    return a


def _single_slice(value, name: str) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim == 4 and a.shape[0] == 1 and a.shape[3] == 1:  # (1, H, W, 1): one scalar component
        a = a[..., 0]
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"{name}: expected a non-empty (H, W) image or a (1, H, W) single slice, got shape {a.shape}")
    return a


def validate_pixels(pixels) -> np.ndarray:
    """``(H, W)`` X-ray pixels, read-only copy; raises ``ValueError`` naming what is wrong."""
    a = _single_slice(pixels, "pixels")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
        raise ValueError(f"pixels: expected real numbers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        bad = np.argwhere(~np.isfinite(a))
        if len(bad):
            r, c = bad[0]
            raise ValueError(f"pixels: non-finite value {a[r, c]} at row {r}, column {c} ({len(bad)} in all)")
    return _frozen(a)


def validate_labelmap(labelmap) -> np.ndarray:
    """``(H, W) uint8`` labelmap with values 0..5, read-only copy; raises ``ValueError`` naming the value."""
    a = _single_slice(labelmap, "labelmap")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_):
        raise ValueError(f"labelmap: expected integer labels, got dtype {a.dtype}")
    values = np.unique(a)
    bad = values[~np.isin(values, np.arange(len(LEVELS) + 1))]
    if len(bad):
        value = bad[0].item()
        r, c = np.argwhere(a == value)[0] if value == value else np.argwhere(np.isnan(a))[0]
        found = (f"found labels {values.tolist()}" if len(values) <= 12 else
                 f"found {len(values)} distinct values from {values[0]:g} to {values[-1]:g}: an image, not a "
                 f"labelmap (image and labelmap swapped?)")
        raise ValueError(f"labelmap: label {value:g} outside 0..{len(LEVELS)} (0 background, 1..5 = L1..L5) at "
                         f"row {r}, column {c}; {found}")
    return _frozen(a.astype(np.uint8))


def levels_present(labelmap: np.ndarray | None) -> tuple[str, ...]:
    """Levels (``"L1"`` .. ``"L5"``) with at least one labelled pixel."""
    if labelmap is None:
        return ()
    counts = np.bincount(np.asarray(labelmap, dtype=np.uint8).ravel(), minlength=len(LEVELS) + 1)
    return tuple(level for level, n in zip(LEVELS, counts[1:]) if n > 0)


def spacing_from_ijk_to_world(ijk_to_world) -> np.ndarray:
    """``(2,)`` pixel size (column, row), mm: the norms of the i and j columns of a 4x4 ijk-to-world."""
    m = np.asarray(ijk_to_world, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"ijk_to_world: expected a finite 4x4 matrix, got shape {m.shape}")
    return np.linalg.norm(m[:3, :2], axis=0)


class XrayCache:
    """Thread-safe holder of the newest valid X-ray, labelmap and C-arm geometry.

    Parameters
    ----------
    geometry : CArmGeometry, optional, keyword-only
        Initial C-arm geometry (e.g. :meth:`from_calibration`).
    image_device, labelmap_device : str, keyword-only
        OpenIGTLink device names of the X-ray image and of its labelmap.
    """

    def __init__(self, *, geometry: CArmGeometry | None = None, image_device: str = "Xray",
                 labelmap_device: str = "XrayLabelmap") -> None:
        if not image_device or not labelmap_device or image_device == labelmap_device:
            raise ValueError(f"image_device / labelmap_device: expected two different non-empty names, got "
                             f"{image_device!r} and {labelmap_device!r}")
        self.image_device = image_device
        self.labelmap_device = labelmap_device
        # _state and the counters are written by any updating thread under _cond; readers take
        # _state (an immutable snapshot) under the same lock.
        self._cond = threading.Condition()
        self._state = XraySnapshot(geometry=geometry)
        self.rejected = 0
        self.last_error: str | None = None

    @classmethod
    def from_calibration(cls, path: str | Path, **kwargs) -> "XrayCache":
        """A cache whose geometry is read from a C-arm calibration file (``calibration/*.json``)."""
        return cls(geometry=load_carm_geometry(path), **kwargs)

    @property
    def version(self) -> int:
        with self._cond:
            return self._state.version

    def snapshot(self) -> XraySnapshot:
        """The current state (immutable; cheap)."""
        with self._cond:
            return self._state

    def wait_for_update(self, after_version: int, timeout_s: float | None = None) -> XraySnapshot | None:
        """Block until ``version > after_version``; the new snapshot, or None on timeout."""
        with self._cond:
            if self._cond.wait_for(lambda: self._state.version > after_version, timeout=timeout_s):
                return self._state
            return None

    def set_geometry(self, geometry: CArmGeometry) -> int:
        """Replace the C-arm geometry (e.g. after ``calibrate-xray``); returns the new version."""
        if not isinstance(geometry, CArmGeometry):
            raise ValueError(f"geometry: expected a CArmGeometry, got {type(geometry).__name__}")
        return self.update(geometry=geometry)

    def update(self, *, pixels=None, labelmap=None, geometry: CArmGeometry | None = None,
               timestamp: float | None = None, pixel_spacing_mm=None) -> int:
        """Validate and apply any of image, labelmap and geometry; returns the new version.

        Parameters
        ----------
        pixels : (H, W) or (1, H, W) array_like, optional, keyword-only
        labelmap : (H, W) or (1, H, W) integer array_like, optional, keyword-only
            Values 0..5.
        geometry : CArmGeometry, optional, keyword-only
        timestamp : float, optional, keyword-only
            Acquisition time of the image and/or labelmap, s (default: the previous image time, or 0).
        pixel_spacing_mm : (2,) array_like, optional, keyword-only
            Pixel size the image came with (column, row), mm.

        Raises
        ------
        ValueError
            Naming the field and the value; the cache is left unchanged.
        """
        try:
            new_pixels = None if pixels is None else validate_pixels(pixels)
            new_labels = None if labelmap is None else validate_labelmap(labelmap)
            if geometry is not None and not isinstance(geometry, CArmGeometry):
                raise ValueError(f"geometry: expected a CArmGeometry, got {type(geometry).__name__}")
            spacing = None if pixel_spacing_mm is None else _spacing(pixel_spacing_mm)
            if timestamp is not None and not np.isfinite(float(timestamp)):
                raise ValueError(f"timestamp: expected a finite time in s, got {timestamp!r}")
            with self._cond:
                state = _merged(self._state, new_pixels, new_labels, geometry, timestamp, spacing)
                self._state = state
                self._cond.notify_all()
        except ValueError as e:
            with self._cond:
                self.rejected += 1
                self.last_error = str(e)
            log.warning("X-ray update rejected, keeping version %d: %s", self.version, e)
            raise
        log.info("X-ray cache version %d: image %s, levels %s", state.version,
                 None if state.pixels is None else state.pixels.shape, ",".join(state.levels) or "none")
        return state.version

    def update_from_igtl(self, device_name: str, voxels, ijk_to_world=None, *, timestamp: float = 0.0) -> int:
        """Apply decoded OpenIGTLink IMAGE content; the device name says whether it is image or labelmap.

        Parameters
        ----------
        device_name : str
            ``image_device`` or ``labelmap_device``.
        voxels : (H, W) or (1, H, W) (or (1, H, W, 1)) ndarray
            IMAGE voxels, ``voxels[k, j, i]``.
        ijk_to_world : (4, 4) array_like, optional
            The IMAGE matrix; its column norms give the pixel size.
        timestamp : float, keyword-only
            Message time, s.
        """
        spacing = None if ijk_to_world is None else spacing_from_ijk_to_world(ijk_to_world)
        if device_name == self.image_device:
            return self.update(pixels=voxels, timestamp=timestamp, pixel_spacing_mm=spacing)
        if device_name == self.labelmap_device:
            return self.update(labelmap=voxels, timestamp=timestamp)
        with self._cond:
            self.rejected += 1
            self.last_error = f"device_name: {device_name!r} is neither {self.image_device!r} nor {self.labelmap_device!r}"
        raise ValueError(self.last_error)

    def update_from_message(self, message) -> int:
        """Apply an OpenIGTLink IMAGE message (``.device_name``, ``.timestamp``, ``.content.voxels``,
        ``.content.ijk_to_world``, as :class:`usx_stream.igtl.Message` holds them)."""
        if getattr(message, "type", "IMAGE") != "IMAGE":
            raise ValueError(f"message.type: expected 'IMAGE', got {message.type!r}")
        content = message.content
        return self.update_from_igtl(message.device_name, content.voxels, content.ijk_to_world,
                                     timestamp=float(message.timestamp))

    def update_from_xray_image(self, xray: XrayImage) -> int:
        """Apply a :class:`~usx_stream.frames.XrayImage` (image, labelmap and geometry when it has them)."""
        geometry = xray.geometry if isinstance(xray.geometry, CArmGeometry) else None
        return self.update(pixels=xray.pixels, labelmap=xray.labelmap, geometry=geometry,
                           timestamp=float(xray.timestamp), pixel_spacing_mm=xray.pixel_spacing_mm)


def _spacing(value) -> np.ndarray:
    s = np.asarray(value, dtype=np.float64).reshape(-1)
    if s.shape != (2,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"pixel_spacing_mm: expected two positive values, got {np.asarray(value).tolist()}")
    return s


def _merged(old: XraySnapshot, pixels, labels, geometry, timestamp, spacing) -> XraySnapshot:
    """The state after an update, or ``ValueError`` if the parts would not fit together."""
    t_new = (old.timestamp if np.isfinite(old.timestamp) else 0.0) if timestamp is None else float(timestamp)
    image = old.pixels if pixels is None else pixels
    lm, t_lm = (old.labelmap, old.labelmap_timestamp) if labels is None else (labels, t_new)
    geo = old.geometry if geometry is None else geometry
    if labels is not None and image is not None and labels.shape != image.shape:
        raise ValueError(f"labelmap: shape {labels.shape} does not match the X-ray image shape {image.shape}")
    if pixels is not None and labels is None and lm is not None and lm.shape != pixels.shape:
        log.info("new X-ray image %s: dropping the labelmap %s of the previous one", pixels.shape, lm.shape)
        lm, t_lm = None, float("nan")
    shape = image.shape if image is not None else (lm.shape if lm is not None else None)
    if geo is not None and shape is not None and tuple(geo.detector_shape) != tuple(shape):
        what = "geometry" if geometry is not None else ("pixels" if pixels is not None else "labelmap")
        raise ValueError(f"{what}: image shape {tuple(shape)} does not match the C-arm detector "
                         f"{tuple(geo.detector_shape)} (rows, cols)")
    if geo is not None and spacing is not None and not np.allclose(spacing, 1.0) \
            and not np.allclose(spacing, geo.pixel_spacing_mm, rtol=0.01):
        log.warning("X-ray pixel size %s mm differs from the C-arm calibration's %s mm; using the calibration",
                    spacing.tolist(), geo.pixel_spacing_mm.tolist())
    return XraySnapshot(
        version=old.version + 1, pixels=image, labelmap=lm, geometry=geo,
        timestamp=t_new if pixels is not None else old.timestamp, labelmap_timestamp=t_lm,
        pixel_spacing_mm=spacing if pixels is not None else old.pixel_spacing_mm, levels=levels_present(lm))
