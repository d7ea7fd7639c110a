"""``exact`` semantics on torch (GPU, or CPU): the same volumes as the numpy and numba backends.

Every step is an elementwise op in the same order as :mod:`usx_stream.compound.paste_exact`
(no fused multiply-add: each product and sum is its own op), and every accumulation is an integer
``index_add_`` or an ``amax`` scatter, so the result is exact and independent of the GPU's
scheduling.
"""

from __future__ import annotations

import numpy as np
import torch

from . import paste_exact
from .paste_exact import FLOAT_UNIT, KEY_FRAME_SHIFT, KEY_WEIGHT_SHIFT, LINEAR_UNIT


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchExactChannel:
    """Exact-semantics accumulators as int64 tensors on ``device``."""

    def __init__(self, shape_zyx, dtype, *, interpolation: str, mode: str,
                 pixel_rejection_threshold: float | None, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.shape = tuple(int(s) for s in shape_zyx)
        self.dims = (self.shape[2], self.shape[1], self.shape[0])
        self.dtype = np.dtype(dtype)
        self.interpolation, self.mode = interpolation, mode
        self.threshold = pixel_rejection_threshold
        n = int(np.prod(self.shape))
        kw = dict(dtype=torch.int64, device=self.device)
        self.state = {"weight": torch.zeros(n, **kw)}
        if mode == "MEAN":
            self.state["sum"] = torch.zeros(n, **kw)
        else:
            self.state["value"] = torch.full((n,), torch.iinfo(torch.int64).min, **kw)
        if mode == "LATEST":
            self.state["key"] = torch.full((n,), -1, **kw)
        self._layout_key = None
        self._pixels = None

    def _pixel_tensors(self, layout):
        if self._layout_key is not layout:
            to = dict(device=self.device)
            self._pixels = (torch.as_tensor(layout.jj, **to), torch.as_tensor(layout.ii, **to),
                            torch.as_tensor(layout.pixel_index, **to))
            self._layout_key = layout
        return self._pixels

    def _values(self, image: np.ndarray, jj, ii):
        img = torch.as_tensor(np.ascontiguousarray(image)).to(self.device, non_blocking=True)
        raw = img[jj, ii]
        keep = raw >= self.threshold if self.threshold is not None else None
        if self.dtype.kind in "iu":
            vq = raw.to(torch.int64)
        else:
            vq = torch.round(raw.to(torch.float64) * FLOAT_UNIT).to(torch.int64)  # half-even, as np.rint
        return vq, keep

    def paste(self, image: np.ndarray, layout, image_to_index: np.ndarray, frame_number: int) -> int:
        jj, ii, pix = self._pixel_tensors(layout)
        vq, keep = self._values(image, jj, ii)
        if keep is not None:
            jj, ii, pix, vq = jj[keep], ii[keep], pix[keep], vq[keep]
        m = np.asarray(image_to_index, dtype=np.float64)
        jf, if_ = jj.to(torch.float64), ii.to(torch.float64)
        p = [(jf * float(m[k, 1]) + float(m[k, 3])) + if_ * float(m[k, 0]) for k in range(3)]
        nx, ny, nz = self.dims
        if self.interpolation == "NEAREST_NEIGHBOR":
            k = [torch.floor(c + 0.5).to(torch.int64) for c in p]
            inside = (k[0] >= 0) & (k[0] < nx) & (k[1] >= 0) & (k[1] < ny) & (k[2] >= 0) & (k[2] < nz)
            idx = ((k[2] * ny + k[1]) * nx + k[0])[inside]
            self._accumulate(idx, torch.ones_like(idx), vq[inside], pix[inside], frame_number)
            return int(inside.sum())
        base = [torch.floor(c) for c in p]
        f = [c - b for c, b in zip(p, base)]
        k0 = [b.to(torch.int64) for b in base]
        hit = torch.zeros_like(vq, dtype=torch.bool)
        for c in range(8):
            o = ((c >> 2) & 1, (c >> 1) & 1, c & 1)
            w = [f[a] if o[a] else 1.0 - f[a] for a in range(3)]
            wq = torch.floor(((w[0] * w[1]) * w[2]) * LINEAR_UNIT + 0.5).to(torch.int64)
            x, y, z = k0[0] + o[0], k0[1] + o[1], k0[2] + o[2]
            valid = (wq > 0) & (x >= 0) & (x < nx) & (y >= 0) & (y < ny) & (z >= 0) & (z < nz)
            hit |= valid
            if self.mode == "MAXIMUM":
                valid &= wq >= LINEAR_UNIT // 8
            idx = ((z * ny + y) * nx + x)[valid]
            self._accumulate(idx, wq[valid], vq[valid], pix[valid], frame_number)
        return int(hit.sum())

    def _accumulate(self, idx, w, v, pix, frame_number: int) -> None:
        s = self.state
        if self.mode == "MEAN":
            s["sum"].index_add_(0, idx, w * v)
        elif self.mode == "MAXIMUM":
            s["value"].scatter_reduce_(0, idx, v, reduce="amax")
        else:
            key = (w << KEY_WEIGHT_SHIFT) | pix | (int(frame_number) << KEY_FRAME_SHIFT)
            s["key"].scatter_reduce_(0, idx, key, reduce="amax")
            won = s["key"][idx] == key
            s["value"][idx[won]] = v[won]
        s["weight"].index_add_(0, idx, w)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, weights float32 in whole pixels, raw integer weights)`` on the host."""
        host = {k: t.cpu().numpy() for k, t in self.state.items()}
        host["dims"] = self.dims
        values = paste_exact.finalize_values(host, self.mode, self.dtype).reshape(self.shape)
        unit = LINEAR_UNIT if self.interpolation == "LINEAR" else 1
        raw = host["weight"].reshape(self.shape)
        return values, (raw.astype(np.float64) / unit).astype(np.float32), raw

    def current_values(self) -> np.ndarray:
        """The compounded values alone, on the host."""
        return self.result()[0]

    def device_values(self) -> torch.Tensor:
        """The compounded values as a (Z, Y, X) tensor on ``device``, no host copy: what
        :meth:`current_values` returns, value for value (a new tensor; pasting may go on)."""
        return finalize_values_torch(self.state, self.mode, self.dtype).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                np.dtype(np.uint8): torch.uint8, np.dtype(np.int8): torch.int8, np.dtype(np.int16): torch.int16,
                np.dtype(np.uint16): torch.uint16, np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64}


def finalize_values_torch(state: dict, mode: str, dtype) -> torch.Tensor:
    """:func:`usx_stream.compound.paste_exact.finalize_values` on the state's device: the same
    operations in the same precision (``S / W`` as float64 divisions, integer volumes rounded half up as
    ``floor((2S + W) / 2W)``, never-reached MAXIMUM/LATEST voxels 0, integer results clipped to ``dtype``)."""
    dtype = np.dtype(dtype)
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"TorchExactChannel: no torch type for values of type {dtype}")
    scale = paste_exact.value_scale(dtype)
    w = state["weight"]
    if mode == "MEAN":
        s, hit = state["sum"], w > 0
        w1 = torch.where(hit, w, torch.ones_like(w))
        if scale == 1:
            out = torch.where(hit, torch.div(2 * s + w, 2 * w1, rounding_mode="floor"), torch.zeros_like(s))
        else:
            out = torch.where(hit, s.to(torch.float64) / w1.to(torch.float64), 0.0) / scale
    else:
        raw = torch.where(w > 0, state["value"], torch.zeros_like(state["value"]))
        out = raw.to(torch.float64) / scale if scale != 1 else raw
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        out = torch.clamp(out, int(info.min), int(info.max))
    return out.to(TORCH_DTYPES[dtype])
