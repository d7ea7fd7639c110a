"""The library front door: tracked frames (or a PLUS sequence file) in, one compounded volume out.

:func:`reconstruct` does what PLUS's VolumeReconstructor does with a sequence file and a device set:
size the grid to the frames (unless the config gives OutputOrigin/OutputExtent), paste every frame,
take the snapshot (with hole filling when the config asks for it)::

    from usx_stream.compound import reconstruct
    vol = reconstruct("SpinePhantomFreehand.igs.mha",
                      device_set="PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml")
    vol.data.shape   # (Z, Y, X)

For frames that arrive one by one (a live stream), use :class:`~usx_stream.compound.Reconstructor`
(``add`` per frame, ``snapshot`` at any time).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..frames import TrackedFrame, Volume
from ..transforms import TransformRepository
from .config import ReconstructionConfig, load_device_set
from .reconstructor import Reconstructor, output_geometry

__all__ = ["reconstruct"]


def _config_and_calibration(config, device_set, spacing_mm, calibration):
    """``(ReconstructionConfig, calibration)`` from the keyword arguments of :func:`reconstruct`."""
    if device_set is not None:
        ds_config, ds_calibration = load_device_set(device_set)
        config = ds_config if config is None else config
        calibration = ds_calibration if calibration is None else calibration
    if spacing_mm is not None:
        spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
        config = (ReconstructionConfig(output_spacing=spacing) if config is None
                  else config.replace(output_spacing=spacing))
    if config is None:
        raise ValueError("reconstruct: no output spacing: give config=ReconstructionConfig(...), device_set= "
                         "(a PlusDeviceSet XML with a VolumeReconstruction element) or spacing_mm=")
    if not isinstance(config, ReconstructionConfig):
        raise TypeError(f"reconstruct: config must be a ReconstructionConfig, got {type(config).__name__}")
    return config, calibration


def reconstruct(frames_or_path: str | os.PathLike | Iterable[TrackedFrame], *,
                config: ReconstructionConfig | None = None, device_set: str | os.PathLike | None = None,
                spacing_mm: float | Sequence[float] | None = None,
                calibration: TransformRepository | None = None, semantics: str = "plus", backend: str = "numba",
                extent_rounding: str = "round", fill_holes: bool | None = None, threads: int = 1,
                device: str | None = None) -> Volume:
    """Compound tracked frames into one volume, PLUS's way.

    Parameters
    ----------
    frames_or_path : path, sequence or iterable of TrackedFrame
        A PLUS sequence file (``.igs.mha`` / ``.igs.nrrd``: read twice, one frame in memory at a time,
        as PLUS does), a list of frames, or any iterable of frames (a generator is read once into a list,
        so no frame is lost). Each frame's ``pixels`` is (H, W) in MF orientation.
    config : ReconstructionConfig, optional
        Settings; default: the device set's ``VolumeReconstruction`` element.
    device_set : path, optional
        A PlusDeviceSet XML: its ``VolumeReconstruction`` gives ``config`` (unless given) and its
        ``CoordinateDefinitions`` the ``calibration`` (unless given), e.g. ImageToProbe.
    spacing_mm : float or (3,) floats, optional
        Voxel size, mm; overrides the config's OutputSpacing (alone, it makes a default config).
    calibration : TransformRepository, optional
        Completes each frame's chain to ImageToReference.
    semantics : {"plus", "exact"}
        ``plus``: PLUS's volumes bit for bit; ``exact``: order-independent mean.
    backend : {"numba", "numpy", "torch"}
        ``exact`` semantics only.
    extent_rounding : {"round", "truncate", "lattice"}
        How the fitted extent is rounded: PLUS 2.x (round), older PLUS (truncate), origin on the lattice.
    fill_holes : bool, optional
        Hole filling on the result; default: the config's ``fill_holes``.
    threads : int
        ``exact``/``numba``: threads pasting each frame.
    device : str, optional
        Torch device for ``backend="torch"``.

    Returns
    -------
    Volume
        ``data`` (Z, Y, X) in the frames' dtype, ``weights`` (Z, Y, X) float32 in whole pixels,
        ``origin_mm`` and ``spacing_mm`` (3,) in the config's reference frame (mm).

    Raises
    ------
    ValueError
        No spacing given; no frame with a valid ImageToReference (the grid cannot be sized); bad files
        (:class:`~usx_stream.errors.InputError` naming the file).
    TypeError
        ``frames_or_path`` is neither a path nor an iterable of frames.
    """
    config, calibration = _config_and_calibration(config, device_set, spacing_mm, calibration)
    if isinstance(frames_or_path, (str, os.PathLike)):
        from ..io.sequence import iter_frames

        path = Path(frames_or_path)
        frames = lambda: iter_frames(path)  # noqa: E731 (two passes, one frame in memory)
    elif isinstance(frames_or_path, Iterable):
        held = frames_or_path if isinstance(frames_or_path, Sequence) else list(frames_or_path)
        frames = lambda: held  # noqa: E731
    else:
        raise TypeError("reconstruct: frames_or_path must be a sequence file path or an iterable of TrackedFrame, "
                        f"got {type(frames_or_path).__name__}")
    geometry = output_geometry(config, frames(), extent_rounding=extent_rounding, calibration=calibration)
    recon = Reconstructor(config, geometry, semantics=semantics, backend=backend, calibration=calibration,
                          device=device, threads=threads)
    for frame in frames():
        recon.add(frame)
    return recon.snapshot(fill_holes=fill_holes)
