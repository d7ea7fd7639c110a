"""CT volumes read from the files scanners and image tools write (usx_stream.io.ct_image): every reader gives the
same voxels in the file's (i, j, k) order and the same LPS affine, an oblique acquisition included."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tests.cli_files import run_cli
from tests.itk_files import itk_image, write_itk
from usx_stream.errors import InputError
from usx_stream.io.ct_image import read_ct_image
from usx_stream.io.nifti_write import write_nifti_labels

sitk = pytest.importorskip("SimpleITK")

SPACING = (0.7, 0.8, 1.5)
ORIGIN = (10.0, -20.0, 30.0)


def _oblique():
    """A small CT-like volume (I, J, K) and its affine: rotated by a few degrees about each axis, anisotropic."""
    from scipy.spatial.transform import Rotation

    voxels = np.random.default_rng(0).integers(-1000, 1500, size=(6, 5, 4)).astype(np.int16)
    rotation = Rotation.from_euler("xyz", [5.0, -3.0, 10.0], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation * SPACING
    affine[:3, 3] = ORIGIN
    return voxels, affine



def write_dicom_series(folder, voxels, affine, *, series_uid="1.2.826.0.1.3680043.2.1125.7.1"):
    """One CT slice file per k, with the position and orientation tags a scanner writes."""
    image = itk_image(voxels, affine)
    d = np.array(image.GetDirection())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.7", "0020|000e": series_uid,
                "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
                "0020|0013": str(k + 1), "0018|0050": f"{SPACING[2]}"}
        for tag, value in tags.items():
            s.SetMetaData(tag, value)
        # slices are shuffled on disk: the reader must sort them by position, not by name
        writer.SetFileName(str(folder / f"{series_uid[-1]}_{(k * 7) % image.GetDepth()}_{k}.dcm"))
        writer.Execute(s)


WRITERS = {
    "nifti, our writer (read without SimpleITK)": lambda folder, v, a: write_nifti_labels(folder / "ct.nii.gz", v, a),
    "nifti, ITK": lambda folder, v, a: write_itk(folder / "ct.nii.gz", v, a),
    "nrrd": lambda folder, v, a: write_itk(folder / "ct.nrrd", v, a),
    "metaimage": lambda folder, v, a: write_itk(folder / "ct.mha", v, a),
    "dicom series, shuffled": lambda folder, v, a: write_dicom_series(folder / "ct", v, a),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_an_oblique_volume_keeps_its_voxels_and_lps_affine(tmp_path, writer):
    voxels, affine = _oblique()
    WRITERS[writer](tmp_path, voxels, affine)
    (path,) = list(tmp_path.iterdir())
    got, got_affine = read_ct_image(path)
    assert got.dtype == np.float32 and got.shape == voxels.shape
    np.testing.assert_array_equal(got, voxels)
    np.testing.assert_allclose(got_affine, affine, atol=1e-4)


def test_a_right_anterior_superior_nrrd_is_turned_into_lps(tmp_path):
    """3D Slicer may save in RAS space: the same voxel lands at (-x, -y, z) in LPS."""
    voxels = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\nsizes: 2 3 4\n"
              "space directions: (0.5,0,0) (0,0.6,0) (0,0,2)\nkinds: domain domain domain\nendian: little\n"
              "encoding: gzip\nspace origin: (1,2,3)\n\n")
    (tmp_path / "ras.nrrd").write_bytes(header.encode() + gzip.compress(voxels.astype("<i2").tobytes(order="F")))
    got, got_affine = read_ct_image(tmp_path / "ras.nrrd")
    np.testing.assert_array_equal(got, voxels)
    want = np.diag([-0.5, -0.6, 2.0, 1.0])
    want[:3, 3] = [-1.0, -2.0, 3.0]
    np.testing.assert_allclose(got_affine, want, atol=1e-9)


def test_a_folder_with_two_series_names_both(tmp_path):
    voxels, affine = _oblique()
    write_dicom_series(tmp_path / "study", voxels, affine, series_uid="1.2.3.41")
    write_dicom_series(tmp_path / "study", voxels, affine, series_uid="1.2.3.42")
    with pytest.raises(InputError, match=r"2 DICOM series \(1\.2\.3\.41 \(4 files\), 1\.2\.3\.42 \(4 files\)\)"):
        read_ct_image(tmp_path / "study", what="--ct")


@pytest.mark.parametrize("name, match", [
    ("missing.nrrd", "--ct: .*missing.nrrd does not exist"),
    ("missing.nii.gz", "--ct: .*missing.nii.gz does not exist"),
    ("notes.txt", "--ct: notes.txt is not a volume this reads"),
    ("broken.nrrd", "--ct: .*broken.nrrd could not be read"),
])
def test_bad_paths_are_named(tmp_path, name, match):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.nrrd").write_bytes(b"NRRD0004\nsizes: 2\n")
    with pytest.raises(InputError, match=match):
        read_ct_image(tmp_path / name, what="--ct")


def test_an_empty_folder_holds_no_series(tmp_path):
    with pytest.raises(InputError, match="--ct: the folder .* holds no DICOM series"):
        read_ct_image(tmp_path, what="--ct")


def test_the_command_names_a_bad_ct(tmp_path):
    (tmp_path / "ct.txt").write_text("x")
    done = run_cli("shape-model", "segment-ct", "--ct", "ct.txt", "--atlas", "atlas.nii.gz", "--out", "x.nii.gz",
                   *[f"--seed={lv}=1,1,1" for lv in ("T12", "L1", "L2", "L3", "L4", "L5", "S1")], cwd=tmp_path)
    assert done.returncode != 0
    assert "--ct: ct.txt is not a volume this reads" in done.stderr


def _damaged(path, how: str) -> None:
    """Truncate the file, or flip bytes inside its compressed pixel data (the header stays readable)."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) - len(data) // 3]))
        return
    middle = len(data) - len(data) // 3
    for i in range(middle, middle + 16):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii.gz"])
@pytest.mark.parametrize("how, match", [("truncated", "truncated|ended before"),
                                        ("corrupt", "corrupt .* pixel data|CRC check failed")])
def test_damaged_compressed_pixel_data_is_named_not_read_as_garbage(tmp_path, suffix, how, match):
    # ITK alone reads a corrupt MetaImage stream without an error and returns the garbage as voxels.
    voxels = np.random.default_rng(1).integers(0, 30, size=(40, 30, 20)).astype(np.int16)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    path = tmp_path / f"labels{suffix}"
    write_itk(path, voxels, affine)
    assert np.array_equal(read_ct_image(path, what="--truth")[0], voxels)
    _damaged(path, how)
    with pytest.raises(InputError, match=f"--truth: .*labels{suffix}.*{match}"):
        read_ct_image(path, what="--truth")
