"""Per-frame bone-surface detection in B-mode: a bright ridge followed by an acoustic shadow.

Bone reflects almost all of the ultrasound energy, so in a B-mode column (row = depth) the bone
surface is a bright ridge and everything below it is dark (the acoustic shadow). Soft-tissue
interfaces can be as bright, but tissue continues to echo below them. The method, per frame:

1. Block-average by ``downsample`` (speckle reduction and speed; 0 picks the factor that makes a
   cell about ``cell_mm``), Gaussian smoothing (``smooth_mm``).
2. Depth normalisation: divide each row by the ``row_percentile`` (median) intensity of that row
   over the imaged columns. Attenuation and time-gain make absolute intensity fall with depth;
   relative to its own row a bone echo is bright and its shadow is dark, whatever the gain setting.
   The reference of a row is the profile ``reference_above_mm`` higher up, in tissue that a bone
   surface at this row cannot shadow (a surface spanning most of the row would otherwise set its
   own reference).
3. Per pixel: ``ridge`` = local maximum along depth; ``ratio`` = normalised intensity;
   ``shadow`` = ``1 - mean(intensity in [gap, gap + depth] below) / intensity`` in [0, 1], on the
   smoothed, not row-normalised, image (below a wide bone every row is shadow, so normalising by
   rows would hide it).
4. Candidates: ridge, ``ratio >= ridge_ratio``, ``shadow >= shadow_threshold``, absolute intensity
   ``>= min_intensity`` x the frame's 99th percentile, deeper than ``min_depth_mm``, with at least
   half the shadow window inside the image. Confidence = ``sqrt(intensity score x shadow)`` in [0, 1].
5. Per column, the candidate with the highest confidence (a column has at most one bone surface:
   nothing is imaged beneath it). Runs of adjacent detected columns shorter than ``min_run_mm``
   or broken by a depth jump over ``max_jump_mm`` are discarded (speckle is not laterally coherent).
6. Output: the surface pixels (sub-pixel depth) with their confidence, and a probability map: a
   Gaussian band (sigma ``band_mm``, cut at 3 sigma) around the surface, scaled by the column's confidence —
   the second channel that compounding accumulates.

All of it is vectorised numpy/scipy on the downsampled grid (the shadow is scored only at ridge
candidates); ``benchmarks/bench_bone_detect.py`` measures the time per frame and the accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoneDetectionParams:
    """Tunables of :class:`BoneDetector` (launch-file table ``[bone]``). Lengths in mm of the image."""

    downsample: int = 0
    cell_mm: float = 0.3
    smooth_mm: float = 0.6
    ridge_ratio: float = 1.3
    min_intensity: float = 0.35
    shadow_gap_mm: float = 1.0
    shadow_depth_mm: float = 10.0
    shadow_threshold: float = 0.7
    row_percentile: float = 50.0
    reference_above_mm: float = 3.0
    min_depth_mm: float = 3.0
    band_mm: float = 1.0
    min_run_mm: float = 2.0
    max_jump_mm: float = 2.0

    @classmethod
    def from_mapping(cls, values) -> "BoneDetectionParams":
        """Parameters from a mapping that may hold other keys too (the launch file's ``[bone]`` table)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(values).items() if k in names})

    def __post_init__(self) -> None:
        checks = [
            ("downsample", self.downsample, 0 <= self.downsample <= 16, "must be in [0, 16] (0: automatic)"),
            ("cell_mm", self.cell_mm, self.cell_mm > 0, "must be > 0"),
            ("smooth_mm", self.smooth_mm, self.smooth_mm >= 0, "must be >= 0"),
            ("ridge_ratio", self.ridge_ratio, self.ridge_ratio > 1, "must be > 1"),
            ("min_intensity", self.min_intensity, 0 <= self.min_intensity <= 1, "must be in [0, 1]"),
            ("shadow_gap_mm", self.shadow_gap_mm, self.shadow_gap_mm >= 0, "must be >= 0"),
            ("shadow_depth_mm", self.shadow_depth_mm, self.shadow_depth_mm > 0, "must be > 0"),
            ("shadow_threshold", self.shadow_threshold, 0 <= self.shadow_threshold <= 1, "must be in [0, 1]"),
            ("row_percentile", self.row_percentile, 0 < self.row_percentile <= 100, "must be in (0, 100]"),
            ("reference_above_mm", self.reference_above_mm, self.reference_above_mm >= 0, "must be >= 0"),
            ("min_depth_mm", self.min_depth_mm, self.min_depth_mm >= 0, "must be >= 0"),
            ("band_mm", self.band_mm, self.band_mm > 0, "must be > 0"),
            ("min_run_mm", self.min_run_mm, self.min_run_mm >= 0, "must be >= 0"),
            ("max_jump_mm", self.max_jump_mm, self.max_jump_mm > 0, "must be > 0"),
        ]
        for name, value, ok, what in checks:
            if not ok:
                raise ValueError(f"bone.{name}: {what}, got {value!r}")


@dataclass
class BoneDetection:
    """Bone surface found in one frame.

    Attributes
    ----------
    probability : (H, W) float32 ndarray
        Bone probability per pixel in [0, 1] (band around the detected surface).
    pixels_ij : (N, 2) float32 ndarray
        Surface positions as (i = column, j = row) in full-resolution pixels, sub-pixel in depth;
        one per detected downsampled column, left to right.
    confidence : (N,) float32 ndarray
        Confidence of each surface pixel, in [0, 1].
    """

    probability: np.ndarray
    pixels_ij: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def points_in(self, image_to_frame: np.ndarray) -> np.ndarray:
        """Surface pixels mapped by ``image_to_frame`` (e.g. ImageToReference): ``(N, 3)`` float64, mm."""
        m = np.asarray(image_to_frame, dtype=np.float64)
        ij = self.pixels_ij.astype(np.float64)
        return ij @ m[:3, :2].T + m[:3, 3]


def pixel_size_from_image_to_probe(image_to_probe: np.ndarray) -> float:
    """Pixel size along the depth axis (image j, rows) in mm, from the ImageToProbe calibration."""
    m = np.asarray(image_to_probe, dtype=np.float64)
    return float(np.linalg.norm(m[:3, 1]))


class BoneDetector:
    """Bone-surface detector for B-mode frames; parameters validated once here, not per frame.

    Parameters
    ----------
    pixel_size_mm : float
        Size of one full-resolution pixel along depth, mm (see :func:`pixel_size_from_image_to_probe`).
    params : BoneDetectionParams, optional
    """

    def __init__(self, *, pixel_size_mm: float, params: BoneDetectionParams | None = None) -> None:
        if not pixel_size_mm > 0:
            raise ValueError(f"bone.pixel_size_mm: must be > 0, got {pixel_size_mm!r}")
        self.params = params or BoneDetectionParams()
        self.pixel_size_mm = float(pixel_size_mm)
        p = self.params
        ds = p.downsample or int(np.clip(round(p.cell_mm / self.pixel_size_mm), 1, 16))
        self.downsample = ds
        cell = self.pixel_size_mm * ds                     # mm per downsampled pixel
        self._sigma = p.smooth_mm / cell
        self._gap = max(1, int(round(p.shadow_gap_mm / cell)))
        self._depth = max(1, int(round(p.shadow_depth_mm / cell)))
        self._min_row = int(np.ceil(p.min_depth_mm / cell))
        self._above = max(1, int(round(p.reference_above_mm / cell)))
        self._band = p.band_mm / cell
        self._jump = p.max_jump_mm / cell
        self._min_run = max(1, int(round(p.min_run_mm / cell)))

    def detect(self, pixels: np.ndarray) -> BoneDetection:
        """Detect the bone surface in one B-mode image.

        Parameters
        ----------
        pixels : (H, W) ndarray
            B-mode intensities, row = depth (PLUS MF orientation), any real dtype.

        Returns
        -------
        BoneDetection
            Empty (all-zero probability, no pixels) when no bone is visible or the frame is too small.
        """
        img = np.asarray(pixels)
        if img.ndim != 2:
            raise ValueError(f"bone.detect: pixels must be (H, W), got shape {img.shape}")
        H, W = img.shape
        ds = self.downsample
        h, w = H // ds, W // ds
        if h < self._gap + self._depth + 3 or w < 1:
            return BoneDetection(np.zeros((H, W), np.float32))
        small = _block_mean(img, ds)
        score, ratio = self._score(small)
        rows, conf = self._surface(score, ratio)
        prob_small = self._band_map(rows, conf, h)
        prob = np.zeros((H, W), np.float32)
        prob[:h * ds, :w * ds].reshape(h, ds, w, ds)[...] = prob_small[:, None, :, None]
        cols = np.flatnonzero(conf > 0)
        ij = np.stack([(cols + 0.5) * ds - 0.5, (rows[cols] + 0.5) * ds - 0.5], axis=1).astype(np.float32)
        return BoneDetection(prob, ij, conf[cols].astype(np.float32))

    def _score(self, small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate confidence per downsampled pixel (0 = not a candidate) and the normalised image."""
        p = self.params
        s = ndimage.gaussian_filter(small, self._sigma, mode="nearest") if self._sigma > 0 else small
        h, w = s.shape
        imaged = small.max(axis=0) > 0                    # columns outside the probe's field are all zero
        top = float(np.percentile(s[:, imaged], 99)) if imaged.any() else 0.0
        if top <= 0:
            return np.zeros_like(s), np.zeros_like(s)
        profile = np.percentile(s[:, imaged], p.row_percentile, axis=1).astype(np.float32)
        # Reference of row j: the profile a little above it, in tissue no bone at j can shadow
        # (a wide bone surface would otherwise set its own row's reference).
        above = np.maximum(np.arange(h) - self._above, 0)
        ratio = s / np.maximum(profile[above], np.float32(0.02 * top))[:, None]
        ridge = np.zeros((h, w), bool)
        ridge[1:-1] = (s[1:-1] >= s[:-2]) & (s[1:-1] >= s[2:])
        ridge[: self._min_row] = False
        ridge[h - (self._gap + self._depth // 2):] = False   # shadow window must mostly fit in the image
        ridge &= imaged[None, :] & (ratio >= p.ridge_ratio) & (s >= p.min_intensity * top)
        jc, ic = np.nonzero(ridge)                          # sparse: the shadow is scored only here
        # Mean intensity in the window [j + gap, j + gap + depth) below each candidate, relative to
        # the candidate itself (raw, not row-normalised: below a wide bone every row is shadowed).
        csum = np.empty((h + 1, w), np.float32)
        csum[0] = 0
        np.cumsum(s, axis=0, out=csum[1:])
        lo, hi = np.minimum(jc + self._gap, h), np.minimum(jc + self._gap + self._depth, h)
        below = (csum[hi, ic] - csum[lo, ic]) / np.maximum(hi - lo, 1)
        r = ratio[jc, ic]
        shadow = np.clip(1.0 - below / s[jc, ic], 0.0, 1.0)
        # Intensity score: 0 at the row mean, 0.5 at ridge_ratio, 1 at twice that excess.
        inten = np.clip((r - 1.0) / (2.0 * (p.ridge_ratio - 1.0)), 0.0, 1.0)
        keep = shadow >= p.shadow_threshold
        score = np.zeros((h, w), np.float32)
        score[jc[keep], ic[keep]] = np.sqrt(inten[keep] * shadow[keep])
        return score, ratio

    def _surface(self, score: np.ndarray, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per column: sub-pixel surface row (downsampled px) and confidence (0 where none)."""
        h, w = score.shape
        row = score.argmax(axis=0)
        conf = score[row, np.arange(w)]
        ok = conf > 0
        # Runs of adjacent detected columns, broken where depth jumps; drop short ones.
        jump = np.abs(np.diff(row.astype(np.float64))) > self._jump
        brk = np.ones(w, bool)
        brk[1:] = ~ok[1:] | ~ok[:-1] | jump
        run_id = np.cumsum(brk) - 1
        run_len = np.bincount(run_id, minlength=run_id[-1] + 1)
        ok &= run_len[run_id] >= self._min_run
        conf = np.where(ok, conf, 0.0)
        # Parabola through the ridge and its neighbours refines the depth below a downsampled pixel.
        r = np.clip(row, 1, h - 2)
        cols = np.arange(w)
        a, b, c = ratio[r - 1, cols], ratio[r, cols], ratio[r + 1, cols]
        den = a - 2 * b + c
        delta = np.where(den < 0, 0.5 * (a - c) / np.where(den < 0, den, -1.0), 0.0)
        return r + np.clip(delta, -0.5, 0.5), conf

    def _band_map(self, rows: np.ndarray, conf: np.ndarray, h: int) -> np.ndarray:
        j = np.arange(h, dtype=np.float32)[:, None]
        z = (j - rows[None, :].astype(np.float32)) / self._band
        # Cut at 3 sigma so the channel is exactly zero away from the surface.
        band = np.where(np.abs(z) <= 3.0, np.exp(-0.5 * z * z), 0.0)
        return (band * conf[None, :].astype(np.float32)).astype(np.float32)


def _block_mean(img: np.ndarray, ds: int) -> np.ndarray:
    """``(H // ds, W // ds)`` float32 block means of ``img`` (the remainder rows/columns are ignored)."""
    h, w = img.shape[0] // ds, img.shape[1] // ds
    if ds == 1:
        return img.astype(np.float32)
    # Strided slice sums: several times faster than reshape(...).sum(axis=(1, 3)) on uint8.
    acc_t = np.uint32 if img.dtype.kind in "ub" else np.float64
    rows = img[0: h * ds: ds, : w * ds].astype(acc_t)
    for k in range(1, ds):
        rows += img[k: h * ds: ds, : w * ds]
    acc = rows[:, 0::ds].copy()
    for k in range(1, ds):
        acc += rows[:, k::ds]
    return (acc * (1.0 / (ds * ds))).astype(np.float32)


def detect_bone(pixels: np.ndarray, *, pixel_size_mm: float, **params) -> BoneDetection:
    """One-off detection (builds a :class:`BoneDetector`; reuse a detector for a stream)."""
    return BoneDetector(pixel_size_mm=pixel_size_mm, params=BoneDetectionParams(**params)).detect(pixels)
