"""NIfTI-1 label volumes written here read back exactly with the reader every label-map path uses."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from usx_stream.io.nifti_write import nifti_label_bytes, write_nifti_labels
from usx_stream.sim.ct_labelmaps import read_nifti_labels


def _oblique_affine() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    m = np.eye(4)
    m[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([-1.5, 0.8, 2.0])
    m[:3, 3] = [120.5, -33.25, -700.0]
    return m


@pytest.mark.parametrize("name", ["labels.nii", "labels.nii.gz"])
def test_round_trip_keeps_labels_and_affine(tmp_path, name):
    rng = np.random.default_rng(0)
    labels = rng.integers(-5, 120, size=(7, 5, 9))
    affine = _oblique_affine()
    path = write_nifti_labels(tmp_path / name, labels, affine)
    back, back_affine = read_nifti_labels(path)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(back_affine, affine, atol=1e-4)


def test_gzip_output_is_reproducible(tmp_path):
    labels = np.arange(24).reshape(2, 3, 4)
    a = write_nifti_labels(tmp_path / "a.nii.gz", labels, np.eye(4)).read_bytes()
    b = write_nifti_labels(tmp_path / "b.nii.gz", labels, np.eye(4)).read_bytes()
    assert a == b
    assert gzip.decompress(a) == nifti_label_bytes(labels, np.eye(4))


@pytest.mark.parametrize("labels, affine, match", [
    (np.zeros((3, 3)), np.eye(4), "3D volume"),
    (np.full((2, 2, 2), 40000), np.eye(4), "fit int16"),
    (np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]), "zero length"),
])
def test_refuses_what_it_cannot_store(labels, affine, match):
    with pytest.raises(ValueError, match=match):
        nifti_label_bytes(labels, affine)


def test_refuses_a_name_that_is_not_nifti(tmp_path):
    with pytest.raises(ValueError, match="labels.mha"):
        write_nifti_labels(tmp_path / "labels.mha", np.zeros((2, 2, 2)), np.eye(4))


def test_a_label_file_that_is_not_nifti_is_bad_input_naming_the_file(tmp_path):
    """What a user may hand over by mistake: text, a cut-short download, a volume with a time axis."""
    from usx_stream.errors import InputError

    good = write_nifti_labels(tmp_path / "good.nii.gz", np.arange(24).reshape(2, 3, 4), np.eye(4))
    (tmp_path / "cut.nii.gz").write_bytes(good.read_bytes()[:40])
    damaged = bytearray(good.read_bytes())
    damaged[10:20] = b"\xff" * 10                          # the deflate stream right after the gzip header
    (tmp_path / "damaged.nii.gz").write_bytes(bytes(damaged))
    (tmp_path / "text.nii.gz").write_text("labels to come\n")
    (tmp_path / "text.nii").write_text("labels to come\n")
    raw = bytearray(nifti_label_bytes(np.zeros((2, 3, 4)), np.eye(4)))
    (tmp_path / "short.nii").write_bytes(bytes(raw[:-10]))
    raw[40:50] = np.array([4, 2, 3, 4, 2], "<i2").tobytes()   # dim[0] = 4 with a second time point
    (tmp_path / "4d.nii").write_bytes(bytes(raw[:352]) + bytes(2 * 2 * 3 * 4 * 2))
    for name, why in (("cut.nii.gz", "not a readable .nii.gz"), ("text.nii.gz", "not a readable .nii.gz"),
                      ("damaged.nii.gz", "not a readable .nii.gz"),
                      ("text.nii", "too short for a NIfTI-1 file"), ("4d.nii", "expected a 3D volume"),
                      ("short.nii", "the voxel data ends early")):
        with pytest.raises(InputError, match=why) as info:
            read_nifti_labels(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
