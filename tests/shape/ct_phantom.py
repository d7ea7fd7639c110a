"""A CT made from a TotalSegmentator label map: vertebrae as bone (a dense shell round cancellous bone) in
soft tissue, the discs soft tissue, the whole patient tilted and scaled so an atlas of the original does not
fit it as it is. Its label map is the truth a segmentation of it is scored against."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from usx_stream.shape.ct_segment import SEED_LEVELS, TOTALSEGMENTATOR_CODES

SOFT_TISSUE_HU = 40
CANCELLOUS_HU = 220
CORTEX_HU = 450
PHANTOM_SCALE = 1.06
PHANTOM_TILT_DEG = 5.0


def phantom_ct(atlas: np.ndarray, atlas_ijk_to_lps: np.ndarray):
    """``(ct, truth, ijk_to_lps, seeds)``: HU volume, its labels, its affine and a body seed per level."""
    bone_codes = sorted({c for codes in TOTALSEGMENTATOR_CODES.values() for c in codes})
    spine = np.argwhere(np.isin(atlas, bone_codes))
    lo, hi = spine.min(axis=0), spine.max(axis=0) + 1
    crop = np.where(np.isin(atlas, bone_codes), atlas, 0)[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    crop = np.pad(crop, 16)   # room for the larger patient
    lo = lo - 16
    # output voxel v samples the crop at centre + A (v - centre): a patient PHANTOM_SCALE times larger, tilted
    t = np.radians(PHANTOM_TILT_DEG)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), -np.sin(t)], [0.0, np.sin(t), np.cos(t)]])
    a = rot / PHANTOM_SCALE
    centre = (np.array(crop.shape) - 1) / 2
    truth = ndimage.affine_transform(crop, a, offset=centre - a @ centre, order=0, mode="constant")
    bone = truth > 0
    shell = bone & ~ndimage.binary_erosion(bone, iterations=2)   # a 2-voxel (3 mm) cortex
    ct = np.full(truth.shape, SOFT_TISSUE_HU, dtype=np.int16)
    ct[bone] = CANCELLOUS_HU
    ct[shell] = CORTEX_HU
    affine = np.array(atlas_ijk_to_lps, dtype=float)
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    seeds = {}
    for lv in SEED_LEVELS:
        pts = np.argwhere(np.isin(truth, TOTALSEGMENTATOR_CODES[lv]))
        y = (pts @ affine[:3, :3].T)[:, 1]
        seeds[lv] = pts[y <= np.quantile(y, 0.3)].mean(axis=0) + [1.0, -1.0, 1.0]   # near, not at, the centre
    return ct, truth, affine, seeds


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
