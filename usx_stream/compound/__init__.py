"""PLUS-compatible volume reconstruction (compounding) of tracked 2D frames.

:func:`reconstruct` compounds a sequence file, a list or an iterator of frames into one volume, PLUS's
way. ``Reconstructor`` pastes frames incrementally (``add``) and hands out volumes at any time
(``snapshot``), with PLUS's own semantics (bit for bit) or an order-independent ``exact`` mean, on
numba, numpy or torch. :class:`ReconstructionConfig` is the one config type: from a PlusDeviceSet XML
(:func:`load_device_set`), from the launch file's ``[compound]`` table (``from_launch``) or built directly.
Only numpy/torch are imported here; numba kernels load when first used.
"""

from .config import DEFAULT_HOLE_FILLING, HoleFillingElement, ReconstructionConfig, load_device_set
from .geometry import OutputGeometry, geometry_from_frames
from .reconstruct import reconstruct
from .reconstructor import Reconstructor, output_geometry

__all__ = ["DEFAULT_HOLE_FILLING", "HoleFillingElement", "OutputGeometry", "ReconstructionConfig", "Reconstructor",
           "geometry_from_frames", "load_device_set", "output_geometry", "reconstruct"]
