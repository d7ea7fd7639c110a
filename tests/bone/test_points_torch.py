"""Bone points on the compounding device (``bone.points_torch``): the same points, in the same order, as the
numpy/scipy ``extract_bone_points``, on synthetic bands and on a bone channel compounded by the node's own
ingest stage with the torch backend."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from test_bone_points import band_volume
from usx_stream.bone.points import extract_bone_points
from usx_stream.bone.points_torch import extract_bone_points_torch, sample_linear_nearest
from usx_stream.frames import Volume

ATOL_MM = 1e-6


def on_torch(vol: Volume, device="cpu") -> Volume:
    """``vol`` with its data, weights and bone channel as torch tensors on ``device``."""
    t = lambda a: None if a is None else torch.as_tensor(a, device=device)  # noqa: E731
    return Volume(data=t(vol.data), origin_mm=vol.origin_mm, spacing_mm=vol.spacing_mm, weights=t(vol.weights),
                  channels={"bone": t(vol.channels["bone"])}, frame=vol.frame)


def assert_same_points(got: np.ndarray, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_MM)    # row by row: the same order


def plateau_volume(seed=1) -> Volume:
    """Smooth random probabilities quantised to plateaus (ties along the beam), holes in the weights, an
    anisotropic grid off the origin."""
    rng = np.random.default_rng(seed)
    p = ndimage.gaussian_filter(rng.random((40, 50, 60)), 2)
    p = np.round((p - p.min()) / (p.max() - p.min()) * 20) / 20
    weights = (rng.random(p.shape) > 0.1).astype(np.float32)
    return Volume(np.zeros(p.shape, np.float32), [1.5, -2.0, 3.0], [0.5, 0.6, 0.7], weights=weights,
                  channels={"bone": p.astype(np.float32)})


@pytest.mark.parametrize("beam", [[0, 1, 0], [0, -3, 0], [0.3, 1.0, -0.2], None])
def test_band_volume_gives_the_numpy_points(beam):
    vol = band_volume()
    want = extract_bone_points(vol, threshold=0.5, beam_direction=beam, voxel_mm=1.0)
    assert len(want) > 500
    assert_same_points(extract_bone_points(on_torch(vol), threshold=0.5, beam_direction=beam, voxel_mm=1.0), want)


@pytest.mark.parametrize("beam", [[0, 1, 0], [1, 1, 1], None])
def test_plateaus_and_weights_give_the_numpy_points(beam):
    vol = plateau_volume()
    want = extract_bone_points(vol, threshold=0.3, beam_direction=beam, voxel_mm=0.8)
    got = extract_bone_points_torch(torch.from_numpy(vol.channels["bone"]), origin_mm=vol.origin_mm,
                                    spacing_mm=vol.spacing_mm, weights=vol.weights, threshold=0.3,
                                    beam_direction=beam, voxel_mm=0.8)
    assert len(want) > 1000
    assert_same_points(got, want)
    # the weights matter: without them more voxels pass
    unweighted = extract_bone_points_torch(torch.from_numpy(vol.channels["bone"]), origin_mm=vol.origin_mm,
                                           spacing_mm=vol.spacing_mm, threshold=0.3, beam_direction=beam,
                                           voxel_mm=0.8)
    assert len(unweighted) != len(got)


def test_trilinear_samples_are_scipys():
    rng = np.random.default_rng(0)
    vol = rng.random((7, 9, 11)).astype(np.float32)
    coords = rng.uniform(-2.0, 13.0, size=(3, 20000))
    coords[:, :5000] = np.round(coords[:, :5000]) + rng.choice([-1.0, 1.0, 0.3, -0.7, 1 / 3], size=(3, 5000))
    want = ndimage.map_coordinates(vol, coords, order=1, mode="nearest")
    got = sample_linear_nearest(torch.from_numpy(vol), torch.from_numpy(coords.T.copy()))
    np.testing.assert_array_equal(got.numpy(), want)


def test_nothing_above_threshold_gives_no_points():
    vol = band_volume(shape=(10, 12, 14))
    vol.channels["bone"][:] = 0.2
    for beam in ([0, 1, 0], None):
        got = extract_bone_points(on_torch(vol), threshold=0.5, beam_direction=beam)
        assert isinstance(got, np.ndarray) and got.shape == (0, 3)


def test_bad_arguments_are_named_as_in_numpy():
    vol = on_torch(band_volume(shape=(10, 12, 14)))
    prob = vol.channels["bone"]
    with pytest.raises(ValueError, match="bone.probability_threshold"):
        extract_bone_points(vol, threshold=0)
    with pytest.raises(ValueError, match="bone.point_voxel_mm"):
        extract_bone_points(vol, voxel_mm=-1)
    with pytest.raises(ValueError, match="no channel 'edges'"):
        extract_bone_points(vol, channel="edges")
    with pytest.raises(ValueError, match="beam_direction must be a non-zero vector"):
        extract_bone_points(vol, beam_direction=[0, 0, 0])
    with pytest.raises(ValueError, match="shape"):
        extract_bone_points(Volume(torch.zeros(3, 3, 3), [0, 0, 0], [1, 1, 1], channels={"bone": prob}))
    with pytest.raises(ValueError, match="bone.probability_threshold"):
        extract_bone_points_torch(prob, origin_mm=[0, 0, 0], spacing_mm=[1, 1, 1], threshold=1.5)
    with pytest.raises(ValueError, match="bone.point_voxel_mm"):
        extract_bone_points_torch(prob, origin_mm=[0, 0, 0], spacing_mm=[1, 1, 1], voxel_mm=0)
    with pytest.raises(ValueError, match="beam_direction"):
        extract_bone_points_torch(prob, origin_mm=[0, 0, 0], spacing_mm=[1, 1, 1], beam_direction=[np.nan, 1, 0])


# ---------------------------------------------------------------- a real compounded bone channel
@pytest.fixture(scope="module")
def session():
    from usx_stream.sim.session import simulate_session

    return simulate_session(3, n_frames=24, passes=1, with_xray=False)


def ingest_stage(session, device: str, points_device: str = "compound"):
    """The node's ingest stage (bone detection + compounding with the torch backend on ``device``) over the
    session's frames; bone points on the compounding device unless ``points_device`` says otherwise."""
    from usx_stream.node.ingest import IngestStage
    from usx_stream.node.launch import parse_launch

    cfg = parse_launch({"compound": {"backend": "torch", "device": device, "spacing_mm": 0.8},
                        "bone": {"points_device": points_device}})
    stage = IngestStage(cfg.compound, cfg.bone, calibration=session.calibration, bootstrap_frames=10)
    for frame in session.frames:
        stage.add(frame)
    stage.flush()
    assert stage.reconstructor.backend == "torch" and stage.frames_pasted == len(session.frames)
    return stage


@pytest.fixture(scope="module")
def compounded(session):
    return ingest_stage(session, "cpu")


def test_device_values_equal_the_host_values(compounded):
    recon = compounded.reconstructor
    for name, chan in recon._channels.items():       # the bone channel (MAXIMUM) and the intensity (MEAN)
        got, want = chan.device_values(), chan.current_values()
        assert isinstance(got, torch.Tensor) and got.dtype == torch.from_numpy(want).dtype, name
        np.testing.assert_array_equal(got.numpy(), want)
    on_device, host = recon.device_channel_volume("bone"), recon.channel_volume("bone")
    assert isinstance(on_device.channels["bone"], torch.Tensor) and on_device.data is on_device.channels["bone"]
    np.testing.assert_array_equal(on_device.channels["bone"].numpy(), host.channels["bone"])
    np.testing.assert_array_equal(on_device.origin_mm, host.origin_mm)
    np.testing.assert_array_equal(on_device.spacing_mm, host.spacing_mm)
    assert on_device.frame == host.frame


def test_the_ingest_snapshot_stays_on_the_device_unless_filling_holes(compounded):
    volume, info = compounded.snapshot()
    assert isinstance(volume.channels["bone"], torch.Tensor)
    host = compounded.reconstructor.channel_volume("bone")
    assert float(host.channels["bone"].max()) > 0.5
    for beam in (info["beam_direction"], None):
        want = extract_bone_points(host, threshold=0.5, beam_direction=beam, voxel_mm=1.0)
        assert len(want) > 300
        assert_same_points(extract_bone_points(volume, threshold=0.5, beam_direction=beam, voxel_mm=1.0), want)
    plain = compounded.recon_config                             # hole filling runs on the host: numpy values
    compounded.recon_config = dataclasses.replace(plain, fill_holes=True)
    try:
        filled, _ = compounded.snapshot()
    finally:
        compounded.recon_config = plain
    assert isinstance(filled.channels["bone"], np.ndarray)


def test_auto_keeps_a_cpu_snapshot_on_the_host(session):
    """``auto`` takes the device path only for a GPU: on a CPU the host copy plus numpy is the faster path."""
    volume, _ = ingest_stage(session, "cpu", points_device="auto").snapshot()
    assert isinstance(volume.channels["bone"], np.ndarray)


def test_a_numba_reconstructor_has_no_device_values():
    from usx_stream.compound import ReconstructionConfig, Reconstructor
    from usx_stream.compound.geometry import OutputGeometry

    grid = OutputGeometry(np.zeros(3), np.ones(3), (4, 4, 4))
    recon = Reconstructor(ReconstructionConfig(output_spacing=(1.0, 1.0, 1.0)), grid, semantics="exact",
                          backend="numba", channels={"bone": "MAXIMUM"})
    assert recon.device_channel_volume("bone") is None
    with pytest.raises(ValueError, match="no channel 'edges'"):
        recon.device_channel_volume("edges")


@pytest.mark.parametrize("mode", ["MEAN", "MAXIMUM", "LATEST"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_finalize_on_the_device_is_the_numpy_finalize(mode, dtype):
    from usx_stream.compound import paste_exact
    from usx_stream.compound.torch_backend import finalize_values_torch

    rng = np.random.default_rng(3)
    n, scale = 5000, paste_exact.value_scale(dtype)
    weight = rng.integers(0, 5, n) * rng.integers(1, 4097, n)
    state = {"weight": weight}
    top = rng.integers(-300, 300, n) * scale
    if mode == "MEAN":
        state["sum"] = np.where(weight > 0, weight * top, 0)
    else:
        state["value"] = np.where(weight > 0, top, np.iinfo(np.int64).min)
    want = paste_exact.finalize_values(state, mode, dtype)
    got = finalize_values_torch({k: torch.from_numpy(v) for k, v in state.items()}, mode, dtype)
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_points(session, compounded):
    volume, info = compounded.snapshot()
    gpu_stage = ingest_stage(session, "cuda")
    cuda, _ = gpu_stage.snapshot()                            # compounded and finalised on the GPU
    assert cuda.channels["bone"].is_cuda
    np.testing.assert_array_equal(cuda.channels["bone"].cpu().numpy(), volume.channels["bone"].numpy())
    for beam in (info["beam_direction"], None):
        want = extract_bone_points(volume, threshold=0.5, beam_direction=beam, voxel_mm=1.0)
        assert_same_points(extract_bone_points(cuda, threshold=0.5, beam_direction=beam, voxel_mm=1.0), want)
    vol = plateau_volume()
    for beam in ([1, 1, 1], None):
        want = extract_bone_points(vol, threshold=0.3, beam_direction=beam, voxel_mm=0.8)
        assert_same_points(extract_bone_points(on_torch(vol, "cuda"), threshold=0.3, beam_direction=beam,
                                               voxel_mm=0.8), want)
