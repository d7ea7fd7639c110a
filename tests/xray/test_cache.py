"""XrayCache: validation that keeps the last good X-ray, versions, threads, OpenIGTLink IMAGE content."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from usx_stream.frames import XrayImage
from usx_stream.igtl import ImageContent, Message, decode_body, encode_bytes
from usx_stream.igtl.codec import HEADER_SIZE, parse_header
from usx_stream.xray.cache import XrayCache, validate_labelmap
from usx_stream.xray.geometry import load_carm_geometry

SIM_CARM = Path(__file__).resolve().parents[2] / "calibration" / "sim_carm.json"
SHAPE = (512, 512)


@pytest.fixture
def carm():
    return load_carm_geometry(SIM_CARM)


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(SHAPE, dtype=np.float32)


def _labelmap(levels=(1, 2, 3, 4, 5)) -> np.ndarray:
    lm = np.zeros(SHAPE, dtype=np.uint8)
    for n, label in enumerate(levels):
        lm[60 + 80 * n: 120 + 80 * n, 200:300] = label
    return lm


def test_empty_cache_and_calibration_geometry(carm):
    cache = XrayCache.from_calibration(SIM_CARM)
    snap = cache.snapshot()
    assert cache.version == 0 and snap.version == 0
    assert snap.pixels is None and snap.labelmap is None and snap.levels == ()
    assert snap.geometry.name == carm.name and not snap.ready
    with pytest.raises(ValueError, match="no X-ray image"):
        snap.to_xray_image()


def test_update_from_arrays_gives_read_only_copies_and_levels(carm):
    cache = XrayCache(geometry=carm)
    img, lm = _image(), _labelmap((1, 3, 5))
    v = cache.update(pixels=img, labelmap=lm, timestamp=12.5)
    snap = cache.snapshot()
    assert v == 1 == snap.version and snap.ready and snap.labelmap_is_current
    assert snap.levels == ("L1", "L3", "L5")
    assert snap.timestamp == snap.labelmap_timestamp == 12.5
    img[0, 0] = -1.0  # the sender reuses its buffer: the cache must not change
    assert snap.pixels[0, 0] != -1.0
    with pytest.raises(ValueError):
        snap.pixels[0, 0] = 0.0
    assert snap.labelmap.dtype == np.uint8 and not snap.labelmap.flags.writeable
    xray = snap.to_xray_image()
    assert isinstance(xray, XrayImage) and xray.geometry is carm
    np.testing.assert_array_equal(xray.pixel_spacing_mm, carm.pixel_spacing_mm)


@pytest.mark.parametrize("bad, message", [
    (7, r"labelmap: label 7 outside 0\.\.5"),
    (255, r"labelmap: label 255 outside 0\.\.5"),
])
def test_bad_labels_are_rejected_and_the_previous_xray_is_kept(carm, bad, message):
    cache = XrayCache(geometry=carm)
    cache.update(pixels=_image(1), labelmap=_labelmap((2, 3)), timestamp=1.0)
    good = cache.snapshot()
    lm = _labelmap()
    lm[5, 5] = bad
    with pytest.raises(ValueError, match=message):
        cache.update(pixels=_image(2), labelmap=lm, timestamp=2.0)
    assert cache.snapshot() is good and cache.version == 1
    assert cache.rejected == 1 and "outside 0..5" in cache.last_error


def test_negative_and_fractional_labels_are_rejected():
    with pytest.raises(ValueError, match=r"label -1 outside"):
        validate_labelmap(np.full((4, 4), -1, dtype=np.int16))
    with pytest.raises(ValueError, match=r"label 2\.5 outside"):
        validate_labelmap(np.full((4, 4), 2.5))
    nan = np.zeros((4, 4))
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"label nan outside 0\.\.5 .* at row 1, column 2"):
        validate_labelmap(nan)
    np.testing.assert_array_equal(validate_labelmap(np.full((1, 4, 4), 3.0)), np.full((4, 4), 3, np.uint8))
    # the X-ray image given as the labelmap: the message says so instead of listing its grey values
    image = np.linspace(-0.03, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    with pytest.raises(ValueError, match=r"label -0\.03 outside 0\.\.5 .* found 4096 distinct values from -0\.03 "
                                         r"to 1: an image, not a labelmap \(image and labelmap swapped\?\)$"):
        validate_labelmap(image)


def test_shape_mismatches_are_rejected(carm):
    cache = XrayCache(geometry=carm)
    with pytest.raises(ValueError, match=r"labelmap: shape \(512, 400\) does not match the X-ray image shape \(512, 512\)"):
        cache.update(pixels=_image(), labelmap=np.zeros((512, 400), np.uint8))
    with pytest.raises(ValueError, match=r"pixels: image shape \(256, 256\) does not match the C-arm detector \(512, 512\)"):
        cache.update(pixels=np.zeros((256, 256), np.float32))
    assert cache.version == 0 and cache.rejected == 2
    cache.update(pixels=_image())
    with pytest.raises(ValueError, match=r"labelmap: shape \(100, 100\) does not match"):
        cache.update(labelmap=np.zeros((100, 100), np.uint8))
    small = dataclasses.replace(carm, detector_shape=(256, 256), principal_point_px=np.array([127.5, 127.5]))
    with pytest.raises(ValueError, match=r"geometry: image shape \(512, 512\) does not match the C-arm detector \(256, 256\)"):
        cache.set_geometry(small)
    assert cache.snapshot().geometry is carm and cache.version == 1


def test_bad_pixels_are_rejected(carm):
    cache = XrayCache(geometry=carm)
    img = _image()
    img[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"pixels: non-finite value nan at row 3, column 4"):
        cache.update(pixels=img)
    with pytest.raises(ValueError, match=r"pixels: expected a non-empty \(H, W\) image or a \(1, H, W\) single slice, got shape \(2, 512, 512\)"):
        cache.update(pixels=np.zeros((2, *SHAPE), np.float32))
    with pytest.raises(ValueError, match="timestamp: expected a finite time"):
        cache.update(pixels=_image(), timestamp=float("inf"))
    assert cache.version == 0


def test_separate_image_and_labelmap_updates(carm):
    cache = XrayCache(geometry=carm)
    cache.update(pixels=_image(1), timestamp=10.0)
    assert cache.snapshot().labelmap is None and not cache.snapshot().ready
    cache.update(labelmap=_labelmap((2,)), timestamp=10.0)
    snap = cache.snapshot()
    assert snap.ready and snap.levels == ("L2",) and snap.labelmap_is_current and snap.version == 2
    # A new image of the same size keeps the labelmap, flagged as older than the image.
    cache.update(pixels=_image(2), timestamp=20.0)
    snap = cache.snapshot()
    assert snap.levels == ("L2",) and not snap.labelmap_is_current
    # Its own labelmap catches up.
    cache.update(labelmap=_labelmap((1, 2)), timestamp=20.0)
    assert cache.snapshot().labelmap_is_current and cache.snapshot().levels == ("L1", "L2")


def test_new_image_of_another_size_drops_the_old_labelmap():
    cache = XrayCache()
    cache.update(pixels=_image(), labelmap=_labelmap())
    cache.update(pixels=np.zeros((300, 200), np.uint16), timestamp=5.0)
    snap = cache.snapshot()
    assert snap.pixels.shape == (300, 200) and snap.labelmap is None and snap.levels == ()


def test_update_from_igtl_content_2d_and_single_slice(carm):
    cache = XrayCache(geometry=carm, image_device="CArm", labelmap_device="CArmLabels")
    ijk_to_world = np.diag([0.75, 0.75, 1.0, 1.0])
    # A decoded IMAGE message carries (1, H, W) voxels; a 2D array is accepted too.
    cache.update_from_igtl("CArm", _image()[None], ijk_to_world, timestamp=3.0)
    cache.update_from_igtl("CArmLabels", _labelmap((4, 5)), timestamp=3.0)
    snap = cache.snapshot()
    assert snap.pixels.shape == SHAPE and snap.levels == ("L4", "L5") and snap.version == 2
    np.testing.assert_allclose(snap.pixel_spacing_mm, [0.75, 0.75])
    with pytest.raises(ValueError, match=r"device_name: 'Other' is neither 'CArm' nor 'CArmLabels'"):
        cache.update_from_igtl("Other", _image())
    assert cache.version == 2


def test_update_from_an_encoded_and_decoded_image_message(carm):
    """Through the real OpenIGTLink codec: what the receiver thread hands over."""
    cache = XrayCache(geometry=carm)
    lm = _labelmap((1, 2, 3))
    for device, pixels in (("Xray", (_image() * 1000).astype(np.uint16)), ("XrayLabelmap", lm)):
        ijk = np.diag([0.75, 0.75, 1.0, 1.0])
        wire = encode_bytes(Message("IMAGE", device, ImageContent.from_2d(pixels, ijk), timestamp=42.25))
        msg = decode_body(parse_header(wire[:HEADER_SIZE]), memoryview(wire)[HEADER_SIZE:])
        cache.update_from_message(msg)
    snap = cache.snapshot()
    assert snap.ready and snap.levels == ("L1", "L2", "L3") and snap.timestamp == pytest.approx(42.25)
    np.testing.assert_array_equal(snap.labelmap, lm)


def test_update_from_xray_image(carm):
    cache = XrayCache()
    cache.update_from_xray_image(XrayImage(_image(), _labelmap((3,)), carm.pixel_spacing_mm, 7.0, carm))
    snap = cache.snapshot()
    assert snap.ready and snap.geometry is carm and snap.levels == ("L3",) and snap.timestamp == 7.0


def test_consumer_thread_notices_every_update(carm):
    cache = XrayCache(geometry=carm)
    seen: list[tuple[int, tuple[str, ...]]] = []
    done = threading.Event()

    def consumer():
        version = 0
        while version < 3:
            snap = cache.wait_for_update(version, timeout_s=10.0)
            if snap is None:
                break
            version = snap.version
            seen.append((snap.version, snap.levels))
        done.set()

    t = threading.Thread(target=consumer)
    t.start()
    cache.update(pixels=_image(), labelmap=_labelmap((1,)))
    cache.update(labelmap=_labelmap((1, 2)))
    cache.update(labelmap=_labelmap((1, 2, 3)))
    assert done.wait(10.0)
    t.join(10.0)
    assert seen[-1] == (3, ("L1", "L2", "L3"))
    assert [v for v, _ in seen] == sorted(v for v, _ in seen)
    assert cache.wait_for_update(3, timeout_s=0.0) is None


def test_concurrent_writers_and_readers_see_consistent_snapshots(carm):
    cache = XrayCache(geometry=carm)
    images = {k: np.full(SHAPE, float(k), np.float32) for k in range(1, 6)}
    labels = {k: np.full(SHAPE, k, np.uint8) for k in range(1, 6)}
    errors: list[str] = []
    start = threading.Barrier(4)

    def writer(ks):
        start.wait()
        for k in ks * 10:
            cache.update(pixels=images[k], labelmap=labels[k], timestamp=float(k))

    def reader():
        start.wait()
        for _ in range(200):
            s = cache.snapshot()
            if s.pixels is not None and not (s.pixels[0, 0] == s.labelmap[0, 0] == s.timestamp):
                errors.append(f"torn snapshot v{s.version}")

    threads = [threading.Thread(target=writer, args=([1, 2, 3],)), threading.Thread(target=writer, args=([4, 5],)),
               threading.Thread(target=reader), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30.0)
    assert errors == []
    assert cache.version == 50
