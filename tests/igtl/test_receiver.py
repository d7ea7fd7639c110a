"""PLUS conventions: image/transform pairing, interpolation, time offsets, statuses, long names, X-ray."""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.igtl import ImageContent, Message
from usx_stream.igtl.codec import HEADER_SIZE, decode_body, encode_bytes, parse_header
from usx_stream.igtl.receiver import PlusReceiver, ReceiverConfig
from usx_stream.transforms import rotation, translation
from usx_stream.xray.cache import XrayCache

IMAGE_TO_REF = np.array([[0.0, -0.1, 0.0, 5.0], [0.1, 0.0, 0.0, 6.0], [0.0, 0.0, 0.1, 7.0], [0, 0, 0, 1]])


def image(t: float, value: int = 0, meta=None, device="Image_Reference") -> Message:
    pixels = np.full((4, 6), value, np.uint8)
    return Message("IMAGE", device, ImageContent.from_2d(pixels, IMAGE_TO_REF), t, dict(meta or {}), 2)


def tf(name: str, t: float, m: np.ndarray, status: str = "OK") -> Message:
    return Message("TRANSFORM", name, m, t, {"TransformStatus": status}, 2)


def wire(msg: Message) -> Message:
    raw = encode_bytes(msg)
    return decode_body(parse_header(raw[:HEADER_SIZE]), memoryview(bytearray(raw[HEADER_SIZE:])))


def test_plus_order_with_configured_names_releases_on_last_transform():
    r = PlusReceiver(ReceiverConfig(transform_names=("ProbeToTracker", "ReferenceToTracker")))
    probe, ref = translation([1, 2, 3]), rotation([0, 0, 1], 0.3)
    assert r.feed(wire(image(10.0, 7)), now=0) == []
    assert r.feed(wire(tf("ProbeToTracker", 10.0, probe)), now=0) == []
    (frame,) = r.feed(wire(tf("ReferenceToTracker", 10.0, ref)), now=0)
    assert frame.timestamp == 10.0 and frame.index == 0 and frame.image_status
    assert frame.pixels.shape == (4, 6) and frame.pixels[0, 0] == 7
    np.testing.assert_allclose(frame.transforms["ImageToReference"], IMAGE_TO_REF, atol=1e-6)
    np.testing.assert_allclose(frame.transforms["ProbeToTracker"], probe, atol=1e-6)
    np.testing.assert_allclose(frame.transforms["ReferenceToTracker"], ref, atol=1e-6)
    assert all(frame.transform_status.values())
    assert r.counts["exact"] == 2


def test_learned_names_first_frame_waits_for_the_stream_to_move_on():
    r = PlusReceiver()
    out = r.feed(image(1.0), now=0) + r.feed(tf("AToB", 1.0, np.eye(4)), now=0) + r.feed(tf("CToD", 1.0, np.eye(4)), now=0)
    assert out == []  # names not known yet: wait until a later-stamped message shows the frame is complete
    out = r.feed(image(2.0), now=0)
    assert len(out) == 1 and set(out[0].transforms) == {"ImageToReference", "AToB", "CToD"}
    assert r.feed(tf("AToB", 2.0, np.eye(4)), now=0) == []
    (second,) = r.feed(tf("CToD", 2.0, np.eye(4)), now=0)  # from now on: released as soon as complete
    assert second.timestamp == 2.0 and second.index == 1


def test_interpolation_between_samples_and_status():
    r = PlusReceiver(ReceiverConfig(transform_names=("ProbeToTracker",)))
    m0 = translation([0, 0, 0])
    m1 = translation([10, 0, 0]) @ rotation([0, 0, 1], np.pi / 2)
    r.feed(tf("ProbeToTracker", 0.0, m0), now=0)
    assert r.feed(image(0.25), now=0) == []
    (frame,) = r.feed(tf("ProbeToTracker", 1.0, m1, status="INVALID"), now=0)
    expected = translation([2.5, 0, 0]) @ rotation([0, 0, 1], np.pi / 8)
    np.testing.assert_allclose(frame.transforms["ProbeToTracker"], expected, atol=1e-9)
    assert frame.transform_status["ProbeToTracker"] is False  # one of the two samples is invalid
    assert r.counts["interpolated"] == 1


def test_wait_runs_out_nearest_within_gap_else_missing():
    r = PlusReceiver(ReceiverConfig(transform_names=("AToB", "CToD"), max_wait_s=0.1, max_gap_s=0.2))
    r.feed(tf("AToB", 4.9, translation([1, 0, 0])), now=0)
    assert r.feed(image(5.0), now=0) == []
    assert r.poll(now=0.05) == []
    (frame,) = r.poll(now=0.1)
    np.testing.assert_allclose(frame.transforms["AToB"], translation([1, 0, 0]))  # 0.1 s old: within max_gap
    assert "CToD" not in frame.transforms and r.counts["missing_transform"] == 1


def test_local_time_offsets_align_devices():
    r = PlusReceiver(ReceiverConfig(transform_names=("ProbeToTracker",),
                                    time_offsets_s={"ProbeToTracker": -0.5, "Image_Reference": 0.25}))
    r.feed(tf("ProbeToTracker", 10.75, translation([3, 0, 0])), now=0)  # -> 10.25
    (frame,) = r.feed(image(10.0), now=0)  # -> 10.25
    assert frame.timestamp == 10.25
    np.testing.assert_allclose(frame.transforms["ProbeToTracker"], translation([3, 0, 0]))
    assert r.counts["exact"] == 1


def test_long_transform_name_from_metadata_and_invalid_status():
    name = "StylusTipToReferenceLongName"
    msg = wire(tf(name, 3.0, translation([0, 1, 0]), status="INVALID"))
    assert msg.device_name == name
    r = PlusReceiver(ReceiverConfig(transform_names=(name,)))
    r.feed(msg, now=0)
    (frame,) = r.feed(wire(image(3.0)), now=0)
    assert frame.transform_status[name] is False
    assert not frame.is_valid(name)


def test_frame_fields_from_image_metadata_take_precedence():
    exact = translation([0.1234567891234, 2, 3])
    meta = {"ProbeToTrackerTransform": " ".join(repr(float(v)) for v in exact.reshape(-1)),
            "ProbeToTrackerTransformStatus": "OK", "ImageStatus": "INVALID", "FrameNumber": "17",
            "Timestamp": repr(123.456789012345)}
    r = PlusReceiver(ReceiverConfig(transform_names=("ProbeToTracker",)))
    (frame,) = r.feed(wire(image(123.456789, meta=meta)), now=0)  # complete at once: nothing to wait for
    np.testing.assert_array_equal(frame.transforms["ProbeToTracker"], exact)  # float64, not float32
    assert frame.timestamp == 123.456789012345
    assert frame.image_status is False and frame.fields == {"FrameNumber": "17"}


def test_xray_and_labelmap_under_configured_names():
    r = PlusReceiver(ReceiverConfig(xray_device="CArm", xray_labelmap_device="CArmLabels"))
    spacing = np.diag([0.3, 0.3, 1.0, 1.0])
    xray = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    labels = np.zeros((5, 7), np.uint8)
    labels[1:3, 2:4] = 3
    (x1,) = r.feed(Message("IMAGE", "CArm", ImageContent.from_2d(xray, spacing), 50.0), now=0)
    assert x1.labelmap is None
    np.testing.assert_array_equal(x1.pixels, xray)
    np.testing.assert_allclose(x1.pixel_spacing_mm, [0.3, 0.3])
    (x2,) = r.feed(Message("IMAGE", "CArmLabels", ImageContent.from_2d(labels, spacing), 51.0), now=0)
    np.testing.assert_array_equal(x2.labelmap, labels)
    assert x2.pixels is None and x2.timestamp == 51.0   # each item holds what its message carried
    # the cache merges the parts, in either order of arrival
    for items in ((x1, x2), (x2, x1)):
        cache = XrayCache(image_device="CArm", labelmap_device="CArmLabels")
        for item in items:
            cache.update_from_xray_image(item)
        snap = cache.snapshot()
        np.testing.assert_array_equal(snap.pixels, xray)
        np.testing.assert_array_equal(snap.labelmap, labels)
        assert (snap.timestamp, snap.labelmap_timestamp) == (50.0, 51.0)


def test_labelmap_before_any_image_is_not_given_an_invented_image():
    r = PlusReceiver()
    labels = np.zeros((5, 7), np.uint16)
    labels[2, 3] = 300                                   # out of range: must not wrap to 44 on the way
    (item,) = r.feed(Message("IMAGE", "XrayLabelmap", ImageContent.from_2d(labels, np.eye(4)), 5.0), now=0)
    assert item.pixels is None
    assert item.labelmap.max() == 300
    cache = XrayCache()
    with pytest.raises(ValueError, match="label 300"):
        cache.update_from_xray_image(item)
    assert cache.rejected == 1 and cache.snapshot().labelmap is None


def test_config_validated():
    with pytest.raises(ValueError, match="image_device"):
        ReceiverConfig(image_device="Image")
    with pytest.raises(ValueError, match="max_wait_s"):
        ReceiverConfig(max_wait_s=-1)


def test_a_tool_that_stops_reporting_does_not_hold_frames():
    r = PlusReceiver(ReceiverConfig(transform_names=("ProbeToTracker", "StylusToTracker"), max_wait_s=60, max_gap_s=0.2))
    r.feed(tf("StylusToTracker", 0.9, np.eye(4)), now=0)  # then the stylus leaves the field of view
    assert r.feed(image(1.0), now=0) == []
    out = []
    for k in range(1, 20):  # the probe keeps reporting at 60 Hz
        out += r.feed(tf("ProbeToTracker", 1.0 + k / 60, translation([k, 0, 0])), now=0)
        if out:
            break
    assert len(out) == 1 and k == 13  # released once the probe is more than 0.2 s past the image
    # its last sample is 0.1 s older than the image: within max_gap, so it is used as the nearest sample
    np.testing.assert_array_equal(out[0].transforms["StylusToTracker"], np.eye(4))
    assert r.counts["nearest"] == 2  # stylus (before the image) and probe (first sample after it)
