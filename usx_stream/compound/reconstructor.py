"""Incremental, PLUS-compatible volume reconstruction: ``add(frame)`` then ``snapshot()`` at any time.

Two semantics, chosen once:

* ``"plus"`` reproduces PLUS's VolumeReconstructor bit for bit (running mean with integer rounding,
  uint16 accumulation, fixed-point coordinates for Optimization FULL); pixels are pasted in PLUS's
  order, one thread (numba).
* ``"exact"`` is an order-independent mean with float64 coordinates and integer accumulators
  (:mod:`usx_stream.compound.paste_exact`); backends ``numba`` (1 or more threads), ``numpy`` and ``torch``
  give identical volumes.

Extra channels (any per-pixel map the size of the frame, e.g. a bone probability) are compounded
beside the intensity, each with its own compounding mode. State is a fixed set of arrays the size of
the volume: memory does not grow with the number of frames.
"""

from __future__ import annotations

import logging
import threading
from typing import Iterable, Mapping

import numpy as np

from ..frames import TrackedFrame, Volume
from ..transforms import TransformRepository
from .channels import ExactChannel, PixelLayout, PlusChannel, make_layout
from .config import COMPOUNDING_MODES, ReconstructionConfig
from .geometry import OutputGeometry, geometry_from_frames, image_to_index, row_segments

log = logging.getLogger(__name__)

SEMANTICS = ("plus", "exact")
BACKENDS = ("numba", "numpy", "torch")


def frame_image_to_reference(frame: TrackedFrame, name: str,
                             calibration: TransformRepository | Mapping | None) -> tuple[np.ndarray, bool]:
    """``(ImageToReference (4, 4), valid)`` of a frame, chained through ``calibration``."""
    if name in frame.transforms:
        return np.asarray(frame.transforms[name], dtype=np.float64), frame.transform_status.get(name, True)
    return frame.repository(calibration).get_with_status(name)


class Reconstructor:
    """Paste tracked frames into a volume incrementally.

    Parameters
    ----------
    config : ReconstructionConfig
        PLUS settings (interpolation, compounding, clipping, fan, hole filling, skip interval...).
    geometry : OutputGeometry
        Output grid (see :meth:`from_frames` to derive it from frames as PLUS does).
    semantics : {"plus", "exact"}
    backend : {"numba", "numpy", "torch"}
        ``plus`` runs on numba only.
    calibration : TransformRepository or mapping, optional
        Transforms that complete each frame's chain to ImageToReference (e.g. ImageToProbe).
    channels : mapping str -> str, optional
        Extra channels and their compounding mode (``"MEAN"``, ``"MAXIMUM"``, ``"LATEST"``).
    device : str, optional
        Torch device for ``backend="torch"`` (default: CUDA when available).
    threads : int
        ``exact``/``numba``: threads pasting bands of each frame's rows at once (bands that reach no
        common voxel, into one set of accumulators).
    """

    def __init__(self, config: ReconstructionConfig, geometry: OutputGeometry, *, semantics: str = "plus",
                 backend: str = "numba", calibration: TransformRepository | Mapping | None = None,
                 channels: Mapping[str, str] | None = None, device: str | None = None, threads: int = 1) -> None:
        if semantics not in SEMANTICS:
            raise ValueError(f"Reconstructor.semantics: expected one of {SEMANTICS}, got {semantics!r}")
        if backend not in BACKENDS:
            raise ValueError(f"Reconstructor.backend: expected one of {BACKENDS}, got {backend!r}")
        if semantics == "plus" and backend != "numba":
            raise ValueError(f"Reconstructor.backend: 'plus' semantics run on 'numba' only, got {backend!r}")
        self.channel_modes = {}
        for name, mode in (channels or {}).items():
            if str(mode).upper() not in COMPOUNDING_MODES:
                raise ValueError(f"Reconstructor.channels[{name!r}]: expected one of {COMPOUNDING_MODES}, got {mode!r}")
            self.channel_modes[str(name)] = str(mode).upper()
        self.config, self.geometry = config, geometry
        if int(threads) < 1:
            raise ValueError(f"Reconstructor.threads: must be >= 1, got {threads!r}")
        self.semantics, self.backend, self.device, self.threads = semantics, backend, device, int(threads)
        self.calibration = calibration
        self.frames_seen = self.frames_pasted = self.frames_rejected = 0
        self._layout: PixelLayout | None = None
        self._channels: dict[str, object] = {}
        # add() and snapshot() may run on different threads; numba kernels release the GIL.
        self._lock = threading.Lock()

    @classmethod
    def from_frames(cls, config: ReconstructionConfig, frames: Iterable[TrackedFrame], *,
                    extent_rounding: str = "round", calibration=None, **kwargs) -> "Reconstructor":
        """A reconstructor whose grid encloses ``frames`` (PLUS's automatic extent) unless the config
        gives OutputOrigin and OutputExtent. The frames are only scanned, not pasted: paste them with
        :meth:`add` (or call :func:`usx_stream.compound.reconstruct`, which does both).

        Raises
        ------
        TypeError
            ``frames`` is a one-shot iterator (a generator, ``iter_frames(path)``): sizing the grid would
            use it up and leave nothing to paste.
        """
        if iter(frames) is frames:
            raise TypeError("Reconstructor.from_frames: frames is a one-shot iterator "
                            f"({type(frames).__name__}); sizing the grid would consume it and leave no frame to "
                            "paste. Pass a list (list(frames)), or call usx_stream.compound.reconstruct(frames "
                            "or sequence path, ...), which sizes the grid and pastes every frame")
        return cls(config, output_geometry(config, frames, extent_rounding=extent_rounding, calibration=calibration),
                   calibration=calibration, **kwargs)

    # ------------------------------------------------------------------ ingest
    def add(self, frame: TrackedFrame, *, image_to_reference: np.ndarray | None = None,
            channels: Mapping[str, np.ndarray] | None = None) -> bool:
        """Paste one frame; returns True when it was pasted.

        A frame is skipped by SkipInterval, and rejected (counted in ``frames_rejected``) when its
        image or its ImageToReference is invalid.

        Parameters
        ----------
        frame : TrackedFrame
            ``pixels`` (H, W) in MF orientation.
        image_to_reference : (4, 4) ndarray, optional
            Overrides the frame's transforms.
        channels : mapping str -> (H, W) ndarray, optional
            Per-pixel maps for the configured extra channels; a missing map leaves its channel as is.
        """
        self.frames_seen += 1
        if (self.frames_seen - 1) % self.config.skip_interval:
            return False
        if image_to_reference is None:
            image_to_reference, valid = frame_image_to_reference(frame, self.config.image_to_reference_name,
                                                                 self.calibration)
        else:
            valid = True
        if not (valid and frame.image_status):
            self.frames_rejected += 1
            return False
        pixels = self._pixels(frame.pixels, "frame.pixels")
        m = image_to_index(image_to_reference, self.geometry)
        with self._lock:
            layout = self._layout_for(pixels.shape)
            self._channel("", pixels.dtype, self.config.compounding_mode).paste(pixels, layout, m, self.frames_pasted)
            for name, mode in self.channel_modes.items():
                if channels is None or name not in channels:
                    continue
                data = self._pixels(channels[name], f"channels[{name!r}]")
                if data.shape != pixels.shape:
                    raise ValueError(f"Reconstructor.add: channels[{name!r}] has shape {data.shape}, "
                                     f"the frame {pixels.shape}")
                self._channel(name, data.dtype, mode).paste(data, layout, m, self.frames_pasted)
            self.frames_pasted += 1
        return True

    @staticmethod
    def _pixels(pixels, what: str) -> np.ndarray:
        arr = np.asarray(pixels)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise ValueError(f"Reconstructor.add: {what} must be (H, W), got shape {arr.shape}")
        return np.ascontiguousarray(arr)

    def _layout_for(self, shape) -> PixelLayout:
        if self._layout is None or self._layout.shape != tuple(shape):
            self._layout = make_layout(tuple(shape), row_segments(self.config, tuple(shape)))
        return self._layout

    def _channel(self, name: str, dtype, mode: str):
        chan = self._channels.get(name)
        if chan is None:
            chan = self._new_channel(dtype, mode)
            self._channels[name] = chan
        return chan

    def _new_channel(self, dtype, mode: str):
        cfg, shape = self.config, self.geometry.shape_zyx
        threshold = cfg.pixel_rejection_threshold
        if self.semantics == "plus":
            return PlusChannel(shape, dtype, interpolation=cfg.interpolation, mode=mode,
                               optimization=cfg.optimization, pixel_rejection_threshold=threshold)
        if self.backend == "torch":
            from .torch_backend import TorchExactChannel

            return TorchExactChannel(shape, dtype, interpolation=cfg.interpolation, mode=mode,
                                     pixel_rejection_threshold=threshold, device=self.device)
        return ExactChannel(shape, dtype, interpolation=cfg.interpolation, mode=mode,
                            pixel_rejection_threshold=threshold, backend=self.backend, threads=self.threads)

    # ------------------------------------------------------------------ output
    def snapshot(self, *, fill_holes: bool | None = None) -> Volume:
        """The volume so far (a copy; pasting continues). ``fill_holes`` defaults to the config's.

        Returns
        -------
        Volume
            ``data`` (Z, Y, X) in the frame dtype (uint8 before any frame), ``weights`` float32 in
            whole pixels (0 = never hit, before hole filling), extra channels in ``channels``.
        """
        fill = self.config.fill_holes if fill_holes is None else bool(fill_holes)
        with self._lock:
            results = {name: chan.result() for name, chan in self._channels.items()}
        if "" not in results:
            zeros = np.zeros(self.geometry.shape_zyx, np.uint8)
            results[""] = (zeros, np.zeros(self.geometry.shape_zyx, np.float32), zeros)
        if fill and self.config.hole_filling:
            from .holes import fill_holes as fill_volume_holes  # numba: imported only when filling

            # PLUS weighs hole filling with its raw accumulation buffer (GAUSSIAN_ACCUMULATION)
            results = {name: (fill_volume_holes(v, raw, self.config.hole_filling), w, raw)
                       for name, (v, w, raw) in results.items()}
        data, weights, _ = results.pop("")
        return Volume(data=data, origin_mm=self.geometry.origin_mm, spacing_mm=self.geometry.spacing_mm,
                      weights=weights, channels={name: v for name, (v, _, _) in results.items()},
                      frame=self.config.reference_coordinate_frame)

    def channel_volume(self, name: str, *, fill_holes: bool = False) -> Volume:
        """Only channel ``name`` (e.g. ``"bone"``), as ``data`` and as ``channels[name]``.

        A live consumer that needs one map pays for one channel instead of all of them (the intensity
        MEAN is the costliest to finalise). ``fill_holes`` applies the config's ``hole_filling`` to that
        channel (voxels no pixel reached), as :meth:`snapshot` does to every channel.
        """
        if name not in self.channel_modes:
            raise ValueError(f"Reconstructor.channel_volume: no channel {name!r} (has {sorted(self.channel_modes)})")
        fill = bool(fill_holes) and bool(self.config.hole_filling)
        with self._lock:
            chan = self._channels.get(name)
            if chan is None:
                values, raw = np.zeros(self.geometry.shape_zyx, np.float32), None
            elif fill:  # the hole filling needs the weights: copies of values and weights
                values, _, raw = chan.result()
            else:
                values, raw = chan.current_values(), None
        if raw is not None:
            from .holes import fill_holes as fill_volume_holes  # numba: imported only when filling

            values = fill_volume_holes(values, raw, self.config.hole_filling)
        return Volume(data=values, origin_mm=self.geometry.origin_mm, spacing_mm=self.geometry.spacing_mm,
                      channels={name: values}, frame=self.config.reference_coordinate_frame)

    def device_channel_volume(self, name: str) -> Volume | None:
        """Channel ``name`` as :meth:`channel_volume` gives it without hole filling, but with ``data`` and
        ``channels[name]`` the torch tensor on the compounding device (no copy to the host); None unless the
        reconstructor compounds with the torch backend. For a consumer that runs on that device (the node's
        bone points); the hole filling runs on the host and has no such path."""
        if name not in self.channel_modes:
            raise ValueError(f"Reconstructor.device_channel_volume: no channel {name!r} "
                             f"(has {sorted(self.channel_modes)})")
        if self.backend != "torch":
            return None
        import torch

        from .torch_backend import default_device

        with self._lock:
            chan = self._channels.get(name)
            if chan is None:
                device = torch.device(self.device) if self.device is not None else default_device()
                values = torch.zeros(self.geometry.shape_zyx, dtype=torch.float32, device=device)
            else:
                values = chan.device_values()
            done = torch.cuda.current_stream(values.device).record_event() if values.is_cuda else None
        if done is not None:  # the values are computed when this returns (a caller's timing is the finalize's)
            done.synchronize()
        return Volume(data=values, origin_mm=self.geometry.origin_mm, spacing_mm=self.geometry.spacing_mm,
                      channels={name: values}, frame=self.config.reference_coordinate_frame)

    def grow(self, geometry: OutputGeometry) -> None:
        """Move every pasted frame onto ``geometry``, a larger grid on the same voxel lattice (same spacing,
        origin a whole number of voxels away) that contains the current one; values are kept exactly.

        Raises
        ------
        ValueError
            ``geometry`` is not such a grid, or a channel cannot grow (the torch backend, ``plus``
            semantics: their state is not kept voxel by voxel here).
        """
        old = self.geometry
        if not np.allclose(geometry.spacing_mm, old.spacing_mm):
            raise ValueError(f"Reconstructor.grow: spacing {geometry.spacing_mm.tolist()} differs from "
                             f"{old.spacing_mm.tolist()}")
        shift = (old.origin_mm - geometry.origin_mm) / old.spacing_mm
        if not np.allclose(shift, np.round(shift), atol=1e-6):
            raise ValueError(f"Reconstructor.grow: origin {geometry.origin_mm.tolist()} is off the voxel lattice")
        off_xyz = np.round(shift).astype(int)
        with self._lock:
            grown = {}
            for name, chan in self._channels.items():
                if not hasattr(chan, "grown"):
                    raise ValueError(f"Reconstructor.grow: {type(chan).__name__} channels cannot grow")
                grown[name] = chan.grown(geometry.shape_zyx, tuple(off_xyz[::-1]))
            self._channels, self.geometry = grown, geometry

    def reset(self) -> None:
        """Forget every pasted frame (same geometry and settings)."""
        with self._lock:
            self._channels.clear()
            self.frames_seen = self.frames_pasted = self.frames_rejected = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulators (fixed by the volume size and the channels)."""
        return sum(chan.nbytes for chan in self._channels.values())


def output_geometry(config: ReconstructionConfig, frames: Iterable[TrackedFrame], *, extent_rounding: str = "round",
                    calibration=None) -> OutputGeometry:
    """The grid PLUS would use: OutputOrigin/OutputExtent when configured, else from the valid frames."""
    if config.output_extent is not None and config.output_origin is not None:
        return OutputGeometry.from_extent(config.output_origin, config.output_spacing, config.output_extent)
    shape = None
    matrices = []
    for frame in frames:
        m, valid = frame_image_to_reference(frame, config.image_to_reference_name, calibration)
        if valid:
            matrices.append(m)
            shape = np.asarray(frame.pixels).shape[:2]
    if shape is None:
        raise ValueError(f"output_geometry: no frame with a valid {config.image_to_reference_name}")
    return geometry_from_frames(matrices, shape, config, extent_rounding=extent_rounding)
