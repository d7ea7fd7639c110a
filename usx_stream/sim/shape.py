"""Assembly of one lumbar vertebra from implicit parts, in its own frame.

Vertebra frame (mm): origin at the centre of the vertebral body, x towards the patient's left,
y posterior, z cranial (the axes of DICOM LPS). Parts: body, two pedicles, two laminae, spinous process
(with its tip tubercle), two transverse processes, two superior and two inferior articular processes.
The dimensions come from :mod:`usx_stream.sim.morphometry` (``VertebraParams``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .parts import FAR_MM, SampledField, sd_ellipsoid, sd_segment_box, sd_vertebral_body, smooth_union

# Blend radii (mm): bone fillets where processes join the arch and the arch joins the body.
_BLEND_BODY_MM = 3.0
_BLEND_ARCH_MM = 2.5
# Shape constants that the morphometry sources do not tabulate (chosen to look like CT renderings).
_LAMINA_THICKNESS_MM = 6.5
_LAMINA_SHINGLE_DEG = 20.0   # inferior laminar edge lies posterior to the superior edge
_TRANSVERSE_HALF_HEIGHT_MM = 5.0
_TRANSVERSE_HALF_THICKNESS_MM = 2.5
_ARTICULAR_HALF_DEPTH_MM = 5.0
_ARTICULAR_HALF_THICKNESS_MM = 2.5


@dataclass(frozen=True)
class _Segment:
    """A rounded box along a segment; ``bounds`` limit where it is evaluated (speed only)."""

    a: np.ndarray
    b: np.ndarray
    up: np.ndarray
    half_v: float
    half_w: float
    radius: float

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return sd_segment_box(p, self.a, self.b, self.up, self.half_v, self.half_w, self.radius)

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        reach = np.hypot(np.hypot(self.half_v, self.half_w), self.radius) + self.radius
        return np.minimum(self.a, self.b) - reach, np.maximum(self.a, self.b) + reach


def _mirror(seg: _Segment) -> _Segment:
    m = np.array([-1.0, 1.0, 1.0])
    return _Segment(seg.a * m, seg.b * m, seg.up * m, seg.half_v, seg.half_w, seg.radius)


def _left_parts(q) -> dict[str, _Segment]:
    """Paired parts on the left side (x > 0), from the sampled dimensions ``q`` (VertebraParams)."""
    d2 = 0.5 * q.body_depth
    xp = 0.5 * (q.canal_width + q.pedicle_width)
    zp = 0.5 * q.body_height_post - 0.5 * q.pedicle_height - 0.5
    zl = zp - 3.0
    ped_back = d2 + 0.8 * q.canal_depth
    z_axis = np.array([0.0, 0.0, 1.0])
    shingle = np.radians(_LAMINA_SHINGLE_DEG)
    lam_up = np.array([0.0, -np.sin(shingle), np.cos(shingle)])
    r_ped = 0.45 * min(q.pedicle_width, q.pedicle_height)
    tp_y = d2 + 0.45 * q.canal_depth
    tp_tip = 0.5 * q.transverse_span - 2.0
    tp_rise = np.tan(np.radians(q.transverse_tilt_deg)) * (tp_tip - xp)
    top = 0.5 * q.body_height_post
    return {
        "pedicle": _Segment(np.array([xp - 1.0, d2 - 6.0, zp]), np.array([xp + 1.0, ped_back, zp]), z_axis,
                            0.5 * q.pedicle_height, 0.5 * q.pedicle_width, r_ped),
        "lamina": _Segment(np.array([xp, ped_back, zl]),
                           np.array([0.0, d2 + q.canal_depth + 0.5 * _LAMINA_THICKNESS_MM, zl]), lam_up,
                           0.5 * q.lamina_height, 0.5 * _LAMINA_THICKNESS_MM, 2.5),
        "transverse": _Segment(np.array([xp + 0.5 * q.pedicle_width - 1.0, tp_y, zp]),
                               np.array([tp_tip, tp_y + 4.0, zp + tp_rise]), z_axis,
                               _TRANSVERSE_HALF_HEIGHT_MM, _TRANSVERSE_HALF_THICKNESS_MM, 2.0),
        # The facet joints: the superior process's medial face and the inferior process's lateral face of
        # the vertebra above sit 0.5-1 mm either side of the shared joint plane (x = facet_*_x).
        "superior_articular": _Segment(
            np.array([q.facet_superior_x + 3.0, d2 + 0.85 * q.canal_depth, zp + 2.0]),
            np.array([q.facet_superior_x + 3.5, d2 + q.canal_depth + 2.0, top + 5.0]),
            np.array([0.0, 1.0, 0.0]), _ARTICULAR_HALF_DEPTH_MM, _ARTICULAR_HALF_THICKNESS_MM, 2.0),
        "inferior_articular": _Segment(
            # Posterior to the next vertebra's laminar edge (the interlaminar space stays open).
            np.array([q.facet_inferior_x - 3.0, d2 + q.canal_depth + 4.0, zl - 0.3 * q.lamina_height]),
            np.array([q.facet_inferior_x - 3.5, d2 + q.canal_depth + 7.0, -top - 4.0]),
            np.array([0.0, 1.0, 0.0]), _ARTICULAR_HALF_DEPTH_MM - 1.0, _ARTICULAR_HALF_THICKNESS_MM, 2.0),
    }


def _spinous(q) -> tuple[_Segment, np.ndarray]:
    d2 = 0.5 * q.body_depth
    zl = 0.5 * q.body_height_post - 0.5 * q.pedicle_height - 3.5
    root = np.array([0.0, d2 + q.canal_depth + 2.0, zl - 2.0])
    incl = np.radians(q.spinous_inclination_deg)
    tip = root + q.spinous_length * np.array([0.0, np.cos(incl), -np.sin(incl)])
    # Hatchet shape: the root is lower than the posterior border (the tip tubercle carries the full height).
    seg = _Segment(root, tip, np.array([0.0, 0.0, 1.0]), 0.35 * q.spinous_height, 3.0, 2.5)
    return seg, tip


class VertebraShape:
    """Implicit field of one vertebra (whole bone and body only), from sampled dimensions."""

    def __init__(self, params) -> None:
        self.params = params
        left = _left_parts(params)
        self.arch_parts: dict[str, _Segment] = {}
        for name, seg in left.items():
            self.arch_parts[f"{name}_left"] = seg
            self.arch_parts[f"{name}_right"] = _mirror(seg)
        self.spinous, self.spinous_tip = _spinous(params)

    def body(self, p: np.ndarray) -> np.ndarray:
        """Signed distance to the vertebral body alone, ``(N,)`` mm."""
        q = self.params
        return sd_vertebral_body(p, width_mm=q.body_width, depth_mm=q.body_depth,
                                 height_ant_mm=q.body_height_ant, height_post_mm=q.body_height_post)

    def _recipe(self) -> list[tuple[str, object, tuple[np.ndarray, np.ndarray]]]:
        """(group, part, box) in union order; group "body" joins the body, "arch" the posterior arch."""
        tip_radii = np.array([4.0, 4.0, 0.5 * self.params.spinous_height])
        tip = (lambda p: sd_ellipsoid(p, self.spinous_tip, tip_radii))
        items = [("body", seg, seg.box()) for name, seg in self.arch_parts.items() if name.startswith("pedicle")]
        items.append(("arch", self.spinous, self.spinous.box()))
        items.append(("arch", tip, (self.spinous_tip - tip_radii, self.spinous_tip + tip_radii)))
        items += [("arch", seg, seg.box()) for name, seg in self.arch_parts.items()
                  if not name.startswith("pedicle")]
        return items

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Conservative (lower, upper) corners of the bone, mm, with a 3 mm border."""
        q = self.params
        boxes = [seg.box() for seg in self.arch_parts.values()] + [self.spinous.box()]
        lo = np.min([b[0] for b in boxes], axis=0)
        hi = np.max([b[1] for b in boxes], axis=0)
        tip = self.spinous_tip + np.array([4.0, 4.0, 0.5 * q.spinous_height])
        body_half = np.array([0.5 * q.body_width, 0.5 * q.body_depth,
                              0.5 * max(q.body_height_ant, q.body_height_post)])
        lo = np.minimum(lo, np.minimum(-body_half, self.spinous_tip - (tip - self.spinous_tip)))
        hi = np.maximum(hi, np.maximum(body_half, tip))
        return lo - 3.0, hi + 3.0

    def sample(self, spacing_mm: float) -> tuple[SampledField, SampledField]:
        """(whole, body) fields on one grid covering :meth:`bounds`.

        Each part is evaluated only on the block of grid points within ``_MARGIN_MM`` of its box; outside
        it is far away, so the (smooth) union there is the union of the other parts and stays unchanged.
        """
        if not spacing_mm > 0:
            raise ValueError(f"spacing_mm: must be positive, got {spacing_mm}")
        lo, hi = self.bounds()
        shape = tuple(np.ceil((hi - lo) / spacing_mm).astype(int) + 1)
        axes = [lo[i] + spacing_mm * np.arange(shape[i]) for i in range(3)]
        q = self.params
        body_half = 0.5 * np.array([q.body_width, q.body_depth, max(q.body_height_ant, q.body_height_post)])
        body = np.full(shape, FAR_MM)
        _union_block(body, axes, self.body, (-body_half, body_half), 0.0)
        whole = body.copy()
        arch = np.full(shape, FAR_MM)
        for group, part, box in self._recipe():
            if group == "body":
                _union_block(whole, axes, part, box, _BLEND_BODY_MM)
            else:
                _union_block(arch, axes, part, box, _BLEND_ARCH_MM)
        whole = smooth_union(whole, arch, _BLEND_ARCH_MM)
        return _as_field(whole, lo, spacing_mm), _as_field(body, lo, spacing_mm)


_MARGIN_MM = 4.0


def _union_block(target: np.ndarray, axes, part, box, k_mm: float) -> None:
    """``target = smooth_union(target, part)`` on the grid block within ``_MARGIN_MM`` of ``box``."""
    sl = []
    for ax, lo, hi in zip(axes, box[0], box[1]):
        i0 = int(np.searchsorted(ax, lo - _MARGIN_MM))
        i1 = int(np.searchsorted(ax, hi + _MARGIN_MM, side="right"))
        sl.append(slice(i0, i1))
    sub = [ax[s] for ax, s in zip(axes, sl)]
    if any(len(a) == 0 for a in sub):
        return
    pts = np.stack(np.meshgrid(*sub, indexing="ij"), axis=-1).reshape(-1, 3)
    vals = part(pts).reshape(tuple(len(a) for a in sub))
    block = tuple(sl)
    target[block] = smooth_union(target[block], vals, k_mm)


def _as_field(values: np.ndarray, origin: np.ndarray, spacing_mm: float) -> SampledField:
    """Float32 field with a positive border (so that its zero level meshes to a closed surface)."""
    v = values.astype(np.float32)
    for axis in range(3):
        for end in (0, -1):
            idx = [slice(None)] * 3
            idx[axis] = end
            v[tuple(idx)] = np.maximum(v[tuple(idx)], spacing_mm)
    return SampledField(values=v, origin_mm=np.asarray(origin, dtype=np.float64), spacing_mm=float(spacing_mm))
