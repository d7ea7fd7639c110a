"""B-mode synthesis for a linear probe by casting each image column (one beam) into the bone field.

Per frame, every pixel is mapped to Reference with its ImageToReference and the spine's implicit bone
field is sampled there (:meth:`usx_stream.sim.anatomy.Spine.sample`). Along each column (the beam runs
down the rows) the first pixel inside bone is the bone hit:

- bone echo: a bright band at the hit, ``bone_reflectivity x cos²(incidence)`` (specular reflection:
  surfaces steep to the beam return little), blurred over a few rows by the pulse;
- acoustic shadow: everything below the hit is attenuated to ``shadow_level``;
- soft tissue: skin line, subcutaneous fat with bright septa, the thoracolumbar fascia and muscle, with an
  echogenicity texture fixed in Reference (so that overlapping frames agree, as real tissue does);
- speckle: Rayleigh-distributed envelope of a complex Gaussian field blurred by the point-spread function
  (new each frame);
- depth attenuation (net of time-gain compensation) and log compression to 8 bits.

The ground-truth bone-echo mask marks, per column, the hit pixel when its incidence cosine is at least
``visible_incidence_cos`` (where a bone echo is drawn that a detector can be asked to find).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import Spine


@dataclass(frozen=True)
class BModeSettings:
    """Tunables of the B-mode model (dimensionless amplitudes unless a unit is given)."""

    dynamic_range_db: float = 40.0
    attenuation_db_per_cm: float = 2.5      # round trip, what TGC leaves uncompensated
    bone_reflectivity: float = 4.0          # echo amplitude at normal incidence (muscle ~0.35)
    shadow_level: float = 0.04              # fraction of the tissue signal left under bone
    visible_incidence_cos: float = 0.5      # ground-truth mask: incidence <= 60 degrees
    skin_mm: float = 1.2
    fat_mm: float = 6.0
    psf_sigma_px: tuple[float, float] = (0.7, 1.4)  # (axial rows, lateral columns)
    gain_db: float = 0.0                    # overall receive gain; bone saturates when it is high

    def __post_init__(self) -> None:
        if self.dynamic_range_db <= 0:
            raise ValueError(f"dynamic_range_db: must be positive, got {self.dynamic_range_db}")
        if not 0.0 <= self.shadow_level < 1.0:
            raise ValueError(f"shadow_level: expected 0 <= value < 1, got {self.shadow_level}")
        if not 0.0 <= self.visible_incidence_cos <= 1.0:
            raise ValueError(f"visible_incidence_cos: expected 0..1, got {self.visible_incidence_cos}")
        if not np.isfinite(self.gain_db):
            raise ValueError(f"gain_db: must be finite, got {self.gain_db}")


class TissueTexture:
    """Smooth random echogenicity texture fixed in Reference, zero mean, unit SD.

    Muscle fibres run cranio-caudally, so the texture is stretched along z.
    """

    def __init__(self, lower_mm, upper_mm, rng: np.random.Generator, *, spacing_mm: float = 1.0) -> None:
        self.origin_mm = np.asarray(lower_mm, dtype=np.float64)
        self.spacing_mm = float(spacing_mm)
        shape = np.ceil((np.asarray(upper_mm) - self.origin_mm) / spacing_mm).astype(int) + 1
        noise = rng.standard_normal(tuple(shape)).astype(np.float32)
        sigma = np.array([1.2, 1.2, 4.0]) / spacing_mm
        field = ndimage.gaussian_filter(noise, sigma, mode="wrap")
        self.values = (field - field.mean()) / max(float(field.std()), 1e-6)

    def sample(self, points_mm: np.ndarray) -> np.ndarray:
        idx = ((points_mm - self.origin_mm) / self.spacing_mm).T
        return ndimage.map_coordinates(self.values, idx, order=1, mode="nearest", prefilter=False)


class BModeSimulator:
    """Renders B-mode frames of a spine for one probe geometry.

    Parameters
    ----------
    spine : Spine
        Bone, in Reference.
    shape : (rows, cols)
        Image size; rows are depth.
    spacing_mm : float
        Pixel size (square pixels), mm.
    texture : TissueTexture
    settings : BModeSettings
    """

    def __init__(self, spine: Spine, shape: tuple[int, int], spacing_mm: float, texture: TissueTexture,
                 settings: BModeSettings | None = None) -> None:
        self.spine = spine
        self.shape = (int(shape[0]), int(shape[1]))
        self.spacing_mm = float(spacing_mm)
        self.texture = texture
        self.settings = settings or BModeSettings()
        rows, cols = self.shape
        jj, ii = np.mgrid[0:rows, 0:cols]
        self._pixels_h = np.stack([ii.ravel(), jj.ravel(), np.zeros(ii.size), np.ones(ii.size)]).astype(np.float64)
        self._rows = jj
        self._depth_mm = jj * self.spacing_mm

    def render(self, image_to_reference: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One frame.

        Returns
        -------
        pixels : (rows, cols) uint8 ndarray
            B-mode image, MF orientation (row 0 at the transducer face).
        bone_mask : (rows, cols) bool ndarray
            Ground-truth bone-echo pixels (at most one per column).
        """
        rows, cols = self.shape
        points = (image_to_reference @ self._pixels_h)[:3].T
        bone, _ = self.spine.sample(points)
        inside = bone.reshape(rows, cols) < 0
        has_hit = inside.any(axis=0)
        hit = np.where(has_hit, np.argmax(inside, axis=0), rows)
        cos_inc = self._incidence(points.reshape(rows, cols, 3), hit, has_hit, image_to_reference)
        tissue = self._tissue(points)
        speckle = self._speckle(rng)
        rel = self._rows - hit[None, :]
        s = self.settings
        shadow = np.where(rel > 0, s.shadow_level + (1.0 - s.shadow_level) * np.exp(-rel / 1.5), 1.0)
        env = tissue * speckle * shadow
        env += self._bone_echo(hit, has_hit, cos_inc, speckle)
        env *= 10.0 ** (-s.attenuation_db_per_cm * self._depth_mm / 10.0 / 20.0)
        env *= 10.0 ** (s.gain_db / 20.0)  # exactly 1.0 at the default: output unchanged
        db = 20.0 * np.log10(env / s.bone_reflectivity + 1e-9)
        pixels = np.clip(255.0 * (1.0 + db / s.dynamic_range_db), 0, 255).astype(np.uint8)
        mask = np.zeros((rows, cols), dtype=bool)
        visible = has_hit & (cos_inc >= s.visible_incidence_cos)
        mask[hit[visible], np.flatnonzero(visible)] = True
        return pixels, mask

    def _incidence(self, points: np.ndarray, hit: np.ndarray, has_hit: np.ndarray, image_to_reference) -> np.ndarray:
        """|cos| of the angle between the beam and the bone normal at each column's hit; 0 without a hit."""
        cols = np.flatnonzero(has_hit)
        cos = np.zeros(self.shape[1])
        if len(cols) == 0:
            return cos
        p = points[hit[cols], cols]
        h = 0.5
        grad = np.empty_like(p)
        for axis in range(3):
            d = np.zeros(3)
            d[axis] = h
            grad[:, axis] = (self.spine.sample(p + d)[0] - self.spine.sample(p - d)[0]) / (2 * h)
        beam = image_to_reference[:3, 1] / np.linalg.norm(image_to_reference[:3, 1])
        norm = np.linalg.norm(grad, axis=1)
        cos[cols] = np.abs(grad @ beam) / np.maximum(norm, 1e-9)
        return cos

    def _tissue(self, points: np.ndarray) -> np.ndarray:
        """Echogenicity of soft tissue (before speckle), ``(rows, cols)``."""
        s = self.settings
        tex = self.texture.sample(points).reshape(self.shape)
        d = self._depth_mm
        fat_bottom = s.skin_mm + s.fat_mm * (1.0 + 0.15 * tex)
        muscle = 0.35 * np.clip(1.0 + 0.35 * tex, 0.3, None)
        fat = np.where(tex > 1.3, 0.45, 0.15)
        out = np.where(d < fat_bottom, fat, muscle)
        out = np.where(np.abs(d - fat_bottom) < 0.6, 0.8, out)
        return np.where(d < s.skin_mm, 1.0, out)

    def _speckle(self, rng: np.random.Generator) -> np.ndarray:
        """Rayleigh speckle with unit mean square, correlated over the PSF, ``(rows, cols)``."""
        sigma = self.settings.psf_sigma_px
        re = ndimage.gaussian_filter(rng.standard_normal(self.shape), sigma)
        im = ndimage.gaussian_filter(rng.standard_normal(self.shape), sigma)
        mag = np.hypot(re, im)
        return mag / np.sqrt(np.mean(mag * mag))

    def _bone_echo(self, hit, has_hit, cos_inc, speckle) -> np.ndarray:
        """Bright band at the hits (pulse length ~1 mm), ``(rows, cols)``."""
        rows, cols = self.shape
        out = np.zeros((rows, cols))
        c = np.flatnonzero(has_hit)
        amp = self.settings.bone_reflectivity * cos_inc[c] ** 2
        for offset, weight in ((-1, 0.35), (0, 1.0), (1, 0.75), (2, 0.4), (3, 0.15)):
            r = hit[c] + offset
            ok = (r >= 0) & (r < rows)
            out[r[ok], c[ok]] += weight * amp[ok] * (0.5 + 0.5 * speckle[r[ok], c[ok]])
        return out
