"""Published per-level dimensions of the lumbar vertebrae L1–L5 and how a vertebra's are drawn from them.

Per-level means (mm) below are rounded approximations of the means these studies report (adult cadaveric
and CT morphometry), not verbatim transcriptions; check the papers before relying on a single number:

===================  ====  ====  ====  ====  ====  ==================================================
dimension            L1    L2    L3    L4    L5    source
===================  ====  ====  ====  ====  ====  ==================================================
body width (EPW)     40.9  42.7  44.8  46.7  49.2  Panjabi et al. 1992, Spine 17(3):299–306, upper EPW
body depth (EPD)     33.5  34.5  35.5  35.5  35.0  Panjabi et al. 1992, upper EPD; Zhou et al. 2000
body height ant.     25.0  26.0  26.5  26.5  27.5  Zhou et al. 2000, Eur Spine J 9:242–248
body height post.    26.2  26.6  26.1  25.4  24.0  Panjabi et al. 1992, VBHp
canal width (SCW)    22.5  23.0  23.5  24.0  26.0  Panjabi et al. 1992
canal depth (SCD)    17.5  17.0  16.5  16.5  16.0  Panjabi et al. 1992
pedicle width        8.7   8.9   10.3  12.9  18.0  Zindrick et al. 1987, Spine 12(2):160–166
pedicle height       15.4  15.0  14.9  14.8  14.0  Zindrick et al. 1987
transverse span      72    80    88    86    90    Panjabi et al. 1992, TPW (tip to tip)
spinous length       30    31    31    29    25    Panjabi et al. 1992, SPL (from the laminar junction)
spinous height       20    22    23    22    18    Panjabi et al. 1992, SPH
disc height below    9.5   10.5  11.0  11.5  12.0  Zhou et al. 2000 (mean of anterior and posterior)
===================  ====  ====  ====  ====  ====  ==================================================

Shape values that these studies do not tabulate are modelling choices (``lamina_height``,
``spinous_inclination_deg``, ``transverse_tilt_deg`` in :data:`MORPHOMETRY`; lamina thickness, process
cross-sections and blend radii in :mod:`usx_stream.sim.shape`), chosen to look like CT renderings.

Variation: a spine-wide size factor (SD 5 % x ``variation``) times an independent factor per dimension
(coefficients of variation in ``_CV``, about the published SDs; draws clipped at 2.5 SD).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..frames import LEVELS

# Per-level means, mm (degrees for angles), in LEVELS order. See the module docstring for sources.
MORPHOMETRY: dict[str, tuple[float, ...]] = {
    "body_width": (40.9, 42.7, 44.8, 46.7, 49.2),
    "body_depth": (33.5, 34.5, 35.5, 35.5, 35.0),
    "body_height_ant": (25.0, 26.0, 26.5, 26.5, 27.5),
    "body_height_post": (26.2, 26.6, 26.1, 25.4, 24.0),
    "canal_width": (22.5, 23.0, 23.5, 24.0, 26.0),
    "canal_depth": (17.5, 17.0, 16.5, 16.5, 16.0),
    "pedicle_width": (8.7, 8.9, 10.3, 12.9, 18.0),
    "pedicle_height": (15.4, 15.0, 14.9, 14.8, 14.0),
    "transverse_span": (72.0, 80.0, 88.0, 86.0, 90.0),
    "spinous_length": (30.0, 31.0, 31.0, 29.0, 25.0),
    "spinous_height": (20.0, 22.0, 23.0, 22.0, 18.0),
    "lamina_height": (22.0, 23.0, 23.0, 22.0, 20.0),
    "disc_height_below": (9.5, 10.5, 11.0, 11.5, 12.0),
    "spinous_inclination_deg": (8.0, 8.0, 10.0, 12.0, 15.0),
    "transverse_tilt_deg": (5.0, 5.0, 3.0, 3.0, 8.0),
}
# Coefficient of variation per dimension (angles: SD in degrees), about the published spread.
_CV = {"body_width": 0.07, "body_depth": 0.07, "body_height_ant": 0.07, "body_height_post": 0.07,
       "canal_width": 0.08, "canal_depth": 0.10, "pedicle_width": 0.15, "pedicle_height": 0.09,
       "transverse_span": 0.07, "spinous_length": 0.10, "spinous_height": 0.10, "lamina_height": 0.08,
       "disc_height_below": 0.10, "spinous_inclination_deg": 4.0, "transverse_tilt_deg": 3.0}
SIZE_SD = 0.05
CLIP_SD = 2.5


@dataclass(frozen=True)
class VertebraParams:
    """Sampled dimensions of one vertebra (mm; angles in degrees). Field names match :data:`MORPHOMETRY`."""

    body_width: float
    body_depth: float
    body_height_ant: float
    body_height_post: float
    canal_width: float
    canal_depth: float
    pedicle_width: float
    pedicle_height: float
    transverse_span: float
    spinous_length: float
    spinous_height: float
    lamina_height: float
    disc_height_below: float
    spinous_inclination_deg: float
    transverse_tilt_deg: float
    # Distance of the facet joint planes from the midline (mm), above and below this vertebra. Derived from
    # the mean canal widths of both vertebrae of each joint, so that neighbours' facets always meet.
    facet_superior_x: float
    facet_inferior_x: float

    @classmethod
    def mean(cls, level: str) -> "VertebraParams":
        k = level_index(level)
        return cls(**{name: MORPHOMETRY[name][k] for name in MORPHOMETRY}, **_facets(k, 1.0))

    @classmethod
    def sample(cls, level: str, rng: np.random.Generator, *, variation: float = 1.0,
               size_factor: float = 1.0) -> "VertebraParams":
        """Draw dimensions for ``level``: ``mean * size_factor * (1 + cv * z)``, ``z`` ~ N(0, variation)."""
        k = level_index(level)
        values = {}
        for name, means in MORPHOMETRY.items():
            z = float(np.clip(rng.standard_normal(), -CLIP_SD, CLIP_SD)) * variation
            if name.endswith("_deg"):
                values[name] = means[k] + _CV[name] * z
            else:
                # Floor at half the mean so that large variations never give degenerate parts.
                values[name] = means[k] * size_factor * max(1.0 + _CV[name] * z, 0.5)
        return cls(**values, **_facets(k, size_factor))


def _facets(k: int, size_factor: float) -> dict[str, float]:
    """Facet-plane offsets for level index ``k``: half the mean canal width of the joint's pair + 4.5 mm."""
    cw = MORPHOMETRY["canal_width"]
    above = 0.5 * (cw[max(k - 1, 0)] + cw[k])
    below = 0.5 * (cw[k] + cw[min(k + 1, len(cw) - 1)])
    return {"facet_superior_x": size_factor * (0.5 * above + 4.5),
            "facet_inferior_x": size_factor * (0.5 * below + 4.5)}


def level_index(level: str) -> int:
    """Index of ``level`` in ``LEVELS``; ValueError naming the levels otherwise."""
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {LEVELS}, got {level!r}")
    return LEVELS.index(level)

