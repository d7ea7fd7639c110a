"""Lumbar vertebrae (L1-L5) segmented from a CT, from one seed per level and a labelled atlas spine.

Real vertebrae are what the completion network is short of, and most public CTs come without a vertebra
segmentation. This is the classical way to make one where no learned segmenter is at hand:

1. bone is the smoothed CT above :data:`BONE_HU`; the "outer" bone (above :data:`OUTER_HU`, closed and
   hole-filled) gives the surface a template is fitted to (its lower threshold keeps the thin cortex of
   osteoporotic bodies, whose cancellous bone sits at 60-250 HU; fitted to the 180 HU surface instead, the
   s0028 L3 below is 1.19 mm off, not 0.49, though the sharp-edged test phantom then comes out at its true
   size rather than ~5 % too large);
2. each seed (a body centre: T12, L1..L5 and S1, voxel indices) is moved to the centroid of the outer bone
   around it;
3. each level of the atlas (a TotalSegmentator v2 label map of another patient) is fitted to the outer bone
   surface near its seed: started with its body centre on the seed and its cranial axis (the line through
   its neighbours' bodies) along the CT's, at three tilts; rigid ICP, then similarity ICP with the scale
   within :data:`SCALE_RANGE`, on the 80 % closest pairs; the best of the three is kept;
4. the fitted atlas vertebra's core (eroded 2 voxels) marks its bone; voxels two fits claim stay unmarked;
5. a watershed (image foresting transform) over the bone, costly where the bone is thin, gives every other
   bone voxel to the marker it reaches through the thickest bone; so the cuts fall on the thin contacts
   (facet joints, osteophyte bridges), not through a pedicle;
6. each lumbar level keeps its largest piece within 5 voxels of its fitted atlas vertebra, plus the fitted
   interior (cancellous bone below the bone threshold), closed and hole-filled.

T12 and S1 are fitted too: they take the ribs and the sacrum, which would otherwise flow into L1 and L5.

Checked against TotalSegmentator on the real CTs of the SonoGym packages: an L3 (s0028) to 0.50 mm mean
symmetric surface distance. It is not a learned segmenter: heavy degeneration (bridging osteophytes,
collapsed discs) and a contrast-filled aorta against the bodies defeat it (on s0024 a T12 was 1.9 mm off), so
look at every result (``usx-stream shape-model segment-ct --png``) before training on it, and drop a level
that is wrong (``--omit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

SEED_LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5", "S1")
"""A seed per level, cranial to caudal: the lumbar levels and the neighbours that take the ribs and the sacrum."""
LUMBAR = ("L1", "L2", "L3", "L4", "L5")
TOTALSEGMENTATOR_CODES = {"T12": (32,), "L1": (31,), "L2": (30,), "L3": (29,), "L4": (28,), "L5": (27,),
                          "S1": (25, 26)}
"""TotalSegmentator v2 labels of each level in the atlas (S1: the sacrum and its first segment)."""
BONE_HU = 180.0
OUTER_HU = 100.0
SMOOTH_VOXELS = 0.7
CROP_MARGIN_VOXELS = 45
SEED_RADIUS_VOXELS = 8
TARGET_RADIUS_MM = 70.0
TILTS_DEG = (-10.0, 0.0, 10.0)
SCALE_RANGE = (0.9, 1.2)
REACH_VOXELS = 5


@dataclass
class LevelFit:
    """How one atlas level was fitted: a similarity transform atlas LPS -> CT LPS, and its quality."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    residual_mm: float
    tilt_deg: float
    seed_ijk: np.ndarray
    volume_cm3: float = 0.0


@dataclass
class CtSegmentation:
    """``labels`` (I, J, K) int16 on the CT's grid (TotalSegmentator v2 codes 27..31), and each fit."""

    labels: np.ndarray
    ijk_to_lps: np.ndarray
    fits: dict[str, LevelFit] = field(default_factory=dict)


def _mm(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _shell(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def _ball(r: int) -> np.ndarray:
    g = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1].reshape(3, -1).T
    return g[(g ** 2).sum(1) <= r * r]


def refine_seed(mask: np.ndarray, seed: np.ndarray, *, radius: int = SEED_RADIUS_VOXELS,
                iterations: int = 4) -> np.ndarray:
    """Move ``seed`` (voxel indices) to the centroid of ``mask`` within ``radius`` voxels, ``iterations`` times."""
    c = np.asarray(seed, dtype=float)
    g = _ball(radius)
    for _ in range(iterations):
        p = np.rint(c).astype(int) + g
        p = p[np.all((p >= 0) & (p < mask.shape), axis=1)]
        inside = p[mask[tuple(p.T)]]
        if not len(inside):
            raise InputError(f"seed {np.round(seed, 1).tolist()}: no bone within {radius} voxels")
        c = inside.mean(axis=0)
    return c


def similarity(src: np.ndarray, dst: np.ndarray, scale_range=(0.0, np.inf)):
    """Least-squares ``(s, R, t)`` with ``dst ~ s R src + t`` (Umeyama), ``s`` clipped to ``scale_range``.

    The rotation does not depend on the scale; the translation is solved again for the clipped scale, so a
    clipped fit stays centred on the target.
    """
    from ..xray.pose_fit import rigid_fit

    m, s = rigid_fit(src, dst, with_scale=True)
    r = m[:3, :3] / s
    s = float(np.clip(s, *scale_range))
    return s, r, dst.mean(axis=0) - s * r @ src.mean(axis=0)


def icp(template: np.ndarray, tree, target: np.ndarray, start, *, scale_range, iterations: int = 40,
        keep: float = 0.8):
    """Trimmed ICP of ``template`` points onto ``target`` (its cKDTree ``tree``) from ``start = (s, R, t)``.

    Returns ``((s, R, t), residual)``, the residual the mean of the ``keep`` closest distances, mm.
    """
    s, r, t = start
    for _ in range(iterations):
        d, i = tree.query(s * template @ r.T + t)
        sel = d <= np.quantile(d, keep)
        s, r, t = similarity(template[sel], target[i[sel]], scale_range)
    d, _ = tree.query(s * template @ r.T + t)
    return (s, r, t), float(np.sort(d)[: int(keep * len(d))].mean())


def _crop_and_masks(ct: np.ndarray, ijk_to_lps: np.ndarray, seeds: dict[str, np.ndarray]):
    """The CT around the seeds, smoothed; its bone and outer-bone masks; the crop's origin and affine."""
    from scipy import ndimage

    p = np.array([seeds[lv] for lv in SEED_LEVELS])
    lo = np.maximum(p.min(axis=0).astype(int) - CROP_MARGIN_VOXELS, 0)
    hi = np.minimum(p.max(axis=0).astype(int) + CROP_MARGIN_VOXELS + 1, ct.shape)
    sub = ndimage.gaussian_filter(ct[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32), SMOOTH_VOXELS)
    affine = np.array(ijk_to_lps, dtype=np.float64)
    affine[:3, 3] = _mm(lo.astype(float), ijk_to_lps)
    outer = ndimage.binary_fill_holes(ndimage.binary_closing(sub > OUTER_HU, iterations=2))
    return sub, sub > BONE_HU, outer, lo, hi, affine


def _axis(centres: dict[str, np.ndarray], level: str) -> np.ndarray:
    """Unit cranial direction at ``level``: from the body below it to the body above it (an end: itself)."""
    i = SEED_LEVELS.index(level)
    d = centres[SEED_LEVELS[max(i - 1, 0)]] - centres[SEED_LEVELS[min(i + 1, len(SEED_LEVELS) - 1)]]
    return d / np.linalg.norm(d)


def _atlas_masks(atlas: np.ndarray) -> dict[str, np.ndarray]:
    masks = {lv: np.isin(atlas, codes) for lv, codes in TOTALSEGMENTATOR_CODES.items()}
    missing = [lv for lv, m in masks.items() if not m.any()]
    if missing:
        raise InputError(f"atlas: no voxels of {', '.join(missing)} (TotalSegmentator v2 labels "
                         f"{[TOTALSEGMENTATOR_CODES[lv] for lv in missing]})")
    return masks


def _atlas_body_centre(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The atlas body's centre, LPS mm: the centroid of the vertebra's most anterior 40 %, then refined."""
    pts = np.argwhere(mask)
    y = _mm(pts.astype(float), affine)[:, 1]
    return _mm(refine_seed(mask, pts[y <= np.quantile(y, 0.4)].mean(axis=0)), affine)


def _fit_level(level, mask, atlas_affine, atlas_centres, ct_centres, surface_pts):
    """Fit one atlas level to the CT's outer bone surface near its seed (module docstring, step 3)."""
    from scipy.spatial import cKDTree
    from scipy.spatial.transform import Rotation

    template = _mm(np.argwhere(_shell(mask)).astype(float), atlas_affine)
    template = template[::max(1, len(template) // 3000)]
    centre = ct_centres[level]
    target = surface_pts[np.linalg.norm(surface_pts - centre, axis=1) < TARGET_RADIUS_MM]
    if len(target) < 100:
        raise InputError(f"seed {level}: only {len(target)} bone surface points within {TARGET_RADIUS_MM} mm")
    tree = cKDTree(target)
    ta, ca = _axis(atlas_centres, level), _axis(ct_centres, level)
    align = Rotation.align_vectors(ca[None], ta[None])[0].as_matrix()
    best = None
    for tilt in TILTS_DEG:
        r0 = Rotation.from_euler("x", tilt, degrees=True).as_matrix() @ align
        x, _ = icp(template, tree, target, (1.0, r0, centre - r0 @ atlas_centres[level]), scale_range=(1.0, 1.0))
        x, err = icp(template, tree, target, x, scale_range=SCALE_RANGE)
        if best is None or err < best[1]:
            best = (x, err)
    (s, r, t), err = best
    tilt = float(np.degrees(np.arccos(np.clip(ta @ ca, -1.0, 1.0))))
    return LevelFit(s, r, t, err, tilt, np.zeros(3))


def _place(mask: np.ndarray, atlas_affine: np.ndarray, fit: LevelFit, affine: np.ndarray, shape) -> np.ndarray:
    """The atlas ``mask`` moved by ``fit`` onto the crop grid (``affine``): each crop voxel looks up the atlas
    voxel it came from, so a fit that enlarges leaves no gaps between moved voxel centres."""
    from scipy import ndimage

    a_inv = np.linalg.inv(atlas_affine[:3, :3])
    m = a_inv @ fit.rotation.T @ affine[:3, :3] / fit.scale
    o = a_inv @ (fit.rotation.T @ (affine[:3, 3] - fit.translation) / fit.scale - atlas_affine[:3, 3])
    return ndimage.affine_transform(mask.astype(np.uint8), m, offset=o, output_shape=tuple(shape), order=0) > 0


def segment_lumbar(ct: np.ndarray, ijk_to_lps: np.ndarray, seeds_ijk: dict[str, np.ndarray],
                   atlas: np.ndarray, atlas_ijk_to_lps: np.ndarray) -> CtSegmentation:
    """Label L1..L5 of ``ct`` (Hounsfield units, (I, J, K)) from a body-centre seed per level of :data:`SEED_LEVELS`.

    ``seeds_ijk`` maps each of T12, L1..L5, S1 to a point inside its vertebral body (voxel indices);
    ``atlas`` is a TotalSegmentator v2 label map of another patient holding those seven levels. Returns the
    labels (TotalSegmentator v2 codes, 31 = L1 .. 27 = L5) and each level's fit (module docstring).
    """
    from scipy import ndimage

    missing = [lv for lv in SEED_LEVELS if lv not in seeds_ijk]
    if missing:
        raise InputError(f"seeds: missing {', '.join(missing)} (one body centre per level of {', '.join(SEED_LEVELS)})")
    seeds = {lv: np.asarray(seeds_ijk[lv], dtype=float) for lv in SEED_LEVELS}
    for lv, c in seeds.items():
        if c.shape != (3,) or np.any(c < 0) or np.any(c > np.array(ct.shape) - 1):
            raise InputError(f"seeds: {lv} = {c.tolist()} is not a voxel of the CT (shape {list(ct.shape)})")
    masks = _atlas_masks(atlas)
    sub, bone, outer, lo, hi, affine = _crop_and_masks(ct, ijk_to_lps, seeds)
    surface_pts = _mm(np.argwhere(_shell(outer)).astype(float), affine)
    seeds = {lv: refine_seed(outer, c - lo) + lo for lv, c in seeds.items()}
    atlas_centres = {lv: _atlas_body_centre(masks[lv], atlas_ijk_to_lps) for lv in SEED_LEVELS}
    ct_centres = {lv: _mm(seeds[lv] - lo, affine) for lv in SEED_LEVELS}
    code = {lv: TOTALSEGMENTATOR_CODES[lv][-1] for lv in SEED_LEVELS}
    markers = np.zeros(sub.shape, dtype=np.int32)
    contested = np.zeros(sub.shape, dtype=bool)
    fits, interiors, reach = {}, {}, {}
    for lv in SEED_LEVELS:
        fit = _fit_level(lv, masks[lv], atlas_ijk_to_lps, atlas_centres, ct_centres, surface_pts)
        fit.seed_ijk = seeds[lv]
        fits[lv] = fit
        inside = _place(masks[lv], atlas_ijk_to_lps, fit, affine, sub.shape)
        interiors[lv] = ndimage.binary_erosion(inside, iterations=2)
        reach[lv] = ndimage.binary_dilation(inside, iterations=REACH_VOXELS)
        hit = _place(ndimage.binary_erosion(masks[lv], iterations=2), atlas_ijk_to_lps, fit, affine, sub.shape) & bone
        contested |= hit & (markers > 0)
        markers[hit & (markers == 0)] = code[lv]
    markers[contested] = 0
    labels = _flood(bone, markers)
    out = np.zeros(ct.shape, dtype=np.int16)
    crop = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    for lv in LUMBAR:
        others = [code[o] for o in SEED_LEVELS if o != lv]
        mk = _largest((labels == code[lv]) & reach[lv])
        mk |= interiors[lv] & (sub > 0) & ~np.isin(labels, others)
        mk = ndimage.binary_fill_holes(ndimage.binary_closing(mk, iterations=2))
        crop[mk & (crop == 0)] = code[lv]
    voxel_cm3 = abs(np.linalg.det(np.asarray(ijk_to_lps)[:3, :3])) / 1000.0
    for lv in LUMBAR:
        fits[lv].volume_cm3 = float((crop == code[lv]).sum() * voxel_cm3)
    return CtSegmentation(out, np.asarray(ijk_to_lps, dtype=np.float64), fits)


def _flood(bone: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """Watershed of the bone from ``markers`` (module docstring, step 5); 0 outside the bone."""
    from scipy import ndimage

    markers = markers.copy()
    border = np.zeros(bone.shape, dtype=bool)
    border[[0, -1]] = True
    border[:, [0, -1]] = True
    border[:, :, [0, -1]] = True
    markers[border & ~bone & (markers == 0)] = 1
    thickness = ndimage.distance_transform_edt(bone)
    cost = np.where(bone, np.clip(220 - 50 * thickness, 1, 220), 255).astype(np.uint8)
    labels = ndimage.watershed_ift(cost, markers.astype(np.int16))
    labels[~bone] = 0
    return labels


def _largest(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    cc, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, cc, range(1, n + 1))
    return cc == 1 + int(np.argmax(sizes))
