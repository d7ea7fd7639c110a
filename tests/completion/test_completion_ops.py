"""Point operators against brute-force numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usx_stream.completion import ops


def _cloud(seed: int, b: int, n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(b, n, 3)).astype(np.float32))


def _fps_reference(points: np.ndarray, count: int, start: int = 0) -> list[int]:
    chosen = [start]
    dist = np.full(len(points), np.inf)
    for _ in range(count - 1):
        dist = np.minimum(dist, ((points - points[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(np.argmax(dist)))
    return chosen


def test_fps_matches_reference_and_is_furthest():
    pts = _cloud(0, 3, 300)
    idx = ops.furthest_point_sample(pts, 40)
    assert idx.shape == (3, 40) and idx.dtype == torch.int64
    for b in range(3):
        p = pts[b].double().numpy()
        assert idx[b].tolist() == _fps_reference(p, 40)
        # Each sample is the point furthest from all earlier samples.
        for i in range(1, 40):
            d = ((p[:, None] - p[idx[b, :i].numpy()][None]) ** 2).sum(-1).min(1)
            assert d[idx[b, i]] == pytest.approx(d.max(), rel=1e-5)


def test_fps_start_index_and_validation():
    pts = _cloud(1, 1, 50)
    assert ops.furthest_point_sample(pts, 5, start_index=7)[0, 0] == 7
    with pytest.raises(ValueError, match="num_samples"):
        ops.furthest_point_sample(pts, 51)
    with pytest.raises(ValueError, match="shape"):
        ops.furthest_point_sample(pts[0], 5)


def test_fps_duplicates_are_taken_last():
    base = _cloud(2, 1, 20)
    pts = torch.cat([base, base], dim=1)  # every point twice
    idx = ops.furthest_point_sample(pts, 20)[0]
    assert len(set((idx % 20).tolist())) == 20


@pytest.mark.parametrize("chunk", [None, 7, 1000])
def test_knn_matches_brute_force(chunk):
    q, r = _cloud(3, 2, 50), _cloud(4, 2, 80)
    dist2, idx = ops.knn(q, r, 6, chunk=chunk)
    ref = ((q.double()[:, :, None] - r.double()[:, None]) ** 2).sum(-1).numpy()
    order = np.argsort(ref, axis=-1, kind="stable")[:, :, :6]
    np.testing.assert_allclose(dist2.numpy(), np.take_along_axis(ref, order, -1), rtol=1e-4, atol=1e-5)
    # Indices agree wherever the reference has no near-tie.
    assert (idx.numpy() == order).mean() > 0.99


@pytest.mark.parametrize("k", [1, 3, 16])
def test_tree_knn_matches_the_distance_matrix(k):
    q, r = _cloud(13, 3, 200), _cloud(14, 3, 300)
    ref_d, ref_i = ops.knn(q, r, k)
    with torch.inference_mode(), ops.tree_knn():
        assert ops._use_tree(q, r)
        got_d, got_i = ops.knn(q, r, k)
    assert got_i.dtype == torch.int64 and got_d.dtype == q.dtype and got_d.shape == (3, 200, k)
    assert (got_i == ref_i).float().mean() > 0.999
    np.testing.assert_allclose(got_d.numpy(), ref_d.numpy(), rtol=1e-4, atol=1e-5)
    assert (ops.knn_self(r, 4)[..., 0] == torch.arange(300)).all()


def test_tree_knn_only_where_it_is_safe():
    q = _cloud(15, 1, 20)
    assert not ops._use_tree(q, q)                      # outside the context
    with ops.tree_knn():
        assert ops._use_tree(q, q)
        assert not ops._use_tree(q.requires_grad_(), q)  # autograd needs the differentiable path
    assert not ops._use_tree(q, q)                      # the context restores the previous state


def test_knn_validation_and_self():
    pts = _cloud(5, 1, 30)
    assert (ops.knn_self(pts, 4)[..., 0] == torch.arange(30)).all()
    with pytest.raises(ValueError, match="k must be"):
        ops.knn(pts, pts, 31)
    with pytest.raises(ValueError, match="k must be"):
        ops.knn(pts, pts, 0)


def test_square_distance_is_exact_enough():
    q, r = _cloud(6, 2, 40), _cloud(7, 2, 60)
    ref = ((q.double()[:, :, None] - r.double()[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(ops.square_distance(q, r).double().numpy(), ref.numpy(), atol=1e-5)


def test_gather_and_group_match_indexing():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 30, generator=g)
    idx = torch.randint(0, 30, (2, 12), generator=g)
    np.testing.assert_array_equal(ops.gather_points(feats, idx).numpy(),
                                  np.stack([feats[b][:, idx[b]].numpy() for b in range(2)]))
    idx3 = torch.randint(0, 30, (2, 4, 3), generator=g)
    grouped = ops.group_points(feats, idx3)
    assert grouped.shape == (2, 5, 4, 3)
    for b in range(2):
        for m in range(4):
            for k in range(3):
                np.testing.assert_array_equal(grouped[b, :, m, k].numpy(), feats[b, :, idx3[b, m, k]].numpy())
    rows = ops.index_points(feats.transpose(1, 2), idx3)
    np.testing.assert_array_equal(rows.numpy(), grouped.permute(0, 2, 3, 1).numpy())


def test_three_nn_euclidean_and_interpolation():
    tgt, src = _cloud(8, 2, 25), _cloud(9, 2, 10)
    dist, idx = ops.three_nn(tgt, src)
    ref = np.sqrt(((tgt.double()[:, :, None] - src.double()[:, None]) ** 2).sum(-1).numpy())
    np.testing.assert_allclose(dist.numpy(), np.sort(ref, -1)[:, :, :3], rtol=1e-4, atol=1e-5)
    idx_w, weight = ops.three_nn_weights(tgt, src)
    inv = 1.0 / np.maximum(np.take_along_axis(ref, idx_w.numpy(), -1), 1e-10)
    np.testing.assert_allclose(weight.numpy(), inv / inv.sum(-1, keepdims=True), rtol=1e-4)
    feats = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(1))
    out = ops.three_interpolate(feats, idx_w, weight)
    expected = np.einsum("bcnk,bnk->bcn", np.stack([feats[b][:, idx_w[b]].numpy() for b in range(2)]), weight.numpy())
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.three_interpolate_rows(feats.transpose(1, 2), idx_w, weight).numpy(),
                               out.transpose(1, 2).numpy(), rtol=1e-6, atol=1e-7)


def test_three_nn_coincident_point_gets_all_weight():
    src = _cloud(10, 1, 8)
    _, weight = ops.three_nn_weights(src[:, :1], src)
    assert weight[0, 0, 0] == pytest.approx(1.0, abs=1e-6)


def test_fast_fps_equals_torch_fps():
    pts = _cloud(11, 3, 500)
    np.testing.assert_array_equal(ops.furthest_point_sample_fast(pts, 64).numpy(),
                                  ops.furthest_point_sample(pts, 64).numpy())
    assert ops.furthest_point_sample_fast(pts, 5, start_index=9)[0, 0] == 9
    with pytest.raises(ValueError, match="num_samples"):
        ops.furthest_point_sample_fast(pts, 501)
