"""CT label volumes -> per-vertebra meshes -> paired samples, on a spine voxelised from the simulator."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from scipy.spatial import cKDTree

from tests.itk_files import write_itk
from usx_stream.frames import LEVELS
from usx_stream.sim.anatomy import make_spine
from usx_stream.sim.ct_labelmaps import label_meshes, read_labels
from usx_stream.datasets.pairs import PairConfig, generate
from usx_stream.train.data import read_pairs

SPACING = np.array([1.0, 1.2, 1.6])  # anisotropic voxels, as CT often has


def _write_nifti(path, labels: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    """Minimal NIfTI-1 writer (int16 labels, sform), written from the format's header layout."""
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, *labels.shape, 1, 1, 1, 1)
    struct.pack_into("<hh", hdr, 70, 4, 16)  # datatype int16, bitpix
    struct.pack_into("<8f", hdr, 76, 1.0, *SPACING, 0, 0, 0, 0)
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    struct.pack_into("<hh", hdr, 252, 0, 1)  # qform_code 0, sform_code 1
    struct.pack_into("<12f", hdr, 280, *ijk_to_ras[:3].ravel())
    hdr[344:348] = b"n+1\x00"
    data = bytes(hdr) + b"\x00" * 4 + labels.astype("<i2").ravel(order="F").tobytes()
    path.write_bytes(gzip.compress(data))


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    spine = make_spine(21, spacing_mm=2.0)
    lo = np.min([v.mesh.vertices_mm.min(0) for v in spine.vertebrae.values()], axis=0) - 4
    hi = np.max([v.mesh.vertices_mm.max(0) for v in spine.vertebrae.values()], axis=0) + 4
    axes = [np.arange(lo[d], hi[d], SPACING[d]) for d in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    value, which = spine.sample(grid)
    labels = np.where(value < 0, which + 20, 0).reshape([len(a) for a in axes])
    ijk_to_lps = np.diag([*SPACING, 1.0])
    ijk_to_lps[:3, 3] = lo
    folder = tmp_path_factory.mktemp("ct")
    _write_nifti(folder / "case1.nii.gz", labels, np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps)
    return spine, folder, labels, ijk_to_lps


def test_nifti_reads_back_in_lps(ct):
    _, folder, labels, ijk_to_lps = ct
    got, affine = read_labels(folder / "case1.nii.gz")
    np.testing.assert_array_equal(got, labels)
    np.testing.assert_allclose(affine, ijk_to_lps, atol=1e-4)


def test_label_meshes_match_the_bone_they_came_from(ct):
    spine, _, labels, ijk_to_lps = ct
    meshes = label_meshes(labels, ijk_to_lps)
    assert sorted(meshes) == list(LEVELS)
    for level, mesh in meshes.items():
        truth = spine.vertebrae[level].mesh.vertices_mm
        d, _ = cKDTree(truth).query(mesh.vertices_mm)
        assert np.median(d) < 1.0, level  # voxels of 1-1.6 mm


def test_labelmaps_folder_gives_one_sample_per_vertebra(ct, tmp_path):
    _, folder, _, _ = ct
    (folder / "notes.txt").write_text("not a volume")
    cfg = PairConfig(partial_points=64, labelmap_points=32, complete_points=256, mesh_spacing_mm=2.0)
    report = generate(tmp_path / "ct.h5", labelmaps=folder, seed=2, cfg=cfg, progress=False)
    assert report.samples == 5 and report.skipped == []
    arrays = read_pairs(report.path)
    assert arrays.names == [f"case1.nii.gz/{lv}" for lv in LEVELS]
    assert all(np.ptp(lm[:, 0]) < 1e-5 for lm in arrays.labelmap)


def test_an_oblique_nrrd_label_map_reads_back_in_lps(ct, tmp_path):
    """What 3D Slicer exports from a segmentation of an oblique CT: SimpleITK keeps its axes."""
    from scipy.spatial.transform import Rotation

    _, _, labels, ijk_to_lps = ct
    oblique = ijk_to_lps.copy()
    oblique[:3, :3] = Rotation.from_euler("zx", [8.0, -4.0], degrees=True).as_matrix() @ ijk_to_lps[:3, :3]
    pytest.importorskip("SimpleITK")
    write_itk(tmp_path / "case1.nrrd", labels.astype(np.int16), oblique)
    got, affine = read_labels(tmp_path / "case1.nrrd")
    np.testing.assert_array_equal(got, labels)
    np.testing.assert_allclose(affine, oblique, atol=1e-4)


def test_without_simpleitk_an_axis_aligned_nrrd_still_reads(ct, tmp_path, monkeypatch):
    import sys

    _, _, labels, ijk_to_lps = ct
    pytest.importorskip("SimpleITK")
    write_itk(tmp_path / "case1.nrrd", labels.astype(np.int16), ijk_to_lps)
    monkeypatch.setitem(sys.modules, "SimpleITK", None)   # as if the 'ct' extra were not installed
    got, affine = read_labels(tmp_path / "case1.nrrd")
    np.testing.assert_array_equal(got, labels)
    np.testing.assert_allclose(affine, ijk_to_lps, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_the_ct_itself_is_refused_where_its_labels_belong(ct, tmp_path, suffix):
    """A CT holds the lumbar label values (20..24, 27..31) as Hounsfield units in scattered voxels."""
    from usx_stream.errors import InputError
    from usx_stream.sim.ct_labelmaps import lumbar_label_meshes

    _, _, labels, ijk_to_lps = ct
    rng = np.random.default_rng(0)
    hu = np.where(labels > 0, 700.0, -1000.0) + rng.normal(0.0, 200.0, labels.shape)  # bone, air, noise
    path = tmp_path / f"ct{suffix}"
    if suffix == ".nii.gz":
        _write_nifti(path, np.rint(hu), np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps)
    else:
        pytest.importorskip("SimpleITK")
        write_itk(path, np.rint(hu + 1024.0).astype(np.uint16), ijk_to_lps)  # unsigned, as some scanners store
    with pytest.raises(InputError, match=r"ct\.\w+(\.gz)?: not a label map: .*from -?\d+ to \d+ .*the CT itself"):
        lumbar_label_meshes(path)
