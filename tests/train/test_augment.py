"""Batch augmentation: one rigid motion per sample, shared by every cloud, reproducible, optional."""

from __future__ import annotations

import math

import pytest
import torch

from usx_stream.train.augment import (WARP_FREQUENCY, WARP_WIDTH_RADIUS, augment_batch, random_rotations,
                                     random_warp)
from usx_stream.train.config import TrainConfig, load_train_config
from usx_stream.train.loop import _Run, resolve_device


def clouds(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(4, n, 3, generator=g) * 2 - 1 for n in (64, 16, 32)]


def test_rotations_are_proper_and_bounded():
    rot = random_rotations(500, 10.0, torch.Generator().manual_seed(1), "cpu")
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(500, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(500), atol=1e-5, rtol=0)
    angle = torch.acos(((rot.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1))
    assert angle.max() <= math.radians(10.0) + 1e-4 and angle.max() > math.radians(8.0)


def test_every_cloud_of_a_sample_moves_rigidly_together():
    before = clouds()
    after = augment_batch(before, rotate_deg=15.0, shift=0.1, mirror=True, generator=torch.Generator().manual_seed(2))
    for s in range(4):
        # Distances between points of different clouds of one sample are kept: one isometry per sample.
        joint_before = torch.cat([c[s] for c in before])
        joint_after = torch.cat([c[s] for c in after])
        def dist(x):
            return (x[:, None] - x[None]).norm(dim=-1)
        torch.testing.assert_close(dist(joint_after), dist(joint_before), atol=1e-5, rtol=0)
    assert not torch.allclose(after[0], before[0])


def test_mirroring_flips_about_half_and_none_is_identity():
    g = torch.Generator().manual_seed(3)
    big = [torch.rand(400, 8, 3) * 2 - 1]
    out = augment_batch(big, rotate_deg=0.0, shift=0.0, mirror=True, generator=g)[0]
    mirrored = torch.isclose(out[..., 0], -big[0][..., 0]).all(dim=1)
    torch.testing.assert_close(out[..., 1:], big[0][..., 1:])
    assert 150 < int(mirrored.sum()) < 250
    same = clouds()
    assert augment_batch(same, rotate_deg=0, shift=0, mirror=False, generator=g) is same


def ratios(before, after):
    """Per sample, (points, 3): each coordinate after over before, all clouds of the sample together."""
    return [torch.cat([c[s] for c in after]) / torch.cat([c[s] for c in before]) for s in range(before[0].shape[0])]


def one_bounded_factor_per_sample(before, after, largest, axes=slice(None)):
    """The factor each sample's ``axes`` were stretched by: asserted shared by all its points, clouds and those
    axes, within 1 +- ``largest``, and different between the four samples."""
    factors = []
    for f in ratios(before, after):
        f = f[:, axes]
        torch.testing.assert_close(f, f[:1, :1].expand_as(f), atol=1e-4, rtol=1e-4)
        factors.append(float(f[0, 0]))
    assert all(1 - largest - 1e-6 <= f <= 1 + largest + 1e-6 for f in factors)
    assert len(set(round(f, 5) for f in factors)) == 4
    return factors


def test_scaling_stretches_each_axis_of_a_sample_by_one_bounded_factor_shared_by_its_clouds():
    before = clouds(5)
    after = augment_batch(before, rotate_deg=0.0, shift=0.0, mirror=False, scale=0.08,
                          generator=torch.Generator().manual_seed(6))
    factors = []
    for f in ratios(before, after):                        # one factor per axis for the whole sample
        torch.testing.assert_close(f, f[:1].expand_as(f), atol=1e-4, rtol=1e-4)
        factors.append(f[0])
    factors = torch.stack(factors)
    assert ((factors >= 0.92 - 1e-6) & (factors <= 1.08 + 1e-6)).all()
    assert factors.std() > 0.01                            # drawn per axis and per sample, not one global factor


def test_size_scales_a_sample_as_a_whole_by_one_bounded_factor_and_leaves_earlier_draws_alone():
    before = clouds(7)
    after = augment_batch(before, rotate_deg=0.0, shift=0.0, mirror=False, size=0.1,
                          generator=torch.Generator().manual_seed(8))
    one_bounded_factor_per_sample(before, after, 0.1)                                  # one factor, every axis
    # drawn last: with a rigid motion the size only rescales what the same seed gave without it
    rigid = augment_batch(before, rotate_deg=10.0, shift=0.05, mirror=True, generator=torch.Generator().manual_seed(9))
    sized = augment_batch(before, rotate_deg=10.0, shift=0.05, mirror=True, size=0.1,
                          generator=torch.Generator().manual_seed(9))
    for r, z in zip(rigid, sized):
        assert not torch.allclose(r, z)
        ratio = ((z - z.mean(1, keepdim=True)).norm(dim=-1) / (r - r.mean(1, keepdim=True)).norm(dim=-1))
        torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"train.augment_size: must be in \[0, 0.5\), got -0.1"):
        TrainConfig(data="x.h5", augment_size=-0.1).validate()


def test_width_stretches_only_left_right_by_one_bounded_factor_and_leaves_earlier_draws_alone():
    before = clouds(10)
    after = augment_batch(before, rotate_deg=0.0, shift=0.0, mirror=False, width=0.12,
                          generator=torch.Generator().manual_seed(11))
    for f in ratios(before, after):
        torch.testing.assert_close(f[:, 1:], torch.ones_like(f[:, 1:]))                 # y and z untouched
    one_bounded_factor_per_sample(before, after, 0.12, axes=slice(0, 1))               # one x factor
    # drawn after size: the earlier draws (rotation, mirror, shift, size) are what they were without it, and the
    # stretch acts on x before the rotation, so un-rotating recovers a pure x stretch of the same sample
    g = dict(rotate_deg=10.0, shift=0.0, mirror=False, size=0.1)
    plain = augment_batch(before, **g, generator=torch.Generator().manual_seed(12))
    wide = augment_batch(before, **g, width=0.12, generator=torch.Generator().manual_seed(12))
    rot = random_rotations(4, 10.0, torch.Generator().manual_seed(12), "cpu")
    for p, w in zip(plain, wide):
        pu, wu = p @ rot, w @ rot                                                          # back to the unit frame
        torch.testing.assert_close(wu[..., 1:], pu[..., 1:], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(wu[..., 0], pu[..., 0])
    with pytest.raises(ValueError, match=r"train.augment_width: must be in \[0, 0.5\), got 0.5"):
        TrainConfig(data="x.h5", augment_width=0.5).validate()


def test_warp_is_smooth_bounded_shared_by_the_clouds_and_keeps_the_mid_sagittal_plane():
    amp = 0.04
    base = clouds(20)
    yz = torch.rand(4, 200, 2, generator=torch.Generator().manual_seed(21)) * 2 - 1
    plane = torch.cat([torch.zeros(4, 200, 1), yz], dim=-1)            # a labelmap-like set on x = 0
    lateral = torch.cat([torch.full((4, 200, 1), 0.4), yz], dim=-1)    # the same (y, z), 20 mm to the side
    warped = random_warp(base + [plane, lateral], amp, torch.Generator().manual_seed(22))
    wp, wl = warped[3], warped[4]
    assert torch.equal(wp[..., 0], torch.zeros_like(wp[..., 0]))         # the mid-sagittal plane stays in place
    torch.testing.assert_close(wl[..., 1:], wp[..., 1:])                  # y, z moves depend on (y, z) only
    for b, a in zip(base, warped[:3]):
        d = a - b
        assert d[..., 1:].abs().max() <= amp + 1e-6 and d[..., 1:].abs().max() > amp / 10
        assert (d[..., 0].abs() <= amp * b[..., 0].abs() / WARP_WIDTH_RADIUS + 1e-6).all()
    # smooth: the displacement changes no faster than its steepest waves allow (y and z: amp * w each; x: the
    # stretch of at most amp / R and its slope times |x| <= 1)
    w = 2 * math.pi * WARP_FREQUENCY[1]
    slope = amp * (math.sqrt(2) * w + (1 + w) / WARP_WIDTH_RADIUS)
    d, p = warped[0] - base[0], base[0]
    dist = torch.cdist(p, p)
    change = torch.cdist(d, d)
    assert (change <= slope * dist + 1e-4).all()                          # 1e-4: cdist rounding
    # in augment_batch: before everything else and drawn after it, so without rotation it adds the same warp
    g = dict(rotate_deg=0.0, shift=0.05, mirror=True, size=0.1, width=0.1)
    plain = augment_batch(base, **g, generator=torch.Generator().manual_seed(23))
    bent = augment_batch(base, **g, warp=amp, generator=torch.Generator().manual_seed(23))
    gen = torch.Generator().manual_seed(23)
    augment_batch(base, **g, generator=gen)                            # consume the earlier draws
    again = augment_batch(random_warp(base, amp, gen), **g, generator=torch.Generator().manual_seed(23))
    for p0, b0, a0 in zip(plain, bent, again):
        assert not torch.allclose(p0, b0)
        torch.testing.assert_close(b0, a0)
    with pytest.raises(ValueError, match="train.augment_warp_mm: must be >= 0, got -1.0"):
        TrainConfig(data="x.h5", augment_warp_mm=-1.0).validate()


def test_none_labelmap_passes_through_and_draws_are_reproducible():
    a = augment_batch([clouds()[0], None], rotate_deg=5, shift=0.05, mirror=True,
                      generator=torch.Generator().manual_seed(4))
    b = augment_batch([clouds()[0], None], rotate_deg=5, shift=0.05, mirror=True,
                      generator=torch.Generator().manual_seed(4))
    assert a[1] is None and torch.equal(a[0], b[0])


def test_config_fields_are_checked(tmp_path):
    with pytest.raises(ValueError, match="augment_rotate_deg"):
        TrainConfig(data="x.h5", augment_rotate_deg=-1.0).validate()
    with pytest.raises(ValueError, match=r"train.augment_scale: must be in \[0, 0.5\), got 0.6"):
        TrainConfig(data="x.h5", augment_scale=0.6).validate()
    with pytest.raises(ValueError, match="train.device.*'gpu'"):
        TrainConfig(data="x.h5", device="gpu").validate()
    cfg = load_train_config(None, data="x.h5", augment_mirror=True, device="cuda:1")
    assert cfg.augment_mirror is True and cfg.device == "cuda:1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="train.device.*no CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_augmented_training_step_runs_and_learns(tiny_pairs, tmp_path):
    from usx_stream.train.data import read_pairs
    from usx_stream.train.network_io import model_inputs

    cfg = TrainConfig(data=str(tiny_pairs), out=str(tmp_path), lr=1e-3, seed=0, augment_rotate_deg=5.0,
                      augment_shift_mm=2.0, augment_mirror=True, augment_scale=0.08).validate()
    run = _Run(cfg, resume=False)
    arrays = read_pairs(tiny_pairs)
    partial, labelmap = model_inputs(arrays, run.model_cfg, "tiny")
    batch = (partial[:2], labelmap[:2], torch.from_numpy(arrays.complete[:2]))
    losses = [run.train_step(*batch)["total"] for _ in range(4)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_init_starts_from_given_weights_and_checks_the_variant(tiny_pairs, tmp_path):
    from usx_stream.completion.checkpoint import save_checkpoint

    first = _Run(TrainConfig(data=str(tiny_pairs), out=str(tmp_path / "a"), seed=1).validate(), resume=False)
    save_checkpoint(tmp_path / "w.pt", first.net, first.model_cfg)
    again = _Run(TrainConfig(data=str(tiny_pairs), out=str(tmp_path / "b"), seed=2,
                             init=str(tmp_path / "w.pt")).validate(), resume=False)
    for (k, a), b in zip(first.net.state_dict().items(), again.net.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="train.init.*different model configuration"):
        _Run(TrainConfig(data=str(tiny_pairs), out=str(tmp_path / "c"), variant="us_only",
                         init=str(tmp_path / "w.pt")).validate(), resume=False)
    with pytest.raises(ValueError, match="train.init: checkpoint not found"):
        _Run(TrainConfig(data=str(tiny_pairs), out=str(tmp_path / "d"), init=str(tmp_path / "nope.pt")).validate(),
             resume=False)
