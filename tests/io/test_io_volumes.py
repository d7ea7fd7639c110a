"""3D volumes: PLUS's reconstructed volumes, round trips through every format and type, geometry errors."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from usx_stream.errors import InputError
from usx_stream.frames import Volume
from usx_stream.io.volumes import read_volume, write_volume

PLUS_VOLUMES = ("SpinePhantomFreehandReconstructed.mha", "vtkVolumeReconstructorTestLNMEANvolumeRef.mha",
                "vtkVolumeReconstructorTestNNMEANvolumeRef.mha")


def _header_numbers(path, name):
    text = path.read_bytes()[:4000].decode("latin-1")
    m = re.search(rf"^{name} = (.*)$", text, re.MULTILINE)
    return np.array([float(v) for v in m.group(1).split()])


@pytest.mark.parametrize("name", PLUS_VOLUMES)
def test_reads_plus_reconstructed_volumes(plus_data, name):
    path = plus_data / name
    vol = read_volume(path)
    dims = _header_numbers(path, "DimSize").astype(int)
    assert vol.dims_xyz == tuple(dims)
    assert vol.data.shape == tuple(dims[::-1]) and vol.data.dtype == np.uint8
    np.testing.assert_array_equal(vol.origin_mm, _header_numbers(path, "Offset"))
    np.testing.assert_array_equal(vol.spacing_mm, _header_numbers(path, "ElementSpacing"))
    assert vol.frame == "Reference"
    # A compounded spine phantom: part of the grid filled, bright bone echoes present.
    filled = (vol.data > 0).mean()
    assert 0.05 < filled < 0.9 and vol.data.max() > 200


def test_uncompressed_plus_volume_bytes_are_x_fastest(plus_data):
    path = plus_data / "vtkVolumeReconstructorTestNNMEANvolumeRef.mha"
    data = path.read_bytes()
    start = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    vol = read_volume(path)
    raw = np.frombuffer(data[start:], np.uint8)
    x, y, z = vol.dims_xyz
    i, j, k = 101, 57, 33
    assert vol.data[k, j, i] == raw[i + x * (j + y * k)]


def _volume(dtype, seed=0):
    rng = np.random.default_rng(seed)
    data = (np.abs(rng.normal(size=(4, 5, 6))) * 100).astype(dtype)  # fits every type, even int8
    return Volume(data=data, origin_mm=[-12.25, 3.0 / 7.0, 1e-3], spacing_mm=[0.5, 0.25, 1.0 / 3.0], frame="Tracker")


@pytest.mark.parametrize("suffix", [".mha", ".mhd", ".nrrd"])
@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64,
                                   np.uint64, np.float32, np.float64])
def test_round_trip_every_scalar_type(tmp_path, suffix, compress, dtype):
    vol = _volume(dtype)
    back = read_volume(write_volume(tmp_path / f"v{suffix}", vol, compress=compress))
    assert back.data.dtype == vol.data.dtype and np.array_equal(back.data, vol.data)
    assert np.array_equal(back.origin_mm, vol.origin_mm) and np.array_equal(back.spacing_mm, vol.spacing_mm)
    assert back.frame == "Tracker"


def test_writes_weights_and_named_channels(tmp_path):
    vol = _volume(np.float32)
    vol.weights = np.arange(vol.data.size, dtype=np.float32).reshape(vol.data.shape)
    vol.channels["bone"] = vol.data > 0
    w = read_volume(write_volume(tmp_path / "w.nrrd", vol, channel="weights"))
    assert np.array_equal(w.data, vol.weights)
    b = read_volume(write_volume(tmp_path / "b.mha", vol, channel="bone"))
    assert b.data.dtype == np.uint8 and np.array_equal(b.data, vol.channels["bone"].astype(np.uint8))
    with pytest.raises(ValueError, match="'fat'"):
        write_volume(tmp_path / "x.mha", vol, channel="fat")


def _mha(tmp_path, extra: str, data: np.ndarray, name="h.mha"):
    z, y, x = data.shape
    head = (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            f"CompressedData = False\nDimSize = {x} {y} {z}\nElementType = MET_SHORT\n{extra}"
            "ElementDataFile = LOCAL\n")
    path = tmp_path / name
    path.write_bytes(head.encode() + data.astype("<i2").tobytes())
    return path


def test_axis_reversal_is_applied_and_rotation_rejected(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    path = _mha(tmp_path, "Offset = 10 20 30\nElementSpacing = 1 2 3\nTransformMatrix = -1 0 0 0 1 0 0 0 1\n", data)
    vol = read_volume(path)
    # x runs backwards in the file: voxel 3 of the file (x = 10 - 3) is our voxel 0 at x = 7.
    assert np.array_equal(vol.data, data[:, :, ::-1])
    np.testing.assert_allclose(vol.origin_mm, [7.0, 20.0, 30.0])
    rot = _mha(tmp_path, "TransformMatrix = 0 1 0 -1 0 0 0 0 1\n", data, name="rot.mha")
    with pytest.raises(ValueError, match="not axis-aligned"):
        read_volume(rot)


def test_nrrd_written_by_hand_with_space_directions(tmp_path):
    data = np.arange(2 * 3 * 4, dtype="<f4").reshape(2, 3, 4)
    head = ("NRRD0004\n# comment\ntype: float\ndimension: 3\nspace: left-posterior-superior\n"
            "sizes: 4 3 2\nspace directions: (0.5,0,0) (0,0.75,0) (0,0,-2)\nkinds: domain domain domain\n"
            "endian: little\nencoding: gzip\nspace origin: (1,2,3)\n\n")
    path = tmp_path / "hand.nrrd"
    path.write_bytes(head.encode() + gzip.compress(data.tobytes()))
    vol = read_volume(path)
    assert np.array_equal(vol.data, data[::-1])
    np.testing.assert_allclose(vol.spacing_mm, [0.5, 0.75, 2.0])
    np.testing.assert_allclose(vol.origin_mm, [1.0, 2.0, 1.0])


@pytest.mark.parametrize("extra, match", [
    ("ElementSpacing = 1 1\n", "ElementSpacing"),
    ("Offset = 1 two 3\n", "Offset"),
    ("ElementNumberOfChannels = 3\n", "components"),
])
def test_bad_geometry_fields_are_named(tmp_path, extra, match):
    data = np.zeros((2, 3, 4), np.int16)
    if "Channels" in extra:
        data = np.zeros((2, 3, 12), np.int16)  # enough bytes for 3 components of 4x3x2
        path = _mha(tmp_path, extra, data)
        path.write_bytes(path.read_bytes().replace(b"DimSize = 12 3 2", b"DimSize = 4 3 2"))
    else:
        path = _mha(tmp_path, extra, data)
    with pytest.raises(ValueError, match=match):
        read_volume(path)


def test_write_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        write_volume(tmp_path / "v.tif", _volume(np.uint8))


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_a_corrupt_compressed_volume_is_refused_not_read_as_wrong_voxels(tmp_path, suffix):
    # Bytes flipped inside a deflate block often still inflate to the right count of wrong bytes; the
    # stream's checksum at its end is what tells, and a volume this size (1.5 MB, a label-map-like pattern)
    # is inflated in pieces that stop before the checksum unless the reader goes on to it.
    z, y, x = np.mgrid[:80, :120, :160]
    vol = Volume(data=((x // 7 + y // 5 + z // 3) % 30).astype(np.uint8), origin_mm=np.zeros(3),
                 spacing_mm=np.ones(3))
    path = tmp_path / f"v{suffix}"
    write_volume(path, vol, compress=True)
    data = bytearray(path.read_bytes())
    start = len(data) - len(data) // 3
    data[start:start + 16] = bytes(b ^ 0x5A for b in data[start:start + 16])
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"v\.\w+: corrupt (zlib|gzip) pixel data"):
        read_volume(path)
