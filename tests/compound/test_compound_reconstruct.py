"""The library front door ``reconstruct``: a path, a list and an iterator of frames give one volume."""

from __future__ import annotations

import numpy as np
import pytest

from compound_frames import sweep_frames
from usx_stream.compound import ReconstructionConfig, Reconstructor, reconstruct
from usx_stream.io.sequence import iter_frames, read_sequence
from usx_stream.io.sequence_write import write_sequence
from usx_stream.io.volumes import read_volume


def _same(a, b):
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.origin_mm, b.origin_mm)
    np.testing.assert_array_equal(a.spacing_mm, b.spacing_mm)


def test_list_iterator_and_path_give_identical_volumes(tmp_path):
    frames = sweep_frames(12)
    path = write_sequence(tmp_path / "sweep.igs.mha", frames)
    cfg = ReconstructionConfig(output_spacing=(0.5, 0.5, 0.5))
    from_list = reconstruct(frames, config=cfg)
    from_iter = reconstruct(iter(frames), config=cfg)
    from_generator = reconstruct((f for f in frames), config=cfg)
    from_path = reconstruct(path, config=cfg)
    from_str = reconstruct(str(path), spacing_mm=0.5)
    for other in (from_iter, from_generator, from_path, from_str):
        _same(from_list, other)
    # every frame pasted: the same volume as pasting them one by one
    recon = Reconstructor.from_frames(cfg, frames)
    for f in frames:
        recon.add(f)
    _same(from_list, recon.snapshot())
    assert (from_list.weights > 0).mean() > 0.3


def test_from_frames_refuses_a_one_shot_iterator():
    frames = sweep_frames(4)
    cfg = ReconstructionConfig(output_spacing=(0.5, 0.5, 0.5))
    with pytest.raises(TypeError, match=r"one-shot iterator.*list\(frames\).*reconstruct"):
        Reconstructor.from_frames(cfg, (f for f in frames))
    with pytest.raises(TypeError, match="one-shot iterator"):
        Reconstructor.from_frames(cfg, iter(frames))


def test_reconstruct_arguments_are_checked():
    with pytest.raises(ValueError, match="spacing_mm"):
        reconstruct(sweep_frames(2))
    with pytest.raises(TypeError, match="frames_or_path"):
        reconstruct(42, spacing_mm=0.5)
    with pytest.raises(ValueError, match="no frame with a valid ImageToReference"):
        reconstruct([], spacing_mm=0.5)


def test_spacing_overrides_the_config():
    frames = sweep_frames(6)
    vol = reconstruct(frames, config=ReconstructionConfig(output_spacing=(0.5, 0.5, 0.5)), spacing_mm=(1.0, 1.0, 0.5))
    assert vol.spacing_mm.tolist() == [1.0, 1.0, 0.5]


def test_plus_recording_in_three_lines_is_plus_volume(plus_data):
    """The README recipe: PLUS's recording and device set give PLUS's own reconstructed volume."""
    seq, device_set = plus_data / "SpinePhantomFreehand.igs.mha", plus_data / (
        "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml")
    # that reference was made by an older PLUS that truncated the extent
    vol = reconstruct(seq, device_set=device_set, extent_rounding="truncate")
    ref = read_volume(plus_data / "SpinePhantomFreehandReconstructed.mha")
    assert vol.data.shape == ref.data.shape
    np.testing.assert_allclose(vol.origin_mm, ref.origin_mm, atol=5e-4)
    diff = np.abs(vol.data.astype(np.int64) - ref.data.astype(np.int64))
    assert (diff == 0).mean() >= 0.999 and diff.max() <= 2
    _same(vol, reconstruct(read_sequence(seq).frames, device_set=device_set, extent_rounding="truncate"))
    _same(vol, reconstruct(iter_frames(seq), device_set=device_set, extent_rounding="truncate"))
