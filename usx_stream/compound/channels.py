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

    def current_values(self) -> np.ndarray:
        """The compounded values alone (a copy); call with pasting stopped (the reconstructor's lock)."""
        return self.values.copy()

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.acc.nbytes


class ExactChannel:
    """Exact-semantics state (int64 accumulators), pasted with numba or numpy.

    With ``threads > 1`` (numba) each frame's rows are cut into bands far enough apart that no voxel
    is reached from two of them (:func:`usx_stream.compound.exact_numba.row_bands`), pasted at once
    into the one state; the rows between the bands follow. Memory is one state whatever ``threads``.
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
        self.threads = int(threads) if backend == "numba" else 1
        # the numba span kernels update a voxel's sum and weight side by side
        self.state = paste_exact.new_state(int(np.prod(self.shape)), self.dims, mode, interleaved=backend == "numba")
        if backend == "numba":
            from . import exact_numba

            self._kernels = exact_numba
            self._options = exact_numba.pixel_options(self.dtype, pixel_rejection_threshold)
            self._mode_code = exact_numba.MODE_CODES[mode]
        self._pool = ThreadPoolExecutor(max_workers=self.threads - 1) if self.threads > 1 else None
        self._cum_pixels: tuple[PixelLayout, np.ndarray] | None = None

    def paste(self, image: np.ndarray, layout: PixelLayout, image_to_index: np.ndarray, frame_number: int) -> int:
        if self.backend == "numpy":
            values = image[layout.jj, layout.ii]
            keep = values >= self.threshold if self.threshold is not None else slice(None)
            return paste_exact.paste_exact_numpy(
                paste_exact.quantize_values(values[keep]), layout.jj[keep], layout.ii[keep], image_to_index,
                self.state, interpolation=self.interpolation, mode=self.mode, frame_number=frame_number,
                pixel_index=layout.pixel_index[keep])
        m = np.ascontiguousarray(np.asarray(image_to_index, dtype=np.float64)[:3])
        linear = self.interpolation == "LINEAR"

        def rows(j0: int, j1: int) -> int:
            return int(self._kernels.paste_exact_rows(image, layout.exact_segments, m, j0, j1, self.state,
                                                      self._mode_code, linear, frame_number, self._options))

        if self._pool is None:
            return rows(0, image.shape[0])
        bands, gaps = self._kernels.row_bands(self._cumulative_pixels(layout),
                                              self._kernels.conflict_gap(m, linear), self.threads)
        return self._run_at_once(rows, bands) + self._run_at_once(rows, gaps)

    def _run_at_once(self, rows, ranges) -> int:
        """``rows(j0, j1)`` for every range, the first on this thread, the others on the pool."""
        if not ranges:
            return 0
        futures = [self._pool.submit(rows, j0, j1) for j0, j1 in ranges[1:]]
        return rows(*ranges[0]) + sum(f.result() for f in futures)

    def _cumulative_pixels(self, layout: PixelLayout) -> np.ndarray:
        """Pasted pixels of the rows before each row (cached per layout: the bands are balanced by it)."""
        if self._cum_pixels is None or self._cum_pixels[0] is not layout:
            segs = layout.exact_segments
            per_row = np.maximum(segs[:, 1] - segs[:, 0] + 1, 0) + np.maximum(segs[:, 3] - segs[:, 2] + 1, 0)
            self._cum_pixels = (layout, np.concatenate([[0], np.cumsum(per_row)]))
        return self._cum_pixels[1]

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, weights float32 in whole pixels, raw integer weights)``."""
        # contiguous copies: pasting may go on while the result is used
        state = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.state.items() if k != "pair"}
        values = paste_exact.finalize_values(state, self.mode, self.dtype).reshape(self.shape)
        unit = paste_exact.LINEAR_UNIT if self.interpolation == "LINEAR" else 1
        raw = state["weight"].reshape(self.shape)
        return values, (raw.astype(np.float64) / unit).astype(np.float32), raw

    def current_values(self) -> np.ndarray:
        """The compounded values alone, finalised straight from the live state (no copy of the
        accumulators); call with pasting stopped (the reconstructor's lock)."""
        if paste_exact.value_scale(self.dtype) != 1:
            return self._live_float_values().reshape(self.shape)
        state = {k: v for k, v in self.state.items() if k != "pair"}
        return paste_exact.finalize_values(state, self.mode, self.dtype).reshape(self.shape)

    def _live_float_values(self, chunk: int = 1 << 16) -> np.ndarray:
        """:func:`paste_exact.finalize_values` of a float channel, bit for bit, in cache-sized chunks with
        small reused buffers instead of volume-sized temporaries (42 -> 15 ms for a 3.9-Mvoxel MEAN; the
        node reads its bone channel like this on every update).

        MEAN divides by ``max(weight, 1)``: a voxel no pixel reached has sum 0 as well as weight 0, so it
        gives its 0 without a mask. MAXIMUM/LATEST zero the voxels never reached (they hold the initial
        minimum).
        """
        w = self.state["weight"]
        top = self.state["sum"] if self.mode == "MEAN" else self.state["value"]
        out = np.empty(w.shape, dtype=self.dtype)
        w1, q = np.empty(chunk, np.int64), np.empty(chunk, np.float64)
        scale = paste_exact.value_scale(self.dtype)
        for a in range(0, len(w), chunk):
            b = min(a + chunk, len(w))
            n = b - a
            if self.mode == "MEAN":
                np.maximum(w[a:b], 1, out=w1[:n])
                np.divide(top[a:b], w1[:n], out=q[:n])             # int64 / int64 -> float64, as finalize
                np.divide(q[:n], scale, out=out[a:b], casting="same_kind")
            else:
                np.divide(top[a:b], scale, out=q[:n])              # float64(value) / scale, as finalize
                q[:n][w[a:b] == 0] = 0.0
                out[a:b] = q[:n]
        return out

    def grown(self, shape_zyx, offset_zyx) -> "ExactChannel":
        """A channel over a larger grid holding this one's accumulators at voxel ``offset_zyx`` (z, y, x):
        every pasted value is kept exactly; the new voxels are unreached. For a sweep that leaves its grid."""
        shape, off = tuple(int(v) for v in shape_zyx), tuple(int(v) for v in offset_zyx)
        if any(o < 0 or o + n > m for o, n, m in zip(off, self.shape, shape)):
            raise ValueError(f"ExactChannel.grown: {self.shape} at {off} does not fit in {shape}")
        out = ExactChannel(shape, self.dtype, interpolation=self.interpolation, mode=self.mode,
                           pixel_rejection_threshold=self.threshold, backend=self.backend, threads=self.threads)
        box = tuple(slice(o, o + n) for o, n in zip(off, self.shape))
        for key, old in self.state.items():
            if key in ("dims", "sum", "weight") and "pair" in self.state:
                continue  # views of "pair"
            if key == "dims":
                continue
            per_voxel = old.size // int(np.prod(self.shape))      # 2 for the interleaved sum/weight pair
            new = out.state[key].reshape(shape + ((per_voxel,) if per_voxel > 1 else ()))
            new[box] = old.reshape(self.shape + ((per_voxel,) if per_voxel > 1 else ()))
        return out

    @property
    def nbytes(self) -> int:
        # views (the interleaved sum and weight) are counted in the array they view
        return sum(a.nbytes for a in self.state.values() if isinstance(a, np.ndarray) and a.base is None)


def make_layout(shape, plus_segments: np.ndarray) -> PixelLayout:
    """:class:`PixelLayout` for frames of ``shape`` from PLUS's row segments."""
    from .geometry import segment_mask

    height, width = shape
    mask = segment_mask(plus_segments, width)
    jj, ii = np.nonzero(mask)
    return PixelLayout((height, width), plus_segments, paste_exact.mask_segments(mask),
                       jj.astype(np.int64), ii.astype(np.int64), (jj * width + ii).astype(np.int64))
