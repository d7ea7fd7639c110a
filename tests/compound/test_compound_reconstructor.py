"""Incremental reconstructor: backends, order independence, channels, bounded memory, skipping."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from compound_frames import sweep_frames
from usx_stream.compound.config import ReconstructionConfig
from usx_stream.compound.reconstructor import Reconstructor, output_geometry


def config(**kw):
    return ReconstructionConfig(output_spacing=(0.5, 0.5, 0.5), **kw)


def reconstruct(frames, cfg, **kw):
    recon = Reconstructor.from_frames(cfg, frames, **kw)
    for f in frames:
        recon.add(f)
    return recon


@pytest.mark.parametrize("interpolation", ["NEAREST_NEIGHBOR", "LINEAR"])
@pytest.mark.parametrize("mode", ["MEAN", "MAXIMUM", "LATEST"])
def test_exact_backends_identical(frames, interpolation, mode):
    cfg = config(interpolation=interpolation, compounding_mode=mode)
    vols = [reconstruct(frames, cfg, semantics="exact", backend=b).snapshot() for b in ("numba", "numpy", "torch")]
    for other in vols[1:]:
        np.testing.assert_array_equal(vols[0].data, other.data)
        np.testing.assert_array_equal(vols[0].weights, other.weights)
    assert (vols[0].weights > 0).mean() > 0.3


@pytest.mark.gpu
@pytest.mark.parametrize("interpolation", ["NEAREST_NEIGHBOR", "LINEAR"])
@pytest.mark.parametrize("mode", ["MEAN", "MAXIMUM", "LATEST"])
def test_exact_torch_on_cuda_identical_to_cpu(frames, interpolation, mode):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = config(interpolation=interpolation, compounding_mode=mode)
    cpu = reconstruct(frames, cfg, semantics="exact", backend="numpy").snapshot()
    gpu = reconstruct(frames, cfg, semantics="exact", backend="torch", device="cuda").snapshot()
    np.testing.assert_array_equal(cpu.data, gpu.data)
    np.testing.assert_array_equal(cpu.weights, gpu.weights)


@pytest.mark.parametrize("interpolation", ["NEAREST_NEIGHBOR", "LINEAR"])
def test_exact_mean_is_order_independent_plus_is_not(frames, interpolation):
    cfg = config(interpolation=interpolation)
    shuffled = [frames[k] for k in np.random.default_rng(1).permutation(len(frames))]
    geometry = output_geometry(cfg, frames)
    vols = {}
    for semantics in ("exact", "plus"):
        for name, seq in (("ordered", frames), ("shuffled", shuffled)):
            recon = Reconstructor(cfg, geometry, semantics=semantics)
            for f in seq:
                recon.add(f)
            vols[semantics, name] = recon.snapshot().data
    np.testing.assert_array_equal(vols["exact", "ordered"], vols["exact", "shuffled"])
    assert not np.array_equal(vols["plus", "ordered"], vols["plus", "shuffled"])


def test_exact_mean_equals_plain_mean_for_nearest_neighbour():
    # two identical frames at the same pose: each voxel's value is the rounded mean of its pixels
    frames = sweep_frames(1, shape=(20, 30))
    recon = reconstruct(frames + frames, config(), semantics="exact", backend="numpy")
    vol = recon.snapshot()
    m = recon.geometry.reference_to_index() @ frames[0].transforms["ImageToReference"]
    jj, ii = np.mgrid[0:20, 0:30]
    p = m[:3, :3] @ np.stack([ii.ravel(), jj.ravel(), np.zeros(600)]) + m[:3, 3:4]
    k = np.floor(p + 0.5).astype(int)
    sums, counts = {}, {}
    for n, key in enumerate(map(tuple, k.T)):
        sums[key] = sums.get(key, 0) + int(frames[0].pixels.ravel()[n])
        counts[key] = counts.get(key, 0) + 1
    for (x, y, z), s in list(sums.items())[:50]:
        assert vol.data[z, y, x] == int(np.floor(s / counts[(x, y, z)] + 0.5))
        assert vol.weights[z, y, x] == 2 * counts[(x, y, z)]


@pytest.mark.parametrize("semantics", ["plus", "exact"])
def test_second_channel_with_its_own_mode(frames, semantics):
    cfg = config(interpolation="LINEAR")
    recon = Reconstructor.from_frames(cfg, frames, semantics=semantics, channels={"bone": "MAXIMUM"})
    rng = np.random.default_rng(3)
    for f in frames:
        bone = (rng.random(f.pixels.shape) < 0.05).astype(np.float32)
        recon.add(f, channels={"bone": bone})
    vol = recon.snapshot()
    assert vol.channels["bone"].dtype == np.float32 and vol.channels["bone"].shape == vol.data.shape
    # MAXIMUM of a 0/1 map stays 0/1; a MEAN would give fractions
    assert set(np.unique(vol.channels["bone"])) <= {0.0, 1.0}
    assert vol.channels["bone"].max() == 1.0
    # the one-channel snapshot the live node takes is the same map, without the intensity
    only = recon.channel_volume("bone")
    np.testing.assert_array_equal(only.channels["bone"], vol.channels["bone"])
    np.testing.assert_array_equal(only.origin_mm, vol.origin_mm)
    with pytest.raises(ValueError, match="no channel 'speed'"):
        recon.channel_volume("speed")


@pytest.mark.parametrize("semantics", ["plus", "exact"])
@pytest.mark.parametrize("mode", ["MEAN", "MAXIMUM", "LATEST"])
def test_channel_volume_of_a_float_channel_is_the_snapshot_and_stays_put(frames, semantics, mode):
    recon = Reconstructor.from_frames(config(), frames, semantics=semantics, channels={"bone": mode})
    rng = np.random.default_rng(4)
    bones = [rng.random(f.pixels.shape).astype(np.float32) for f in frames]
    for f, b in zip(frames[:-1], bones):
        recon.add(f, channels={"bone": b})
    only = recon.channel_volume("bone")
    full = recon.snapshot(fill_holes=False)
    np.testing.assert_array_equal(only.channels["bone"], full.channels["bone"])
    assert (full.weights == 0).any() and (full.weights > 0).any()   # both kinds of voxel were compared
    kept = only.channels["bone"].copy()
    if semantics == "exact":  # the chunked live finalisation, with chunks that split the volume unevenly
        chan = recon._channels["bone"]
        np.testing.assert_array_equal(chan._live_float_values(chunk=999).reshape(chan.shape), kept)
    recon.add(frames[-1], channels={"bone": bones[-1]})   # pasting goes on: the returned map must not change
    np.testing.assert_array_equal(only.channels["bone"], kept)
    assert not np.array_equal(recon.channel_volume("bone").channels["bone"], kept)


def test_memory_is_bounded_by_volume_size():
    cfg = config(interpolation="LINEAR")
    frames = sweep_frames(4, shape=(32, 40))
    recon = Reconstructor.from_frames(cfg, frames, semantics="exact", channels={"bone": "MEAN"})
    bone = np.ones((32, 40), np.float32)
    for f in frames:  # allocate the accumulators and warm the caches
        recon.add(f, channels={"bone": bone})
    state_bytes = recon.nbytes
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for k in range(300):
        recon.add(frames[k % 4], channels={"bone": bone})
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert recon.frames_pasted == 304
    assert recon.nbytes == state_bytes
    # nothing per frame is kept: growth over 300 frames is far below one frame's 1280 pixels x 300
    assert current - base < 64 * 1024


def test_skip_interval_and_invalid_frames(frames):
    cfg = config(skip_interval=3)
    recon = Reconstructor.from_frames(cfg, frames)
    frames[3].transform_status["ImageToReference"] = False
    pasted = [recon.add(f) for f in frames]
    assert pasted == [k % 3 == 0 and k != 3 for k in range(len(frames))]
    assert recon.frames_rejected == 1 and recon.frames_seen == len(frames)


def test_snapshot_while_pasting_and_reset(frames):
    recon = Reconstructor.from_frames(config(), frames)
    assert recon.snapshot().weights.max() == 0
    recon.add(frames[0])
    first = recon.snapshot()
    recon.add(frames[1])
    assert (recon.snapshot().weights > 0).sum() > (first.weights > 0).sum()
    recon.reset()
    assert recon.snapshot().weights.max() == 0 and recon.frames_pasted == 0


def test_validation_names_the_field(frames):
    cfg = config()
    geometry = output_geometry(cfg, frames)
    with pytest.raises(ValueError, match="semantics"):
        Reconstructor(cfg, geometry, semantics="fast")
    with pytest.raises(ValueError, match="backend"):
        Reconstructor(cfg, geometry, semantics="plus", backend="torch")
    with pytest.raises(ValueError, match="channels"):
        Reconstructor(cfg, geometry, channels={"bone": "MEDIAN"})
    recon = Reconstructor(cfg, geometry, channels={"bone": "MEAN"})
    with pytest.raises(ValueError, match="bone"):
        recon.add(frames[0], channels={"bone": np.zeros((3, 3))})


def test_torch_backend_runs_without_numba(tmp_path):
    # GPU machines may have torch alone: the exact torch path must not import numba
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys
        sys.modules["numba"] = None  # any 'import numba' now fails
        from compound_frames import sweep_frames
        from usx_stream.compound import ReconstructionConfig, Reconstructor
        frames = sweep_frames(3)
        cfg = ReconstructionConfig(output_spacing=(0.5, 0.5, 0.5), interpolation="LINEAR")
        recon = Reconstructor.from_frames(cfg, frames, semantics="exact", backend="torch", device="cpu")
        for f in frames:
            recon.add(f)
        assert recon.snapshot().weights.max() > 0
        print("ok")
    """)
    from pathlib import Path
    here = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True, text=True, timeout=240,
                         env={"PYTHONPATH": f"{here}:{here.parents[1]}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("interpolation", ["NEAREST_NEIGHBOR", "LINEAR"])
def test_plus_double_arithmetic_close_to_fixed_point(frames, interpolation):
    # Optimization PARTIAL/NONE: doubles instead of 14-bit fixed point; same pixels, nearly same voxels
    geometry = output_geometry(config(), frames)
    vols = {}
    for optimization in ("FULL", "PARTIAL"):
        recon = Reconstructor(config(interpolation=interpolation, optimization=optimization), geometry)
        for f in frames:
            recon.add(f)
        vols[optimization] = recon.snapshot()
    hit = (vols["FULL"].weights > 0) & (vols["PARTIAL"].weights > 0)
    assert hit.sum() > 0.9 * (vols["FULL"].weights > 0).sum()
    close = np.abs(vols["FULL"].data[hit].astype(int) - vols["PARTIAL"].data[hit].astype(int)) <= 2
    assert close.mean() > 0.95


def test_exact_threads_give_the_same_volume(frames):
    cfg = config(interpolation="LINEAR", compounding_mode="LATEST")
    one = reconstruct(frames, cfg, semantics="exact").snapshot()
    two = reconstruct(frames, cfg, semantics="exact", threads=3).snapshot()
    np.testing.assert_array_equal(one.data, two.data)
    np.testing.assert_array_equal(one.weights, two.weights)
