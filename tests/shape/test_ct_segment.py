"""Lumbar vertebrae segmented from a CT (``usx-stream shape-model segment-ct``), on a CT whose truth is known.

The CT is made from the s0004 label map, enlarged and tilted (tests/shape/ct_phantom.py), and segmented with
s0004 itself as the atlas: what is pinned is the machinery (seeds, fits, the split between neighbours, the
file written), not the accuracy on real CTs, which the model card reports against TotalSegmentator.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.cli_files import run_cli
from tests.itk_files import write_itk
from tests.shape.ct_phantom import dice, phantom_ct
from usx_stream.commands.shape_model import parse_seeds
from usx_stream.errors import InputError
from usx_stream.shape.ct_segment import SEED_LEVELS, TOTALSEGMENTATOR_CODES, refine_seed, segment_lumbar
from usx_stream.sim.ct_labelmaps import lumbar_label_meshes, read_nifti_labels

S0004 = ("totalsegmentator", "labelmaps", "s0004_labels.nii.gz")


@pytest.fixture(scope="module")
def atlas_path():
    from tests.conftest import require_shared

    return require_shared("vertebrae", *S0004)


@pytest.fixture(scope="module")
def segmented(atlas_path, tmp_path_factory):
    """The phantom CT through the command line, L1 left out: (truth, output labels, stdout, folder).

    The CT goes in as NRRD with the atlas's oblique axes (what 3D Slicer saves), the atlas as NIfTI."""
    pytest.importorskip("SimpleITK")
    atlas, atlas_affine = read_nifti_labels(atlas_path)
    ct, truth, affine, seeds = phantom_ct(atlas, atlas_affine)
    folder = tmp_path_factory.mktemp("segment_ct")
    write_itk(folder / "ct.nrrd", ct, affine)
    args = [f"--seed={lv}=" + ",".join(f"{v:.1f}" for v in seeds[lv]) for lv in SEED_LEVELS]
    done = run_cli("shape-model", "segment-ct", "--ct", "ct.nrrd", "--atlas", str(atlas_path), *args,
                   "--omit", "L1", "--out", "labels.nii.gz", "--png", "check.png", cwd=folder, timeout=600)
    assert done.returncode == 0, done.stderr
    labels, out_affine = read_nifti_labels(folder / "labels.nii.gz")
    np.testing.assert_allclose(out_affine, affine, atol=1e-4)
    return truth, labels, done.stdout, folder


@pytest.mark.parametrize("level", ["L2", "L3", "L4", "L5"])
def test_each_level_matches_the_truth(segmented, level):
    truth, labels, _, _ = segmented
    code = TOTALSEGMENTATOR_CODES[level][0]
    assert dice(labels == code, truth == code) >= 0.85


def test_omitted_level_and_neighbours_are_not_written(segmented):
    _, labels, stdout, _ = segmented
    assert set(np.unique(labels).tolist()) == {0, 27, 28, 29, 30}
    assert "L1: seed" in stdout and "omitted" in stdout
    assert "T12: seed" in stdout and "S1: seed" in stdout


def test_output_is_a_spine_for_the_simulator(segmented):
    _, _, _, folder = segmented
    meshes, info = lumbar_label_meshes(folder / "labels.nii.gz")
    assert list(meshes) == ["L2", "L3", "L4", "L5"]
    assert info["label_set"] == "totalsegmentator"
    assert (folder / "check.png").stat().st_size > 10_000


def _tiny_ct():
    ct = np.zeros((20, 20, 20), dtype=np.int16)
    seeds = {lv: (10.0, 10.0, 10.0) for lv in SEED_LEVELS}
    atlas = np.zeros((5, 5, 5), dtype=np.int16)
    return ct, seeds, atlas


def test_a_missing_seed_is_named():
    ct, seeds, atlas = _tiny_ct()
    del seeds["S1"]
    with pytest.raises(InputError, match="missing S1"):
        segment_lumbar(ct, np.eye(4), seeds, atlas, np.eye(4))


def test_a_seed_outside_the_ct_is_named_with_its_value():
    ct, seeds, atlas = _tiny_ct()
    seeds["L3"] = (10.0, 25.0, 3.0)
    with pytest.raises(InputError, match=r"L3 = \[10.0, 25.0, 3.0\] is not a voxel"):
        segment_lumbar(ct, np.eye(4), seeds, atlas, np.eye(4))


def test_an_atlas_without_a_level_is_refused():
    ct, seeds, atlas = _tiny_ct()
    atlas[1, 1, 1] = 31
    with pytest.raises(InputError, match="atlas: no voxels of T12, L2, L3, L4, L5, S1"):
        segment_lumbar(ct, np.eye(4), seeds, atlas, np.eye(4))


def test_a_seed_in_soft_tissue_is_refused():
    mask = np.zeros((30, 30, 30), dtype=bool)
    mask[:5, :5, :5] = True
    with pytest.raises(InputError, match="no bone within 8 voxels"):
        refine_seed(mask, np.array([20.0, 20.0, 20.0]))
    np.testing.assert_allclose(refine_seed(mask, np.array([5.0, 5.0, 5.0])), [2.0, 2.0, 2.0])


@pytest.mark.parametrize("specs, match", [
    (["L6=1,2,3"], "level must be one of"),
    (["L1=1,2"], "three voxel indices"),
    (["L1=a,b,c"], "three voxel indices"),
    (["L1=1,2,3", "L1=4,5,6"], "L1 given twice"),
])
def test_bad_seed_options_name_themselves(specs, match):
    with pytest.raises(InputError, match=match):
        parse_seeds(specs)


def test_seed_options_parse():
    assert parse_seeds(["T12=1,2.5,3", "S1=4,5,6"]) == {"T12": (1.0, 2.5, 3.0), "S1": (4.0, 5.0, 6.0)}


def test_a_bad_omit_is_refused_before_any_work(tmp_path):
    done = run_cli("shape-model", "segment-ct", "--ct", "missing.nii.gz", "--atlas", "missing.nii.gz",
                   "--omit", "L7", "--out", "x.nii.gz", cwd=tmp_path)
    assert done.returncode != 0
    assert "--omit: L7 is not a lumbar level" in done.stderr


def test_ct_and_atlas_swapped_are_named_before_any_fit(segmented, atlas_path):
    """A label map as the CT has no bone above 180 HU; a CT as the atlas holds the lumbar codes as grey
    values in scattered voxels: both are refused by name instead of segmenting noise."""
    _, _, _, folder = segmented
    seed = ["--seed=L3=10,10,10"]
    done = run_cli("shape-model", "segment-ct", "--ct", str(atlas_path), "--atlas", "ct.nrrd", *seed,
                   "--out", "x.nii.gz", cwd=folder)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no voxel above the bone threshold of 180 HU (maximum 120): not a CT" in done.stderr
    atlas, atlas_affine = read_nifti_labels(atlas_path)
    rng = np.random.default_rng(0)
    hu = np.where(atlas > 0, 400.0, -1000.0)[::2, ::2, ::2] + rng.normal(0.0, 30.0, atlas[::2, ::2, ::2].shape)
    write_itk(folder / "scan.nrrd", np.rint(hu).astype(np.int16), atlas_affine)  # a CT: air, bone, noise
    done = run_cli("shape-model", "segment-ct", "--ct", "ct.nrrd", "--atlas", "scan.nrrd", *seed,
                   "--out", "x.nii.gz", cwd=folder)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--atlas scan.nrrd: not a label map: values from -1" in done.stderr
