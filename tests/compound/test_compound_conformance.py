"""PLUS conformance: our ``plus`` semantics against volumes made by PLUS's own VolumeReconstructor.

Same inputs (SpinePhantomFreehand.igs.mha, the device sets of the data README), same settings: the
geometry must be identical and the voxels within IGSIO's own regression tolerance (>= 99.9 % equal,
max |difference| <= 2). The third reference was made by an older PLUS that truncated the extent.
"""

from __future__ import annotations

import numpy as np
import pytest

from usx_stream.cli import main as cli_main
from usx_stream.compound.config import load_device_set
from usx_stream.compound.reconstructor import Reconstructor
from usx_stream.io.sequence import read_sequence
from usx_stream.io.volumes import read_volume

CASES = [
    ("PlusDeviceSet_VolumeReconstructionOnly_SpinePhantom_NN_MEAN.xml",
     "vtkVolumeReconstructorTestNNMEANvolumeRef.mha", "round"),
    ("PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_LN_MEAN.xml",
     "vtkVolumeReconstructorTestLNMEANvolumeRef.mha", "round"),
    ("PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml",
     "SpinePhantomFreehandReconstructed.mha", "truncate"),
]


_CACHE: dict = {}


@pytest.fixture
def sequence(plus_data):
    # read once for the module (plus_data is function-scoped: it skips or fails without the data)
    if "seq" not in _CACHE:
        _CACHE["seq"] = read_sequence(plus_data / "SpinePhantomFreehand.igs.mha")
    return _CACHE["seq"]


def compare(ours, ref):
    assert ours.data.shape == ref.data.shape, "DimSize"
    # MetaImage headers print 6 significant digits: compare Offset at that precision
    np.testing.assert_allclose(ours.origin_mm, ref.origin_mm, atol=5e-4, err_msg="Offset")
    np.testing.assert_array_equal(ours.spacing_mm, ref.spacing_mm, err_msg="ElementSpacing")
    diff = np.abs(ours.data.astype(np.int64) - ref.data.astype(np.int64))
    return float((diff == 0).mean()), int(diff.max())


@pytest.mark.parametrize("config_name, reference_name, rounding", CASES)
def test_plus_semantics_match_plus(plus_data, sequence, config_name, reference_name, rounding):
    config, calibration = load_device_set(plus_data / config_name)
    recon = Reconstructor.from_frames(config, sequence.frames, calibration=calibration, extent_rounding=rounding)
    for frame in sequence.frames:
        recon.add(frame)
    equal, max_diff = compare(recon.snapshot(), read_volume(plus_data / reference_name))
    assert equal >= 0.999, f"only {equal:.4%} of voxels equal"
    assert max_diff <= 2


def test_exact_semantics_same_geometry_close_values(plus_data, sequence):
    config_name, reference_name, rounding = CASES[0]
    config, calibration = load_device_set(plus_data / config_name)
    recon = Reconstructor.from_frames(config, sequence.frames, calibration=calibration, extent_rounding=rounding,
                                      semantics="exact")
    for frame in sequence.frames:
        recon.add(frame)
    ours = recon.snapshot()
    equal, _ = compare(ours, read_volume(plus_data / reference_name))
    # PLUS's truncating running mean drifts low; the exact mean is never below it on average.
    ref = read_volume(plus_data / reference_name).data.astype(np.float64)
    hit = ours.weights > 0
    assert equal > 0.5
    assert ours.data[hit].mean() >= ref[hit].mean()


def test_cli_writes_plus_volume(plus_data, tmp_path, capsys):
    config_name, reference_name, rounding = CASES[2]
    out = tmp_path / "volume.nrrd"
    rc = cli_main(["compound", "--config", str(plus_data / config_name),
                   "--seq", str(plus_data / "SpinePhantomFreehand.igs.mha"), "--out", str(out),
                   "--extent-rounding", rounding, "--weights-out", str(tmp_path / "weights.mha")])
    assert rc == 0
    assert "21 of 21 frames pasted" in capsys.readouterr().out
    equal, max_diff = compare(read_volume(out), read_volume(plus_data / reference_name))
    assert equal >= 0.999 and max_diff <= 2
    weights = read_volume(tmp_path / "weights.mha")
    assert weights.data.shape == read_volume(out).data.shape and weights.data.max() > 1


def test_cli_compounds_a_recording_folder_as_the_one_file_it_was_cut_from(plus_data, sequence, tmp_path, capsys):
    """The node records 1 s chunks; compounding its folder gives the PLUS volume of the whole sweep."""
    from usx_stream.io.sequence import write_sequence

    config_name, reference_name, rounding = CASES[2]
    frames = sequence.frames
    (tmp_path / "rec").mkdir()
    for number, (a, b) in enumerate(((0, 8), (8, 9), (9, len(frames)))):
        write_sequence(tmp_path / "rec" / f"inputs_{number:04d}.igs.mha", frames[a:b])
    out = tmp_path / "volume.nrrd"
    assert cli_main(["compound", "--config", str(plus_data / config_name), "--seq", str(tmp_path / "rec"),
                     "--out", str(out), "--extent-rounding", rounding]) == 0
    assert "21 of 21 frames pasted" in capsys.readouterr().out
    equal, max_diff = compare(read_volume(out), read_volume(plus_data / reference_name))
    assert equal >= 0.999 and max_diff <= 2
