"""Per-channel compounding state: fixed-size accumulators, one class per semantics.

A channel owns the arrays of one compounded quantity (the intensity, or an extra per-pixel map such as
a bone probability) and nothing else: its memory is set by the volume size, never by the number of
frames pasted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import paste_exact

# numba kernels are imported where used: the torch backend must run where only torch is installed.


@dataclass(frozen=True)
class PixelLayout:
    """What a frame of one size contributes, precomputed once per frame size.

    Attributes
    ----------
    shape : (H, W)
    plus_segments : (H, 4) int64
        PLUS's pasted column ranges per row (may overlap as PLUS's do).
    exact_segments : (H, 4) int64
        The same pixels, each once.
    jj, ii : (N,) int64
        Rows and columns of those pixels (numpy backend).
    pixel_index : (N,) int64
        ``jj * W + ii``.
    """

    shape: tuple[int, int]
    plus_segments: np.ndarray
    exact_segments: np.ndarray
    jj: np.ndarray
    ii: np.ndarray
    pixel_index: np.ndarray


class PlusChannel:
    """PLUS-semantics state: values in the frame dtype and a uint16 accumulation buffer."""

    def __init__(self, shape_zyx, dtype, *, interpolation: str, mode: str, optimization: str,
                 pixel_rejection_threshold: float | None) -> None:
        self.dtype = np.dtype(dtype)
        self.values = np.zeros(shape_zyx, dtype=self.dtype)
        self.acc = np.zeros(shape_zyx, dtype=np.uint16)
        self.interpolation, self.mode, self.optimization = interpolation, mode, optimization
        self.threshold = pixel_rejection_threshold

    def paste(self, image: np.ndarray, layout: PixelLayout, image_to_index: np.ndarray, frame_number: int) -> int:
        from .paste_numba import paste_plus

        return paste_plus(image, layout.plus_segments, image_to_index, self.values, self.acc,
                          interpolation=self.interpolation, mode=self.mode, optimization=self.optimization,
                          pixel_rejection_threshold=self.threshold)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, weights float32 in whole pixels, raw accumulation)``, copies; zero weight = hole.

        The raw accumulation (PLUS's uint16 buffer) is what PLUS's hole filling weighs with.
        """
        return self.values.copy(), self.acc.astype(np.float32) / 256.0, self.acc.copy()

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.acc.nbytes


class ExactChannel:
    """Exact-semantics state (int64 accumulators), pasted with numba or numpy.

    With ``threads > 1`` (numba) each frame's rows are cut into ``threads`` bands pasted at once, each
    band into accumulators of its own (merged when a result is read): memory is ``threads`` times
    one state, still independent of the number of frames.
    """

    def __init__(self, shape_zyx, dtype, *, interpolation: str, mode: str,
                 pixel_rejection_threshold: float | None, backend: str = "numba", threads: int = 1) -> None:
        if backend not in ("numba", "numpy"):
            raise ValueError(f"ExactChannel.backend: expected 'numba' or 'numpy', got {backend!r}")
        if int(threads) < 1:
            raise ValueError(f"ExactChannel.threads: must be >= 1, got {threads}")
        self.shape = tuple(int(s) for s in shape_zyx)
        self.dims = (self.shape[2], self.shape[1], self.shape[0])
        self.dtype = np.dtype(dtype)
        self.interpolation, self.mode, self.backend = interpolation, mode, backend
        self.threshold = pixel_rejection_threshold
        n_states = int(threads) if backend == "numba" else 1
        self.states = [paste_exact.new_state(int(np.prod(self.shape)), self.dims, mode) for _ in range(n_states)]
        self._dummy = np.zeros(1, np.int64)
        if backend == "numba":
            from . import exact_numba

            self._kernels = exact_numba
            self._options = exact_numba.pixel_options(self.dtype, pixel_rejection_threshold)
        self._pool = ThreadPoolExecutor(max_workers=n_states - 1) if n_states > 1 else None

    def paste(self, image: np.ndarray, layout: PixelLayout, image_to_index: np.ndarray, frame_number: int) -> int:
        if self.backend == "numpy":
            values = image[layout.jj, layout.ii]
            keep = values >= self.threshold if self.threshold is not None else slice(None)
            return paste_exact.paste_exact_numpy(
                paste_exact.quantize_values(values[keep]), layout.jj[keep], layout.ii[keep], image_to_index,
                self.states[0], interpolation=self.interpolation, mode=self.mode, frame_number=frame_number,
                pixel_index=layout.pixel_index[keep])
        m = np.ascontiguousarray(np.asarray(image_to_index, dtype=np.float64)[:3])
        bounds = np.linspace(0, image.shape[0], len(self.states) + 1).astype(int)

        def band(t: int) -> int:
            s = self.states[t]
            return int(self._kernels.paste_exact_rows(
                image, layout.exact_segments, m, bounds[t], bounds[t + 1], self.dims, s.get("sum", self._dummy),
                s["weight"], s.get("value", self._dummy), s.get("key", self._dummy),
                self._kernels.MODE_CODES[self.mode], self.interpolation == "LINEAR", frame_number, self._options))

        if self._pool is None:
            return band(0)
        futures = [self._pool.submit(band, t) for t in range(1, len(self.states))]
        return band(0) + sum(f.result() for f in futures)

    def merged_state(self) -> dict:
        """One state equal to the bands' states combined (a copy)."""
        first = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.states[0].items()}
        for other in self.states[1:]:
            first["weight"] += other["weight"]
            if self.mode == "MEAN":
                first["sum"] += other["sum"]
            elif self.mode == "MAXIMUM":
                np.maximum(first["value"], other["value"], out=first["value"])
            else:
                newer = other["key"] > first["key"]
                first["key"][newer] = other["key"][newer]
                first["value"][newer] = other["value"][newer]
        return first

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, weights float32 in whole pixels, raw integer weights)``."""
        state = self.merged_state()
        values = paste_exact.finalize_values(state, self.mode, self.dtype).reshape(self.shape)
        unit = paste_exact.LINEAR_UNIT if self.interpolation == "LINEAR" else 1
        raw = state["weight"].reshape(self.shape)
        return values, (raw.astype(np.float64) / unit).astype(np.float32), raw

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for s in self.states for a in s.values() if isinstance(a, np.ndarray))


def make_layout(shape, plus_segments: np.ndarray) -> PixelLayout:
    """:class:`PixelLayout` for frames of ``shape`` from PLUS's row segments."""
    from .geometry import segment_mask

    height, width = shape
    mask = segment_mask(plus_segments, width)
    jj, ii = np.nonzero(mask)
    return PixelLayout((height, width), plus_segments, paste_exact.mask_segments(mask),
                       jj.astype(np.int64), ii.astype(np.int64), (jj * width + ii).astype(np.int64))
