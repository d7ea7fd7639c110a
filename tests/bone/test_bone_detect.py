"""Bone-surface detection: synthetic B-mode with a known surface, edge cases, the PLUS phantom."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.bone.detect import (BoneDetectionParams, BoneDetector, detect_bone,
                                    pixel_size_from_image_to_probe)

PIXEL_MM = 0.1


def synthetic_bmode(rng, *, h=400, w=480, surface=None, shadow=0.08, attenuation=2.5):
    """Speckle whose mean falls with depth, a bright curved bone surface and its acoustic shadow.

    Returns the uint8 image and the surface row per column (NaN where there is no bone).
    """
    j = np.arange(h)[:, None]
    i = np.arange(w)
    if surface is None:
        surface = 180 + 40 * np.cos((i - w / 2) / w * np.pi)      # a lamina-like arc, rows 180..220
        surface = np.where((i > 60) & (i < w - 60), surface, np.nan)
    mean = 120 * np.exp(-attenuation * j / h)
    img = mean * rng.rayleigh(0.8, size=(h, w))
    has = np.isfinite(surface)
    s = np.where(has, surface, h * 10)[None, :]
    img += np.where(has[None, :], 230 * np.exp(-0.5 * ((j - s) / 3.0) ** 2), 0) * rng.uniform(0.8, 1.0, (h, w))
    img *= np.where(j > s + 4, shadow, 1.0)
    return np.clip(img, 0, 255).astype(np.uint8), surface


def precision_recall(det, surface, tol_px):
    i = det.pixels_ij[:, 0]
    j = det.pixels_ij[:, 1]
    truth = surface[np.clip(np.round(i).astype(int), 0, len(surface) - 1)]
    hit = np.isfinite(truth) & (np.abs(j - truth) <= tol_px)
    precision = hit.mean() if len(hit) else 0.0
    cols = np.flatnonzero(np.isfinite(surface))
    found = np.zeros(len(surface), bool)
    found[np.round(i[hit]).astype(int)] = True
    # Detections are one per downsampled column: recall counts truth columns within one block.
    ds = 4
    covered = np.convolve(found, np.ones(2 * ds + 1), mode="same") > 0
    return precision, covered[cols].mean()


def test_finds_synthetic_surface_with_high_precision_and_recall():
    rng = np.random.default_rng(1)
    img, surface = synthetic_bmode(rng)
    det = detect_bone(img, pixel_size_mm=PIXEL_MM)
    precision, recall = precision_recall(det, surface, tol_px=5)     # 0.5 mm
    assert precision >= 0.95 and recall >= 0.9, (precision, recall)
    assert det.probability.shape == img.shape and det.probability.dtype == np.float32
    assert 0 <= det.probability.min() and det.probability.max() <= 1
    assert np.all((det.confidence > 0) & (det.confidence <= 1))
    # The probability is concentrated on the surface: high on it, zero deep in the shadow.
    cols = np.arange(100, 380)
    on = det.probability[np.round(surface[cols]).astype(int), cols]
    assert np.median(on) > 0.5
    assert det.probability[350:, :].max() == 0


def test_bright_tissue_without_shadow_is_not_bone():
    rng = np.random.default_rng(2)
    img, _ = synthetic_bmode(rng, surface=np.full(480, np.nan))
    img[100:104, 100:300] = 250                       # bright fascia, tissue continues below it
    det = detect_bone(img, pixel_size_mm=PIXEL_MM)
    assert len(det.confidence) == 0
    assert not det.probability.any()


def test_gain_changes_do_not_matter():
    rng = np.random.default_rng(3)
    img, surface = synthetic_bmode(rng, attenuation=1.0)
    dark = (img * 0.4).astype(np.uint8)
    for frame in (img, dark):
        p, r = precision_recall(detect_bone(frame, pixel_size_mm=PIXEL_MM), surface, tol_px=5)
        assert p >= 0.9 and r >= 0.85


def test_empty_black_and_tiny_frames():
    det = detect_bone(np.zeros((300, 200), np.uint8), pixel_size_mm=PIXEL_MM)
    assert det.pixels_ij.shape == (0, 2) and det.confidence.shape == (0,)
    assert det.probability.shape == (300, 200) and not det.probability.any()
    tiny = detect_bone(np.full((8, 8), 100, np.uint8), pixel_size_mm=PIXEL_MM)
    assert tiny.probability.shape == (8, 8) and len(tiny.confidence) == 0


def test_odd_sizes_and_float_input():
    rng = np.random.default_rng(4)
    img, surface = synthetic_bmode(rng, h=403, w=481, surface=np.r_[np.full(100, np.nan), np.full(281, 200.0),
                                                                    np.full(100, np.nan)])
    det = detect_bone(img.astype(np.float32), pixel_size_mm=PIXEL_MM)
    assert det.probability.shape == (403, 481)
    assert np.all(np.abs(det.pixels_ij[:, 1] - 200) <= 5)


def test_points_in_maps_pixels_through_the_transform():
    rng = np.random.default_rng(5)
    img, _ = synthetic_bmode(rng)
    det = detect_bone(img, pixel_size_mm=PIXEL_MM)
    m = np.diag([0.1, 0.2, 1.0, 1.0])
    m[:3, 3] = [5, 6, 7]
    pts = det.points_in(m)
    assert np.allclose(pts[:, 0], det.pixels_ij[:, 0] * 0.1 + 5)
    assert np.allclose(pts[:, 1], det.pixels_ij[:, 1] * 0.2 + 6)
    assert np.allclose(pts[:, 2], 7)


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="bone.ridge_ratio: must be > 1, got 0.5"):
        BoneDetectionParams(ridge_ratio=0.5)
    with pytest.raises(ValueError, match="bone.downsample: must be in"):
        BoneDetectionParams(downsample=-1)
    with pytest.raises(ValueError, match="bone.pixel_size_mm: must be > 0, got 0"):
        BoneDetector(pixel_size_mm=0)
    with pytest.raises(ValueError, match="pixels must be"):
        detect_bone(np.zeros((3, 4, 5)), pixel_size_mm=PIXEL_MM)


def test_pixel_size_from_calibration():
    m = np.eye(4)
    m[:3, 0] = [0.0, 0.085, 0.0]
    m[:3, 1] = [0.079, 0.0, 0.0]
    assert pixel_size_from_image_to_probe(m) == pytest.approx(0.079)


def test_plus_phantom_lamina_is_found(plus_data):
    from usx_stream.io.plus_config import read_device_set
    from usx_stream.io.sequence import read_sequence

    seq = read_sequence(plus_data / "SpinePhantomFreehand.igs.mha")
    device = read_device_set(plus_data / "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml")
    image_to_probe = device.transform_repository().get("ImageToProbe")
    detector = BoneDetector(pixel_size_mm=pixel_size_from_image_to_probe(image_to_probe))
    dets = [detector.detect(f.pixels) for f in seq.frames]
    # Every frame of the sweep shows some bone (spinous process, laminae or transverse processes).
    assert sum(len(d.confidence) >= 5 for d in dets) >= 0.9 * len(dets)
    assert sum(len(d.confidence) for d in dets) >= 300
    # Frame 7 shows the lamina as a bright arc 18-23 mm deep (rows ~230-290) across columns 400-600.
    d7 = dets[7]
    sel = (d7.pixels_ij[:, 0] > 400) & (d7.pixels_ij[:, 0] < 600)
    assert sel.sum() >= 20
    assert np.all((d7.pixels_ij[sel, 1] > 220) & (d7.pixels_ij[sel, 1] < 300))
    # Nothing is found outside the imaged columns of this probe (~185..630).
    all_i = np.concatenate([d.pixels_ij[:, 0] for d in dets])
    assert all_i.min() > 180 and all_i.max() < 640


def test_launch_defaults_match_the_detector_defaults():
    from dataclasses import fields

    from usx_stream.node.launch import default_launch

    bone = default_launch().bone
    params = BoneDetectionParams.from_mapping(bone.as_dict())
    assert params == BoneDetectionParams()
    assert {f.name for f in fields(BoneDetectionParams)} <= set(bone.as_dict())

