"""PLUS sequence files: the real spine-phantom recording, write -> read round trips, orientation, errors."""

from __future__ import annotations

import functools
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from usx_stream.frames import TrackedFrame
from usx_stream.io.plus_config import read_device_set
from usx_stream.io.sequence import iter_frames, orientation_flips, read_sequence, write_sequence
from usx_stream.transforms import rotation, translation

SPINE = "SpinePhantomFreehand.igs.mha"


def _header_text(path: Path) -> str:
    """Header of a MetaImage file as text, found without the package's parser."""
    data = path.read_bytes()
    end = data.index(b"ElementDataFile")
    return data[:end].decode("latin-1")


def _field(text: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)} = (.*)$", text, re.MULTILINE)
    assert m is not None, name
    return m.group(1).strip()


def _numbers(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split()])


@functools.lru_cache(maxsize=1)
def _read_spine(path: str):
    return read_sequence(path)


@pytest.fixture
def spine(plus_data):
    """The spine-phantom recording, read once per test session (tests must not modify it)."""
    return _read_spine(str(plus_data / SPINE))


def test_spine_phantom_has_21_frames_of_820x616_uint8(spine):
    assert len(spine.frames) == 21
    for f in spine.frames:
        assert f.pixels.shape == (616, 820) and f.pixels.dtype == np.uint8
        assert f.image_status and all(f.transform_status.values())
        assert set(f.transforms) == {"ProbeToTracker", "ReferenceToTracker", "StylusToTracker"}
    assert spine.orientation == "MFA"
    assert spine.header["DimSize"] == "820 616 21"
    assert spine.frames[0].timestamp == 215.102186
    assert np.all(np.diff([f.timestamp for f in spine.frames]) > 0)
    # B-mode with content: not a blank or constant image
    assert spine.frames[10].pixels.std() > 10


def test_every_transform_equals_the_numbers_in_the_header_text(plus_data, spine):
    text = _header_text(plus_data / SPINE)
    frame0 = _numbers(_field(text, "Seq_Frame0000_ProbeToTrackerTransform")).reshape(4, 4)
    assert np.array_equal(spine.frames[0].transforms["ProbeToTracker"], frame0)
    assert frame0[0, 3] == 172.641  # the file's own digits, as a sanity check of the independent parse
    for f in spine.frames:
        for name, m in f.transforms.items():
            expected = _numbers(_field(text, f"Seq_Frame{f.index:04d}_{name}Transform")).reshape(4, 4)
            assert np.array_equal(m, expected), (f.index, name)
        assert f.timestamp == float(_field(text, f"Seq_Frame{f.index:04d}_Timestamp"))


def test_pixels_match_the_decompressed_file_bytes(plus_data, spine):
    data = (plus_data / SPINE).read_bytes()
    start = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    raw = np.frombuffer(zlib.decompress(data[start:]), dtype=np.uint8).reshape(21, 616, 820)
    # MFA is PLUS's memory orientation: no flip
    assert np.array_equal(np.stack([f.pixels for f in spine.frames]), raw)


def test_image_to_reference_chains_the_device_set_calibration(plus_data, spine):
    ds = read_device_set(plus_data / "PlusDeviceSet_VolumeReconstructionOnly_SpinePhantom_NN_MEAN.xml")
    calib = ds.transform_repository()
    assert calib.has("ImageToProbe") and not calib.has("ImageToReference")  # needs the sequence's tracking
    image_to_probe = ds.coordinate_definitions[0].matrix
    for f in spine.frames:
        m = f.transform("ImageToReference", calib)
        expected = np.linalg.inv(f.transforms["ReferenceToTracker"]) @ f.transforms["ProbeToTracker"] @ image_to_probe
        np.testing.assert_allclose(m, expected, atol=1e-9)
        linear = m[:3, :3]
        sv = np.linalg.svd(linear, compute_uv=False)
        assert np.all((sv > 0.075) & (sv < 0.09)), sv  # ~0.08 mm pixels, the calibration's scale
        assert np.linalg.det(linear) > 0  # proper: no mirroring
        cols = linear / np.linalg.norm(linear, axis=0)
        off_diag = cols.T @ cols - np.eye(3)
        assert np.abs(off_diag).max() < 0.06  # rigid * scale up to the calibration's small shear
        assert f.is_valid("ImageToReference", calib)


@pytest.mark.parametrize("xml, volume", [
    ("PlusDeviceSet_VolumeReconstructionOnly_SpinePhantom_NN_MEAN.xml",
     "vtkVolumeReconstructorTestNNMEANvolumeRef.mha"),
    ("PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_LN_MEAN.xml",
     "vtkVolumeReconstructorTestLNMEANvolumeRef.mha"),
])
def test_clipped_frame_corners_reproduce_plus_volume_origin(plus_data, spine, xml, volume):
    """PLUS sets the reconstructed volume's origin to the minimum of the clipped image corners mapped by
    ImageToReference: our chain must land on the Offset PLUS wrote, to its printed precision."""
    ds = read_device_set(plus_data / xml)
    vr, calib = ds.volume_reconstruction, ds.transform_repository()
    x0, y0 = vr.clip_rectangle_origin
    x1, y1 = min(819, x0 + vr.clip_rectangle_size[0]), min(615, y0 + vr.clip_rectangle_size[1])
    corners = np.array([[x, y, 0, 1] for x in (x0, x1) for y in (y0, y1)], dtype=float)
    pts = np.concatenate([(f.transform("ImageToReference", calib) @ corners.T).T[:, :3] for f in spine.frames])
    offset = _numbers(_field(_header_text(plus_data / volume), "Offset"))
    np.testing.assert_allclose(pts.min(axis=0), offset, atol=1e-3)


def test_iter_frames_yields_the_same_frames(plus_data, spine):
    n = 0
    for a, b in zip(iter_frames(plus_data / SPINE), spine.frames):
        assert np.array_equal(a.pixels, b.pixels) and a.index == b.index
        assert all(np.array_equal(a.transforms[k], b.transforms[k]) for k in b.transforms)
        n += 1
    assert n == 21


def _assert_same(a: TrackedFrame, b: TrackedFrame) -> None:
    assert np.array_equal(a.pixels, b.pixels) and a.pixels.dtype == b.pixels.dtype
    assert a.timestamp == b.timestamp
    assert a.transforms.keys() == b.transforms.keys()
    assert all(np.array_equal(a.transforms[k], b.transforms[k]) for k in a.transforms)
    assert a.transform_status == b.transform_status
    assert a.image_status == b.image_status and a.fields == b.fields


@pytest.mark.parametrize("name, compress", [
    ("rt.igs.mha", True), ("rt.igs.mha", False), ("rt.igs.nrrd", True), ("rt.igs.nrrd", False),
    ("rt.igs.mhd", True), ("rt.igs.mhd", False),
])
def test_spine_write_read_is_lossless(tmp_path, spine, name, compress):
    path = write_sequence(tmp_path / name, spine, compress=compress, compress_level=1)
    back = read_sequence(path)
    assert len(back.frames) == 21 and back.orientation == "MF"
    for a, b in zip(spine.frames, back.frames):
        _assert_same(a, b)
    assert back.header.get("AnatomicalOrientation", back.header.get("ultrasound image type")) is not None
    assert not list(tmp_path.glob("*.part"))


def test_rewritten_header_keeps_the_files_digits(tmp_path, plus_data, spine):
    path = write_sequence(tmp_path / "digits.igs.mha", spine, compress=False)
    orig, new = _header_text(plus_data / SPINE), _header_text(path)
    for key in ("Seq_Frame0007_ProbeToTrackerTransform", "Seq_Frame0020_ReferenceToTrackerTransform",
                "Seq_Frame0003_Timestamp"):
        assert _numbers(_field(new, key)).tolist() == _numbers(_field(orig, key)).tolist()
    assert _field(new, "UltrasoundImageOrientation") == "MF"


def _synthetic(n=4, h=5, w=7, dtype=np.uint8, channels=None) -> list[TrackedFrame]:
    rng = np.random.default_rng(3)
    frames = []
    for i in range(n):
        shape = (h, w) if channels is None else (h, w, channels)
        pixels = (np.arange(np.prod(shape)).reshape(shape) * (i + 1)).astype(dtype)
        pose = translation(rng.normal(size=3) * 100) @ rotation(rng.normal(size=3), rng.uniform(-3, 3))
        frames.append(TrackedFrame(pixels=pixels, timestamp=1000.0 + i / 3, index=i,
                                   transforms={"ProbeToTracker": pose, "ReferenceToTracker": np.eye(4)},
                                   transform_status={"ProbeToTracker": i != 1, "ReferenceToTracker": True},
                                   image_status=i != 2,
                                   fields={"UnfilteredTimestamp": f"{1000 + i / 3:.9f}", "FrameNote": "a b=c"}))
    return frames


@pytest.mark.parametrize("suffix", [".igs.mha", ".igs.nrrd"])
@pytest.mark.parametrize("dtype, channels", [(np.uint8, None), (np.int16, None), (np.float32, None),
                                             (np.uint8, 3), (np.float64, None)])
def test_synthetic_round_trip_keeps_types_statuses_and_fields(tmp_path, suffix, dtype, channels):
    frames = _synthetic(dtype=dtype, channels=channels)
    header = {"CustomSetting": "42", "AnatomicalOrientation": "LPS"}
    back = read_sequence(write_sequence(tmp_path / f"s{suffix}", frames, header=header))
    for a, b in zip(frames, back.frames):
        _assert_same(a, b)
    assert back.frames[1].transform_status["ProbeToTracker"] is False
    assert back.frames[2].image_status is False
    assert back.header["CustomSetting"] == "42"


def test_unusual_status_strings_survive_round_trip(tmp_path):
    frames = _synthetic(n=2)
    frames[0].transform_status["ProbeToTracker"] = False
    frames[0].fields["ProbeToTrackerTransformStatus"] = "MISSING"
    back = read_sequence(write_sequence(tmp_path / "st.igs.mha", frames))
    assert back.frames[0].transform_status["ProbeToTracker"] is False
    assert back.frames[0].fields["ProbeToTrackerTransformStatus"] == "MISSING"
    assert "Seq_Frame0000_ProbeToTrackerTransformStatus = MISSING" in _header_text(tmp_path / "st.igs.mha")


def _with_orientation(path: Path, orientation: str) -> Path:
    data = path.read_bytes().replace(b"UltrasoundImageOrientation = MF\n",
                                     f"UltrasoundImageOrientation = {orientation}\n".encode())
    out = path.with_name(f"{orientation}.igs.mha")
    out.write_bytes(data)
    return out


@pytest.mark.parametrize("orientation, cols, rows", [
    ("MF", False, False), ("MFA", False, False), ("MFD", False, False), ("UF", True, False),
    ("UFA", True, False), ("MN", False, True), ("MNA", False, True), ("UN", True, True), ("UND", True, True),
])
def test_orientation_is_converted_to_mf_like_plus(tmp_path, orientation, cols, rows):
    """PLUS (igsioVideoFrame::GetFlipAxes): U<->M reverses pixel columns, N<->F reverses rows."""
    frames = _synthetic(n=2, h=3, w=4)
    src = write_sequence(tmp_path / "o.igs.mha", frames, compress=False)
    back = read_sequence(_with_orientation(src, orientation))
    assert back.orientation == orientation
    stored = frames[1].pixels  # the bytes in the file
    h, w = stored.shape
    for j in range(h):
        for i in range(w):
            jj = h - 1 - j if rows else j
            ii = w - 1 - i if cols else i
            assert back.frames[1].pixels[jj, ii] == stored[j, i]
    assert orientation_flips(orientation) == (cols, rows)


@pytest.mark.parametrize("bad", ["FM", "NU", "XX", "MFX", "M", ""])
def test_unsupported_orientation_is_named(tmp_path, bad):
    src = write_sequence(tmp_path / "o.igs.mha", _synthetic(n=1), compress=False)
    with pytest.raises(ValueError, match="UltrasoundImageOrientation"):
        read_sequence(_with_orientation(src, bad))


def test_big_endian_ushort_file_written_by_hand(tmp_path):
    values = (np.arange(12).reshape(1, 3, 4) * 1000).astype(">u2")
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = True\n"
              "CompressedData = False\nDimSize = 4 3 1\nElementType = MET_USHORT\n"
              "UltrasoundImageOrientation = MF\nSeq_Frame0000_Timestamp = 1.5\n"
              "Seq_Frame0000_ImageToReferenceTransform = 2 0 0 1 0 2 0 2 0 0 2 3 0 0 0 1\n"
              "ElementDataFile = LOCAL\n")
    path = tmp_path / "be.igs.mha"
    path.write_bytes(header.encode() + values.tobytes())
    seq = read_sequence(path)
    assert seq.frames[0].pixels.dtype == np.uint16
    assert np.array_equal(seq.frames[0].pixels, values[0].astype(np.uint16))
    assert seq.frames[0].transforms["ImageToReference"][2, 3] == 3.0
    assert seq.frames[0].timestamp == 1.5


def test_nrrd_with_several_gzip_members_reads_all_frames(tmp_path):
    """PLUS appends frames to NRRD files as new gzip members; all must be read."""
    import gzip

    frames = _synthetic(n=3)
    ref = write_sequence(tmp_path / "ref.igs.nrrd", frames, compress=False)
    data = ref.read_bytes()
    head, pixels = data[: data.index(b"\n\n") + 2], data[data.index(b"\n\n") + 2:]
    head = head.replace(b"encoding: raw", b"encoding: gzip")
    third = len(pixels) // 3
    members = b"".join(gzip.compress(pixels[k * third:(k + 1) * third]) for k in range(3))
    (tmp_path / "multi.igs.nrrd").write_bytes(head + members)
    back = read_sequence(tmp_path / "multi.igs.nrrd")
    for a, b in zip(frames, back.frames):
        _assert_same(a, b)


def test_iter_frames_streams_a_truncated_compressed_file(tmp_path, plus_data):
    """Frames before the damage are delivered one by one; the error comes at the first missing byte."""
    data = (plus_data / SPINE).read_bytes()
    cut = tmp_path / "cut.igs.mha"
    cut.write_bytes(data[: len(data) // 2])
    it = iter_frames(cut)
    first = next(it)
    assert first.pixels.shape == (616, 820)
    got = 1
    with pytest.raises(ValueError, match="pixel data ends"):
        for _ in it:
            got += 1
    assert 1 <= got < 21


@pytest.mark.parametrize("old, new, match", [
    (b"Seq_Frame0001_ProbeToTrackerTransform = ", b"Seq_Frame0001_ProbeToTrackerTransform = 1 x ",
     "Seq_Frame0001_ProbeToTrackerTransform"),
    (b"Seq_Frame0002_Timestamp = ", b"Seq_Frame0002_Timestamp = abc", "Seq_Frame0002_Timestamp"),
    (b"ElementType = MET_UCHAR", b"ElementType = MET_BOGUS", "MET_BOGUS"),
    (b"DimSize = 7 5 4", b"DimSize = 7 five 4", "DimSize"),
    (b"NDims = 3\n", b"NDims = 3\nthis line has no separator\n", "malformed MetaImage header line"),
    (b"Seq_Frame0000_Timestamp", b"Seq_FrameXX_Timestamp", "Seq_FrameXX_Timestamp"),
])
def test_malformed_headers_name_the_field(tmp_path, old, new, match):
    src = write_sequence(tmp_path / "m.igs.mha", _synthetic(), compress=False)
    data = src.read_bytes()
    assert old in data
    bad = tmp_path / "bad.igs.mha"
    bad.write_bytes(data.replace(old, new, 1))
    with pytest.raises(ValueError, match=re.escape(match)):
        read_sequence(bad)


def test_truncated_raw_data_and_missing_data_file_field(tmp_path):
    src = write_sequence(tmp_path / "t.igs.mha", _synthetic(), compress=False)
    data = src.read_bytes()
    (tmp_path / "short.igs.mha").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="pixel data ends"):
        read_sequence(tmp_path / "short.igs.mha")
    (tmp_path / "nodata.igs.mha").write_bytes(data[: data.index(b"ElementDataFile")])
    with pytest.raises(ValueError, match="ElementDataFile"):
        read_sequence(tmp_path / "nodata.igs.mha")


def test_writer_rejects_mismatched_frames_and_bad_names(tmp_path):
    frames = _synthetic(n=2)
    frames[1].pixels = np.zeros((9, 9), np.uint8)
    with pytest.raises(ValueError, match="frame 1"):
        write_sequence(tmp_path / "x.igs.mha", frames)
    with pytest.raises(ValueError, match="suffix"):
        write_sequence(tmp_path / "x.png", _synthetic(n=1))
    with pytest.raises(ValueError, match="line break"):
        write_sequence(tmp_path / "y.igs.mha", _synthetic(n=1), header={"Note": "a\nb"})
    assert not (tmp_path / "x.igs.mha").exists()


def test_invalid_frame_of_another_size_is_written_blank(tmp_path):
    frames = _synthetic(n=3)
    frames[1].image_status = False
    frames[1].pixels = np.zeros((0, 0), np.uint8)
    back = read_sequence(write_sequence(tmp_path / "b.igs.mha", frames))
    assert back.frames[1].image_status is False
    assert back.frames[1].pixels.shape == frames[0].pixels.shape and not back.frames[1].pixels.any()
    assert np.array_equal(back.frames[2].pixels, frames[2].pixels)


@pytest.mark.parametrize("suffix", [".igs.mha", ".igs.nrrd"])
def test_tracking_only_sequence_round_trip(tmp_path, suffix):
    frames = _synthetic(n=3)
    for f in frames:
        f.pixels = np.zeros((0, 0), np.uint8)
    back = read_sequence(write_sequence(tmp_path / f"track{suffix}", frames))
    assert len(back.frames) == 3
    for a, b in zip(frames, back.frames):
        assert b.pixels.size == 0
        assert all(np.array_equal(a.transforms[k], b.transforms[k]) for k in a.transforms)
        assert (a.timestamp, a.transform_status) == (b.timestamp, b.transform_status)


def test_volumetric_file_is_refused_with_a_pointer_to_read_volume(plus_data):
    with pytest.raises(ValueError, match="read_volume"):
        read_sequence(plus_data / "vtkVolumeReconstructorTestNNMEANvolumeRef.mha")


def test_a_volume_without_frame_fields_is_read_with_a_warning_that_says_so(plus_data, caplog):
    """PLUS's reconstructed volume has the layout of a sequence of 2D slices but no per-frame field: replayed
    by mistake, its slices would reach the node untracked without a word."""
    frames = read_sequence(plus_data / "SpinePhantomFreehandReconstructed.mha").frames
    assert len(frames) > 1 and not any(f.transforms for f in frames)
    assert "no per-frame fields (Seq_FrameNNNN_*)" in caplog.text
    assert "a reconstructed volume rather than a PLUS sequence?" in caplog.text
    caplog.clear()
    read_sequence(plus_data / "SpinePhantomFreehand.igs.mha")
    assert "per-frame" not in caplog.text


def test_a_corrupt_compressed_recording_is_refused_after_its_frames(tmp_path, plus_data):
    """PLUS's spine phantom recording with bytes flipped in its zlib stream: the frames inflate (to wrong
    pixels), and the stream's checksum says so, whether it arrives with the last frame's bytes or after."""
    data = bytearray((plus_data / SPINE).read_bytes())
    middle = len(data) - len(data) // 3
    data[middle:middle + 16] = bytes(b ^ 0x5A for b in data[middle:middle + 16])
    bad = tmp_path / "bad.igs.mha"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad.igs.mha: corrupt zlib pixel data .*: some frames .*have wrong pixels"):
        read_sequence(bad)


def test_corruption_found_only_by_the_checksum_after_the_last_frame(tmp_path):
    # 5 frames of 616 x 820, a pattern zlib compresses well: every frame inflates to the right count of
    # (partly wrong) bytes and the damage shows only at the stream's checksum, after the last frame.
    y, x = np.mgrid[:616, :820]
    frames = [TrackedFrame(pixels=((x // 7 + y // 5 + i) % 30).astype(np.uint8), timestamp=1.0 + 0.04 * i, index=i,
                           transforms={"ProbeToTracker": np.eye(4)}, transform_status={"ProbeToTracker": True})
              for i in range(5)]
    path = write_sequence(tmp_path / "s.igs.mha", frames, compress=True)
    data = bytearray(path.read_bytes())
    middle = len(data) - len(data) // 3
    data[middle:middle + 16] = bytes(b ^ 0x5A for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))
    delivered = []
    with pytest.raises(ValueError, match="s.igs.mha: corrupt zlib pixel data .*after all 5 frames: some frames"):
        for frame in iter_frames(path):
            delivered.append(frame)
    assert len(delivered) == 5  # what was read is not withheld; the error says it cannot be trusted
