"""Bone detection -> bone points -> per-level split on a simulated session with known anatomy."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.bone.detect import BoneDetector, pixel_size_from_image_to_probe
from usx_stream.bone.points import extract_bone_points, mean_beam_direction
from usx_stream.bone.split import split_levels
from usx_stream.frames import LEVELS, Volume


@pytest.fixture(scope="module")
def session():
    from usx_stream.sim.session import simulate_session

    return simulate_session(3, n_frames=24, passes=1, with_xray=False)


@pytest.fixture(scope="module")
def detections(session):
    detector = BoneDetector(pixel_size_mm=pixel_size_from_image_to_probe(session.calibration.get("ImageToProbe")))
    return detector, [detector.detect(f.pixels) for f in session.frames]


def test_detections_match_ground_truth_masks(session, detections):
    detector, dets = detections
    tol_px = 1.0 / detector.pixel_size_mm                     # 1 mm in depth
    correct = total = recalled = truth_total = 0
    for det, mask in zip(dets, session.bone_masks):
        jj, ii = np.nonzero(mask)
        truth = np.full(mask.shape[1], np.nan)
        truth[ii] = jj
        cols = np.round(det.pixels_ij[:, 0]).astype(int)
        ok = np.abs(det.pixels_ij[:, 1] - truth[cols]) <= tol_px          # NaN compares False
        correct, total = correct + ok.sum(), total + len(ok)
        found = np.zeros(mask.shape[1], bool)
        found[cols[ok]] = True
        recalled, truth_total = recalled + found[ii].sum(), truth_total + len(ii)
    assert truth_total > 500 and total > 0
    assert correct / total >= 0.85, correct / total
    assert recalled / truth_total >= 0.85, recalled / truth_total


def compound_max(session, dets, spacing=0.5) -> tuple[Volume, np.ndarray]:
    """Nearest-voxel, max-compounded bone channel of all frames, and the mean beam direction."""
    pts, vals, beams = [], [], []
    for frame, det in zip(session.frames, dets):
        m = frame.transform("ImageToReference", session.calibration)
        jj, ii = np.nonzero(det.probability)
        pts.append(np.stack([ii, jj, np.zeros_like(ii)], axis=1) @ m[:3, :3].T + m[:3, 3])
        vals.append(det.probability[jj, ii])
        beams.append(m)
    pts, vals = np.concatenate(pts), np.concatenate(vals)
    origin = pts.min(axis=0) - 2
    idx = np.round((pts - origin) / spacing).astype(int)
    shape = tuple(idx.max(axis=0)[::-1] + 3)
    bone = np.zeros(shape, np.float32)
    np.maximum.at(bone, (idx[:, 2], idx[:, 1], idx[:, 0]), vals)
    vol = Volume(np.zeros(shape, np.float32), origin, [spacing] * 3, channels={"bone": bone})
    return vol, mean_beam_direction(beams)


def test_bone_points_lie_on_the_true_bone_surface(session, detections):
    _, dets = detections
    vol, beam = compound_max(session, dets)
    pts = extract_bone_points(vol, threshold=0.5, beam_direction=beam, voxel_mm=1.0)
    assert len(pts) > 300
    dist, _ = session.spine.sample(pts)                       # signed distance to bone, mm
    assert np.percentile(np.abs(dist), 90) < 1.5, np.percentile(np.abs(dist), [50, 90])


def test_split_matches_the_nearest_vertebra(session, detections):
    _, dets = detections
    pts = np.concatenate([d.points_in(f.transform("ImageToReference", session.calibration))
                          for f, d in zip(session.frames, dets)])
    _, truth = session.spine.sample(pts)
    # Vertebral-body centres in Reference, as the X-ray labelmap gives them.
    centres = {lv: v.body_centroid_mm for lv, v in session.spine.vertebrae.items()}
    out = split_levels(pts, centres)
    assigned = sum(len(v) for v in out.values())
    assert assigned >= 0.9 * len(pts)
    lookup = {tuple(p): t for p, t in zip(pts, truth)}
    correct = sum(lookup[tuple(p)] == LEVELS.index(lv) for lv, arr in out.items() for p in arr)
    assert correct / assigned >= 0.9, correct / assigned
