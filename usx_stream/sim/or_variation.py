"""What differs from one operating room to the next, drawn per simulated session (training-data variety).

Every simulated session otherwise shares one scanner setting, perfect tracking, an exact X-ray labelmap and
an exact C-arm calibration, so a network trained on them learns one OR. :class:`ORVariation` holds the
ranges; :meth:`ORVariation.draw` picks one :class:`SessionVariation`, which acts in two places:

- before simulation, :meth:`SessionVariation.simulate_kwargs` (B-mode settings, depth of the spine, passes,
  frame count, cranio-caudal coverage) for :func:`~usx_stream.sim.session.simulate_session`;
- after it, :meth:`SessionVariation.apply` (tracking jitter, narrower probe, a labelmap segmented a little
  too wide or too tight or missing a level, a C-arm pose the node is told with an error).

A narrower probe is cropped, not blanked: the node's ingest accepts any frame width (``frame_check`` only
bounds the size) and blank columns would be compounded as zero-intensity tissue. The crop's offset is folded
into ``ProbeToTracker`` so that the session's ImageToProbe calibration still places every pixel exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..frames import LEVELS, TrackedFrame
from ..transforms import invert, translation
from ..xray.cache import XrayCache, levels_present
from ..xray.geometry import CArmGeometry
from .bmode import BModeSettings

_BMODE = BModeSettings()
_SKIN_DEPTH_MM = 15.0  # simulate_session's default: the B-mode fat layer scales with it
Range = tuple[float, float]

# field -> (lowest, highest) value a range may take; beyond these the simulator stops being plausible
_RANGE_BOUNDS = {
    "gain_db": (-30.0, 30.0), "bone_reflectivity_factor": (0.05, 20.0), "dynamic_range_db": (10.0, 100.0),
    "attenuation_db_per_cm": (0.0, 10.0), "psf_scale": (0.1, 5.0), "skin_depth_mm": (1.0, 60.0),
    "probe_width": (0.25, 1.0), "frames_factor": (0.05, 5.0), "coverage": (0.2, 1.0),
    "jitter_mm": (0.0, 10.0), "jitter_deg": (0.0, 5.0), "labelmap_px": (-20, 20),
}
_SCALAR_BOUNDS = {"full_coverage_prob": (0.0, 1.0), "missing_level_prob": (0.0, 1.0),
                  "carm_error_mm": (0.0, 50.0), "carm_error_deg": (0.0, 20.0)}


def _check(owner: str, name: str, value, lo: float, hi: float, *, pair: bool) -> None:
    """``ValueError`` naming ``owner.name`` and the value unless it is a finite (pair of) value(s) in [lo, hi]."""
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):  # a string or ragged value: reported below with the rest
        v = np.full(3, np.nan)
    ok = v.shape == ((2,) if pair else ()) and np.all(np.isfinite(v)) and np.all((v >= lo) & (v <= hi))
    if ok and pair and v[0] > v[1]:
        ok = False
    if not ok:
        what = f"(low, high) with {lo:g} <= low <= high <= {hi:g}" if pair else f"a value in [{lo:g}, {hi:g}]"
        raise ValueError(f"{owner}.{name}: expected {what}, got {value!r}")


@dataclass(frozen=True)
class ORVariation:
    """Ranges of what differs between operating rooms; each ``(low, high)`` is drawn uniformly.

    Defaults are a realistic spread: gain ±6 dB (operators' overall gain), bone reflectivity ×0.7-1.5
    (bone density, patient), dynamic range 35-55 dB (log-compression presets), residual attenuation
    1.5-3.5 dB/cm (TGC presets, tissue), speckle grain ×0.8-1.4 (probe frequency, focus), skin-to-lamina
    depth 10-28 mm (thin to obese; the laminae stay inside the 67 mm image), probe 75-100 % of the columns
    (38-50 mm arrays), 1-3 passes, ×0.6-1.2 frames, half the sweeps stopping short of one end (70-100 %
    coverage), tracking jitter 0.1-0.5 mm and 0.05-0.3° SD (optical to electromagnetic in a metal-filled
    OR), labelmap ±3 px (±1.5 mm at the isocentre: segmentation boundary error), a level missing in 10 %
    (missed by segmentation or out of the field), C-arm error up to 2 mm and 1° (fiducial or 2D/3D
    registration error). Narrower ranges for reflectivity and attenuation than first tried: at 0.6 and
    4 dB/cm the B-mode detector found only 35 % of the bone-echo columns. ``passes`` is the set drawn from.
    Tracking jitter SDs are per axis (mm; degrees of a rotation vector about the probe marker). The C-arm
    error is a translation of at most ``carm_error_mm`` and a rotation of at most ``carm_error_deg`` about
    the isocentre, in random directions. ``labelmap_px`` < 0 erodes, > 0 dilates (detector pixels).
    """

    gain_db: Range = (-6.0, 6.0)
    bone_reflectivity_factor: Range = (0.7, 1.5)
    dynamic_range_db: Range = (35.0, 55.0)
    attenuation_db_per_cm: Range = (1.5, 3.5)
    psf_scale: Range = (0.8, 1.4)
    skin_depth_mm: Range = (10.0, 28.0)
    probe_width: Range = (0.75, 1.0)
    passes: tuple[int, ...] = (1, 2, 3)
    frames_factor: Range = (0.6, 1.2)
    coverage: Range = (0.7, 1.0)
    full_coverage_prob: float = 0.5
    jitter_mm: Range = (0.1, 0.5)
    jitter_deg: Range = (0.05, 0.3)
    labelmap_px: tuple[int, int] = (-3, 3)
    missing_level_prob: float = 0.1
    carm_error_mm: float = 2.0
    carm_error_deg: float = 1.0

    def __post_init__(self) -> None:
        for name, (lo, hi) in _RANGE_BOUNDS.items():
            _check("ORVariation", name, getattr(self, name), lo, hi, pair=True)
        for name, (lo, hi) in _SCALAR_BOUNDS.items():
            _check("ORVariation", name, getattr(self, name), lo, hi, pair=False)
        if any(int(v) != v for v in self.labelmap_px):
            raise ValueError(f"ORVariation.labelmap_px: expected whole pixels, got {self.labelmap_px!r}")
        p = tuple(self.passes) if isinstance(self.passes, (tuple, list)) else ()
        if not p or any(not isinstance(k, (int, np.integer)) or not 1 <= k <= 5 for k in p):
            raise ValueError(f"ORVariation.passes: expected a non-empty tuple of integers in 1..5, got {self.passes!r}")

    @classmethod
    def none(cls) -> "ORVariation":
        """Every range collapsed onto the simulator's defaults: :meth:`draw` gives the identity variation."""
        b = _BMODE
        return cls(gain_db=(b.gain_db,) * 2, bone_reflectivity_factor=(1.0, 1.0),
                   dynamic_range_db=(b.dynamic_range_db,) * 2,
                   attenuation_db_per_cm=(b.attenuation_db_per_cm,) * 2, psf_scale=(1.0, 1.0),
                   skin_depth_mm=(_SKIN_DEPTH_MM,) * 2, probe_width=(1.0, 1.0), passes=(3,), frames_factor=(1.0, 1.0),
                   coverage=(1.0, 1.0), full_coverage_prob=1.0, jitter_mm=(0.0, 0.0), jitter_deg=(0.0, 0.0),
                   labelmap_px=(0, 0), missing_level_prob=0.0, carm_error_mm=0.0, carm_error_deg=0.0)

    def draw(self, rng: np.random.Generator) -> "SessionVariation":
        """One session's values; the same generator state gives the same variation."""
        u = lambda r: float(rng.uniform(*r))  # noqa: E731 - one-letter draw keeps the table readable
        skin = u(self.skin_depth_mm)
        psf = u(self.psf_scale)
        bmode = dataclasses.replace(
            _BMODE, gain_db=u(self.gain_db),
            bone_reflectivity=_BMODE.bone_reflectivity * u(self.bone_reflectivity_factor),
            dynamic_range_db=u(self.dynamic_range_db), attenuation_db_per_cm=u(self.attenuation_db_per_cm),
            psf_sigma_px=tuple(s * psf for s in _BMODE.psf_sigma_px),
            # subcutaneous fat makes most of the depth above the spinous tips
            fat_mm=_BMODE.fat_mm * skin / _SKIN_DEPTH_MM)
        passes = int(rng.choice(self.passes))
        frames_factor = u(self.frames_factor)
        extent = (0.0, 1.0)
        if rng.random() >= self.full_coverage_prob:  # a sonographer who stops short of one end
            cover = u(self.coverage)
            start = float(rng.uniform(0.0, 1.0 - cover))
            extent = (start, min(1.0, start + cover))
        jitter_mm, jitter_deg, width = u(self.jitter_mm), u(self.jitter_deg), u(self.probe_width)
        grow_px = int(rng.integers(self.labelmap_px[0], self.labelmap_px[1] + 1))
        drop = LEVELS[int(rng.integers(len(LEVELS)))] if rng.random() < self.missing_level_prob else None
        return SessionVariation(
            bmode=bmode, skin_depth_mm=skin, passes=passes, frames_factor=frames_factor, sweep_extent=extent,
            probe_width=width, jitter_mm=jitter_mm, jitter_deg=jitter_deg, labelmap_px=grow_px, drop_level=drop,
            carm_translation_mm=_ball(rng, self.carm_error_mm), carm_rotation_deg=_ball(rng, self.carm_error_deg))


def _ball(rng: np.random.Generator, radius: float) -> tuple[float, float, float]:
    """A vector in a random direction with a length uniform in [0, radius]."""
    d = rng.standard_normal(3)
    d = d / max(float(np.linalg.norm(d)), 1e-12)
    return tuple(float(x) for x in d * rng.uniform(0.0, radius))


@dataclass(frozen=True)
class SessionVariation:
    """Concrete values for one session (see :class:`ORVariation` for their meaning).

    ``carm_translation_mm`` moves the C-arm isocentre (Reference, mm); ``carm_rotation_deg`` is a rotation
    vector (degrees, Reference axes) about it. ``drop_level`` is removed from the labelmap (when present).
    """

    bmode: BModeSettings = _BMODE
    skin_depth_mm: float = _SKIN_DEPTH_MM
    passes: int = 3
    frames_factor: float = 1.0
    sweep_extent: tuple[float, float] = (0.0, 1.0)
    probe_width: float = 1.0
    jitter_mm: float = 0.0
    jitter_deg: float = 0.0
    labelmap_px: int = 0
    drop_level: str | None = None
    carm_translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    carm_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        for name in ("skin_depth_mm", "probe_width", "frames_factor", "jitter_mm", "jitter_deg", "labelmap_px"):
            lo, hi = _RANGE_BOUNDS[name]
            _check("SessionVariation", name, getattr(self, name), lo, hi, pair=False)
        _check("SessionVariation", "passes", self.passes, 1, 5, pair=False)
        start, stop = self.sweep_extent
        if not 0.0 <= start < stop <= 1.0:
            raise ValueError(f"SessionVariation.sweep_extent: expected 0 <= start < stop <= 1, "
                             f"got {self.sweep_extent!r}")
        if self.drop_level is not None and self.drop_level not in LEVELS:
            raise ValueError(f"SessionVariation.drop_level: expected None or one of {LEVELS}, got {self.drop_level!r}")

    def simulate_kwargs(self, *, n_frames: int = 240) -> dict:
        """Keywords for :func:`~usx_stream.sim.session.simulate_session`; ``n_frames`` is the unvaried count
        (e.g. the launch file's ``source.n_frames``), scaled by ``frames_factor``."""
        frames = max(self.passes, int(round(n_frames * self.frames_factor)))
        return {"bmode": self.bmode, "passes": self.passes, "n_frames": frames, "skin_depth_mm": self.skin_depth_mm,
                "sweep_extent": self.sweep_extent}

    def apply(self, session, rng: np.random.Generator) -> tuple[list[TrackedFrame], XrayCache]:
        """The frames and the X-ray as this OR's node would receive them; ``session`` is not changed.

        Returns
        -------
        frames : list[TrackedFrame]
            ``ProbeToTracker`` with tracking jitter; pixels cropped to ``probe_width`` of the columns
            (centred), the crop's offset folded into ``ProbeToTracker``.
        xray : XrayCache
            The X-ray image, the corrupted labelmap and the C-arm geometry the node is told
            (empty cache when the session has no X-ray).
        """
        image_to_probe = session.calibration.get("ImageToProbe")
        frames = [self._frame(f, image_to_probe, rng) for f in session.frames]
        if session.xray is None:
            return frames, XrayCache()
        told = perturb_geometry(session.xray.geometry, self.carm_translation_mm, self.carm_rotation_deg)
        labelmap = session.xray.labelmap
        if labelmap is not None:
            present = levels_present(labelmap)
            drop = self.drop_level
            if drop is not None and drop not in present:  # e.g. a real spine without that level
                drop = str(rng.choice(present)) if present else None
            labelmap = corrupt_labelmap(labelmap, grow_px=self.labelmap_px,
                                        drop_label=None if drop is None else LEVELS.index(drop) + 1)
        cache = XrayCache(geometry=told)
        cache.update_from_xray_image(dataclasses.replace(session.xray, labelmap=labelmap, geometry=told))
        return frames, cache

    def _frame(self, frame: TrackedFrame, image_to_probe: np.ndarray, rng: np.random.Generator) -> TrackedFrame:
        pixels = np.asarray(frame.pixels)
        probe_to_tracker = np.asarray(frame.transforms["ProbeToTracker"], dtype=np.float64)
        if self.jitter_mm > 0 or self.jitter_deg > 0:
            # error of the marker pose: rotation about the marker, so it is amplified at the image
            delta = translation(rng.normal(0.0, self.jitter_mm, 3))
            delta[:3, :3] = Rotation.from_rotvec(rng.normal(0.0, self.jitter_deg, 3), degrees=True).as_matrix()
            probe_to_tracker = probe_to_tracker @ delta
        width = pixels.shape[1]
        keep = max(8, int(round(width * self.probe_width)))
        if keep < width:
            first = (width - keep) // 2
            pixels = pixels[:, first:first + keep].copy()
            # cropped pixel (i, j) is original pixel (i + first, j): same ImageToProbe, shifted probe pose
            probe_to_tracker = probe_to_tracker @ image_to_probe @ translation([first, 0, 0]) @ invert(image_to_probe)
        transforms = {**frame.transforms, "ProbeToTracker": probe_to_tracker}
        return dataclasses.replace(frame, pixels=pixels, transforms=transforms,
                                   transform_status=dict(frame.transform_status), fields=dict(frame.fields))

    def describe(self) -> dict[str, str]:
        """Flat ``str -> str`` of every value (HDF5 attributes, logs), keys prefixed ``or_``."""
        b = self.bmode
        values = {"gain_db": b.gain_db, "bone_reflectivity": b.bone_reflectivity,
                  "dynamic_range_db": b.dynamic_range_db, "attenuation_db_per_cm": b.attenuation_db_per_cm,
                  "psf_sigma_px": b.psf_sigma_px, "fat_mm": b.fat_mm, "skin_depth_mm": self.skin_depth_mm,
                  "passes": self.passes, "frames_factor": self.frames_factor, "sweep_extent": self.sweep_extent,
                  "probe_width": self.probe_width, "jitter_mm": self.jitter_mm, "jitter_deg": self.jitter_deg,
                  "labelmap_px": self.labelmap_px, "drop_level": self.drop_level or "none",
                  "carm_translation_mm": self.carm_translation_mm, "carm_rotation_deg": self.carm_rotation_deg}
        fmt = lambda v: (",".join(f"{x:.4g}" for x in v) if isinstance(v, tuple)  # noqa: E731
                         else v if isinstance(v, str) else f"{v:.4g}")
        return {f"or_{k}": fmt(v) for k, v in values.items()}


def corrupt_labelmap(labelmap: np.ndarray, *, grow_px: int, drop_label: int | None = None) -> np.ndarray:
    """A copy of ``labelmap`` ((H, W) uint8, 0 background, 1..5 = L1..L5) segmented less exactly.

    ``grow_px`` > 0 grows every label into the background by up to that Euclidean distance (pixels), each
    background pixel taking its nearest label; < 0 erodes each label by that distance (labels that touch
    erode from each other too). ``drop_label`` is then removed altogether.
    """
    out = np.array(labelmap, dtype=np.uint8, copy=True)
    if grow_px > 0 and out.any():
        dist, (rr, cc) = ndimage.distance_transform_edt(out == 0, return_indices=True)
        grow = (out == 0) & (dist <= grow_px)
        out[grow] = out[rr[grow], cc[grow]]
    elif grow_px < 0:
        for label in np.unique(out[out > 0]):
            mask = out == label
            out[mask & (ndimage.distance_transform_edt(mask) <= -grow_px)] = 0
    if drop_label is not None:
        out[out == drop_label] = 0
    return out


def perturb_geometry(geometry: CArmGeometry, translation_mm, rotation_deg) -> CArmGeometry:
    """``geometry`` with its pose moved: the isocentre by ``translation_mm`` (Reference, mm) and a rotation
    vector ``rotation_deg`` (degrees, Reference axes) about the isocentre (how a C-arm registration errs)."""
    if not np.any(translation_mm) and not np.any(rotation_deg):
        return geometry  # the identity variation leaves the calibration bit-identical
    iso = geometry.isocenter_ref_mm
    rot = np.eye(4)
    rot[:3, :3] = Rotation.from_rotvec(np.asarray(rotation_deg, dtype=np.float64), degrees=True).as_matrix()
    delta = translation(iso + np.asarray(translation_mm, dtype=np.float64)) @ rot @ translation(-iso)
    return dataclasses.replace(geometry, xray_to_reference=delta @ geometry.xray_to_reference)
