"""Metrics against brute-force references written from their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usx_stream import metrics


def _brute_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) squared distance from each row of a to its nearest row of b, by full enumeration."""
    return np.array([min(float(np.sum((p - q) ** 2)) for q in b) for p in a])


@pytest.fixture
def clouds():
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(120, 3)) * 0.1
    pred = gt[:90] + rng.normal(scale=0.004, size=(90, 3))
    return pred, gt


def test_normalised_metrics_match_brute_force(clouds):
    pred, gt = clouds
    d1, d2 = _brute_sq(pred, gt), _brute_sq(gt, pred)
    got = metrics.normalised_metrics(pred, gt)
    assert got["cd_t"] == pytest.approx(d1.mean() + d2.mean(), rel=1e-9)
    assert got["cd_p"] == pytest.approx((np.sqrt(d1).mean() + np.sqrt(d2).mean()) / 2, rel=1e-9)
    p, r = np.mean(d1 < 1e-4), np.mean(d2 < 1e-4)
    assert got["f1"] == pytest.approx(2 * p * r / (p + r), rel=1e-9)
    assert 0 < got["f1"] < 1


def test_identical_clouds_are_perfect(clouds):
    _, gt = clouds
    got = metrics.normalised_metrics(gt, gt)
    assert got == {"cd_p": 0.0, "cd_t": 0.0, "f1": 1.0}


def test_f1_is_zero_when_far():
    a = np.zeros((4, 3))
    b = np.ones((5, 3))
    assert metrics.normalised_metrics(a, b)["f1"] == 0.0


def test_surface_metrics_mm_brute_force(clouds):
    pred, gt = (c * 100 for c in clouds)
    d1, d2 = np.sqrt(_brute_sq(pred, gt)), np.sqrt(_brute_sq(gt, pred))
    got = metrics.surface_metrics_mm(pred, gt)
    assert got["assd_mm"] == pytest.approx(np.concatenate([d1, d2]).mean(), rel=1e-9)
    assert got["hd95_mm"] == pytest.approx(max(np.percentile(d1, 95), np.percentile(d2, 95)), rel=1e-9)
    for t, key in ((1.0, "fscore_1mm"), (2.0, "fscore_2mm")):
        p, r = np.mean(d1 < t), np.mean(d2 < t)
        assert got[key] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)


def test_translation_gives_known_distances():
    rng = np.random.default_rng(0)
    gt = rng.uniform(-50, 50, size=(200, 3)) * np.array([1, 1, 0])  # points on the plane z = 0
    pred = gt + np.array([0, 0, 1.5])
    got = metrics.surface_metrics_mm(pred, gt)
    assert got["assd_mm"] == pytest.approx(1.5)
    assert got["hd95_mm"] == pytest.approx(1.5)
    assert got["fscore_1mm"] == 0.0 and got["fscore_2mm"] == 1.0


def test_regions_split_at_gt_centroid_along_posterior_axis():
    rng = np.random.default_rng(1)
    gt = rng.normal(size=(300, 3))
    # A prediction perfect on the body (y below the centroid) and shifted on the arch.
    c_y = gt[:, 1].mean()
    pred = gt.copy()
    arch = pred[:, 1] > c_y
    pred[arch, 0] += 0.5
    res = metrics.evaluate_completion(pred, gt, mm_per_unit=40.0)
    assert res["body"]["cd_t"] == 0.0 and res["body"]["assd_mm"] == 0.0
    assert res["arch"]["cd_t"] > 0.0
    assert res["whole"]["cd_t"] > 0.0
    masks = metrics.region_masks(gt, gt.mean(0))
    assert masks["body"].sum() + masks["arch"].sum() == len(gt)
    direct = metrics.normalised_metrics(pred[arch], gt[arch])
    assert res["arch"]["cd_t"] == pytest.approx(direct["cd_t"])
    # The mm metrics are the unit metrics scaled by mm_per_unit.
    assert res["arch"]["assd_mm"] == pytest.approx(metrics.surface_metrics_mm(pred[arch] * 40, gt[arch] * 40)["assd_mm"])


def test_empty_region_gives_nan():
    gt = np.array([[0, -1.0, 0], [0, 1.0, 0]])
    pred = np.array([[0, -1.0, 0], [0, -0.5, 0]])  # nothing posterior
    res = metrics.evaluate_completion(pred, gt, mm_per_unit=1.0)
    assert np.isnan(res["arch"]["cd_t"]) and not np.isnan(res["body"]["cd_t"])


def test_validation_errors():
    with pytest.raises(ValueError, match="pred"):
        metrics.normalised_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="mm_per_unit"):
        metrics.evaluate_completion(np.zeros((3, 3)), np.zeros((3, 3)), mm_per_unit=0.0)
    with pytest.raises(ValueError, match="chunk"):
        metrics.chamfer_sq_dists(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), chunk=0)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_torch_chamfer_matches_brute_force_any_chunk(chunk):
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 50, 3, generator=gen, dtype=torch.float64)
    gt = torch.randn(3, 64, 3, generator=gen, dtype=torch.float64)
    d1, d2 = metrics.chamfer_sq_dists(pred, gt, chunk=chunk)
    for b in range(3):
        np.testing.assert_allclose(d1[b].numpy(), _brute_sq(pred[b].numpy(), gt[b].numpy()), rtol=1e-10)
        np.testing.assert_allclose(d2[b].numpy(), _brute_sq(gt[b].numpy(), pred[b].numpy()), rtol=1e-10)
    batch = metrics.calc_cd(pred, gt, chunk=chunk)
    for b in range(3):
        ref = metrics.normalised_metrics(pred[b].numpy(), gt[b].numpy())
        for key in ("cd_p", "cd_t", "f1"):
            assert float(batch[key][b]) == pytest.approx(ref[key], rel=1e-9, abs=1e-12)


def test_torch_chamfer_gradient_moves_points_closer():
    gen = torch.Generator().manual_seed(1)
    gt = torch.randn(2, 80, 3, generator=gen)
    pred = (gt + 0.3 * torch.randn(2, 80, 3, generator=gen)).requires_grad_(True)
    loss = metrics.chamfer_cdp(pred, gt, chunk=16).mean()
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    with torch.no_grad():
        stepped = pred - 0.5 * pred.grad / pred.grad.abs().max()
        assert float(metrics.chamfer_cdp(stepped, gt).mean()) < float(loss)
